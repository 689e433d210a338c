//! `.npz` archives: `calibrate --data` datasets and `--head` files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_calibration::npz;

fuzz_target!(|data: &[u8]| {
    let Ok(arrays) = npz::read(data) else {
        return;
    };
    for array in arrays.values() {
        let _ = array.to_ints();
        let _ = array.to_floats::<ndarray::IxDyn>();
        let _ = array.to_floats::<ndarray::Ix2>();
    }
});
