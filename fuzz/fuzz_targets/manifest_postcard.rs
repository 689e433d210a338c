//! `manifest.postcard`, the manifest the runtime decodes at start-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_runtime::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::from_postcard(data) {
        // What decodes encodes to bytes that decode to the same encoding (postcard accepts
        // non-canonical varints, so not necessarily to `data` itself).
        let postcard = manifest.to_postcard();
        let again = Manifest::from_postcard(&postcard).expect("an encoded manifest decodes");
        assert_eq!(again.to_postcard(), postcard);
        let _ = manifest.to_json();
    }
});
