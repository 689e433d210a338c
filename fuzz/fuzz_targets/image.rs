//! An image posted to `runtime serve`, decoded into a tensor as `/v1/infer`
//! does: the first byte picks PNG or JPEG, the rest is the body.
#![no_main]

use std::panic::{self, PanicHookInfo};

use libfuzzer_sys::fuzz_target;
use tailor_runtime::image::{decode, Format};

/// zune-jpeg 0.4.21's `debug_assert!(self.bits_left >= n)` in `drop_bits`,
/// followed by a saturating subtraction: release builds (every build of
/// ours) skip it, fuzz builds enable debug assertions everywhere. Reported
/// upstream (etemesi254/zune-image#295, #300, #302).
fn is_upstream_debug_assertion(info: &PanicHookInfo<'_>) -> bool {
    let in_bitstream = info
        .location()
        .is_some_and(|at| at.file().contains("zune-jpeg") && at.file().ends_with("bitstream.rs"));
    let message = info.payload().downcast_ref::<&str>().copied().unwrap_or("");
    in_bitstream && message.contains("self.bits_left >= n")
}

fuzz_target!(
    init: {
        // libFuzzer's hook aborts on every panic; this one lets the known
        // upstream assertion unwind to the catch_unwind below.
        let abort = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !is_upstream_debug_assertion(info) {
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
        let _ = panic::catch_unwind(|| decode(body, format, 32));
    }
);
