//! The preprocessing golden written by tools/preprocess_reference.py:
//! photographs from scikit-image's `data` module and the `pixel_values`
//! Pillow makes of them by the runtime's documented method (Pillow's
//! resampler, torchvision's size and crop rules, numpy's normalisation),
//! none of it `runtime::image`.

use std::path::{Path, PathBuf};

use ndarray::Array4;

/// The side the tensors were made for: the tiny bundle's input.
pub const SIDE: usize = 32;

/// coffee (wide) and astronaut (tall) are RGB, camera is grey; those three
/// are enlarged by the resize, chelsea is shrunk 2.7 times.
pub const NAMES: [&str; 4] = ["coffee", "astronaut", "camera", "chelsea"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

/// The input photograph `<name>.png`.
pub fn png(name: &str) -> PathBuf {
    dir().join(format!("{name}.png"))
}

/// Pillow's tensor for `<name>.png`: the plain bilinear sample.
pub fn expected(name: &str) -> Array4<f32> {
    tensor(&format!("{name}.f32"))
}

/// The expected tensor in `file`: little-endian float32 `[1, 3, SIDE, SIDE]`.
pub fn tensor(file: &str) -> Array4<f32> {
    let bytes = std::fs::read(dir().join(file)).unwrap();
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Array4::from_shape_vec((1, 3, SIDE, SIDE), values)
        .unwrap_or_else(|e| panic!("{file} is not [1, 3, {SIDE}, {SIDE}] float32: {e}"))
}
