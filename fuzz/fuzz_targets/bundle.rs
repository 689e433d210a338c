//! `Bundle::open` with a crafted `manifest.postcard` next to the tiny
//! fixture bundle's files: decoding, sub-network lookup and verification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_runtime::bundle::{Bundle, MANIFEST_POSTCARD};

fuzz_target!(|data: &[u8]| {
    let dir = tailor_fuzz::bundle_dir();
    std::fs::write(dir.join(MANIFEST_POSTCARD), data).expect("writing the scratch bundle");
    let Ok(bundle) = Bundle::open(dir) else {
        return;
    };
    let manifest = bundle.manifest();
    for subnet in &manifest.subnets {
        let found = bundle
            .subnet(subnet.id)
            .expect("a listed sub-network is found");
        let _ = bundle.graph_path(&found);
        let _ = bundle.verify(&found);
    }
    if let Some(calibration) = &manifest.calibration {
        let _ = bundle.verify_data(&calibration.ranges);
    }
});
