//! The POA training `config.yaml` found next to a teacher.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tailor_exporter::config::PoaConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = PoaConfig::parse(Path::new("config.yaml"), text) {
        let _ = config.arch();
        let _ = config.student::<serde::de::IgnoredAny>();
    }
});
