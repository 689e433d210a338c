//! `manifest.json`, the manifest `exporter` and scripts read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_runtime::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(manifest) = Manifest::from_json(text) {
        let postcard = manifest.to_postcard();
        let again = Manifest::from_postcard(&postcard).expect("an encoded manifest decodes");
        assert_eq!(again.to_postcard(), postcard);
    }
});
