//! `runtime --config FILE`: the binary's TOML reader, compiled in from its source.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../runtime/src/bin/runtime/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    let file = tailor_fuzz::scratch_file("runtime.toml", data);
    let _ = config::Config::read(&file);
});
