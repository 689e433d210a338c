//! An image posted to `runtime serve`, decoded into a tensor as `/v1/infer`
//! does: the first byte picks PNG or JPEG, the rest is the body.
#![no_main]

use std::panic::{self, PanicHookInfo};

use libfuzzer_sys::fuzz_target;
use tailor_runtime::image::{decode, Format, MAX_PIXELS};

/// A check inside zune-jpeg that release builds (every build of ours) compile
/// out, which fuzz builds turn on in every crate: its arithmetic overflow
/// checks (the IDCT wraps on hostile coefficients) and drop_bits'
/// `debug_assert!(self.bits_left >= n)`, followed by a saturating
/// subtraction. Known upstream (etemesi254/zune-image#295, #300, #302, #377).
/// Any other panic in zune-jpeg, an index out of bounds say, still aborts.
fn is_upstream_debug_check(info: &PanicHookInfo<'_>) -> bool {
    let in_zune = info
        .location()
        .is_some_and(|at| at.file().contains("/zune-jpeg-"));
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("");
    let debug_only = message.contains("self.bits_left >= n")
        || (message.starts_with("attempt to ") && message.ends_with(" with overflow"));
    in_zune && debug_only
}

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic; this one lets the known
        // upstream debug-only checks unwind to the catch_unwind below.
        let abort = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !is_upstream_debug_check(info) {
                abort(info);
            }
        }));
    },
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
