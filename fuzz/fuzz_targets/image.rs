//! An image posted to `runtime serve`, decoded into a tensor as `/v1/infer`
//! does: the first byte picks PNG or JPEG, the rest is the body.
#![no_main]

use std::panic;

use libfuzzer_sys::fuzz_target;
use tailor_runtime::image::{decode, Format, MAX_PIXELS};

fuzz_target!(
    init: tailor_fuzz::let_upstream_debug_checks_unwind(),
    |data: &[u8]| {
        let Some((&which, body)) = data.split_first() else {
            return;
        };
        let format = if which & 1 == 0 {
            Format::Png
        } else {
            Format::Jpeg
        };
        let _ = panic::catch_unwind(|| decode(body, format, MAX_PIXELS, 32));
    }
);
