//! `Checkpoint::open` on a `.pth` (zip) teacher: the archive directory, its
//! entries' bounds, `data.pkl`, and every tensor read as f32.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_fuzz::open_checkpoint;

fuzz_target!(|data: &[u8]| {
    // Only zip archives: the safetensors target takes the rest.
    if data.starts_with(b"PK\x03\x04") {
        open_checkpoint(data);
    }
});
