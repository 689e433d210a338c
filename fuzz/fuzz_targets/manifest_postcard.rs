//! `manifest.postcard`, the manifest the runtime decodes at start-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_runtime::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::from_postcard(data) {
        // What decodes encodes again, to the same bytes.
        assert_eq!(manifest.to_postcard(), data);
        let _ = manifest.to_json();
    }
});
