//! `Checkpoint::open` on a safetensors teacher: the header's length, its
//! JSON, every tensor's offsets, and every tensor read as f32.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailor_fuzz::open_checkpoint;

fuzz_target!(|data: &[u8]| {
    // Zip archives are the pth target's.
    if !data.starts_with(b"PK\x03\x04") {
        open_checkpoint(data);
    }
});
