//! Teachers with random weights in a real teacher's shapes, for benchmarks
//! and tests that need a teacher of a given size without training one.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::family::{resnet, swin, vit};

/// POA's ViT-L/16 teacher (D = 1024, 24 blocks, head_dim 64, 224²): the
/// teacher the benchmarks export from.
pub const VIT_L16: vit::Geometry = vit::Geometry {
    max_width: 1024,
    max_depth: 24,
    head_dim: 64,
    patch_size: 16,
    image_size: 224,
    ln_bias: true,
};

/// A ViT-S/16 (D = 384, 12 blocks, head_dim 64, 224²): the realistic width
/// the precision tests and bench quantise.
pub const VIT_S16: vit::Geometry = vit::Geometry {
    max_width: 384,
    max_depth: 12,
    head_dim: 64,
    patch_size: 16,
    image_size: 224,
    ln_bias: true,
};

/// Writes a safetensors ViT teacher of `g`'s shape with plain DINOv2 names
/// and small uniform weights (LayerNorm scales around 1); returns its size.
pub fn write_vit_teacher(path: &Path, g: &vit::Geometry, seed: u64) -> io::Result<u64> {
    // Every tensor the slicing reads, in the teacher's shapes: the family
    // module is the one place that knows them.
    let tensors: Vec<(String, Vec<usize>)> = g
        .params()
        .map(|p| (p.teacher_name(), g.teacher_shape(p.kind, g.tokens())))
        .collect();
    let is_scale = |name: &str| {
        name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm.weight"
    };
    write_teacher(path, &tensors, is_scale, seed)
}

/// Writes a safetensors ResNet teacher of `g`'s shape with POA's names and
/// small uniform weights (GroupNorm scales around 1); returns its size.
pub fn write_resnet_teacher(path: &Path, g: &resnet::Geometry, seed: u64) -> io::Result<u64> {
    let tensors = g.teacher_shapes();
    let is_scale = |name: &str| {
        name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name.ends_with("norm3.weight")
            || name.ends_with("downsample.1.weight")
    };
    write_teacher(path, &tensors, is_scale, seed)
}

/// Writes a safetensors Swin teacher of `g`'s shape with plain names and
/// small uniform weights (LayerNorm scales around 1); returns its size.
pub fn write_swin_teacher(path: &Path, g: &swin::Geometry, seed: u64) -> io::Result<u64> {
    let tensors: Vec<(String, Vec<usize>)> = g
        .params()
        .map(|p| (p.teacher_name(), g.teacher_shape(p)))
        .collect();
    // Every LayerNorm's scale: `norm*.weight` of any module.
    let is_scale = |name: &str| {
        name.strip_suffix(".weight")
            .and_then(|module| module.rsplit('.').next())
            .is_some_and(|leaf| leaf.starts_with("norm"))
    };
    write_teacher(path, &tensors, is_scale, seed)
}

/// Writes `tensors` (canonical name, shape) as fp32 safetensors: uniform
/// values of ±0.05, around 1 for the norms' scales (`is_scale`), which keeps
/// activations alive through depth.
fn write_teacher(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    is_scale: impl Fn(&str) -> bool,
    seed: u64,
) -> io::Result<u64> {
    let mut offset = 0;
    let entries: Vec<String> = tensors
        .iter()
        .map(|(name, shape)| {
            let len = 4 * shape.iter().product::<usize>();
            let e = format!(
                "\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
                offset + len
            );
            offset += len;
            e
        })
        .collect();
    let mut header = format!("{{{}}}", entries.join(","));
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = BufWriter::with_capacity(1 << 22, File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    let mut rng = seed | 1;
    let mut chunk = Vec::with_capacity(1 << 20);
    for (name, shape) in tensors {
        let center = if is_scale(name) { 1.0 } else { 0.0 };
        let mut left = shape.iter().product::<usize>();
        while left > 0 {
            let n = left.min(1 << 18);
            chunk.clear();
            for _ in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let x = center + ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
                chunk.extend_from_slice(&x.to_le_bytes());
            }
            out.write_all(&chunk)?;
            left -= n;
        }
    }
    out.flush()?;
    Ok(8 + header.len() as u64 + offset as u64)
}
