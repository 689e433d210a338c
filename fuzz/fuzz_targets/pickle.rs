//! The safe unpickler behind `.pth` teachers: any bytes as `data.pkl`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tailor_exporter::checkpoint::unpickle(data);
});
