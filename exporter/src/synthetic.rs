//! Teachers with random weights in a real POA teacher's shapes, for
//! benchmarks and tests that need a teacher of a given size without training one.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::family::{swin, vit};

/// Writes a safetensors ViT teacher of `g`'s shape with plain DINOv2 names;
/// returns its size.
pub fn write_vit_teacher(path: &Path, g: &vit::Geometry, seed: u64) -> io::Result<u64> {
    // Every tensor the slicing reads, in the teacher's shapes: vit.rs is the
    // one place that knows them.
    let tensors = g
        .params()
        .map(|p| (p.teacher_name(), g.teacher_shape(p.kind, g.tokens())))
        .collect();
    write_teacher(path, tensors, seed)
}

/// Writes a safetensors Swin teacher of `g`'s shape with plain names; returns its size.
pub fn write_swin_teacher(path: &Path, g: &swin::Geometry, seed: u64) -> io::Result<u64> {
    let tensors = g
        .params()
        .map(|p| (p.teacher_name(), g.teacher_shape(p)))
        .collect();
    write_teacher(path, tensors, seed)
}

/// Writes `tensors` (name, shape) as fp32 safetensors with small uniform
/// weights, LayerNorm scales around 1.
fn write_teacher(path: &Path, tensors: Vec<(String, Vec<usize>)>, seed: u64) -> io::Result<u64> {
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
    for (name, shape) in &tensors {
        // LayerNorm scales (`norm*.weight`) near 1 keep activations alive through depth.
        let is_norm = name.strip_suffix(".weight").is_some_and(|module| {
            module
                .rsplit('.')
                .next()
                .is_some_and(|l| l.starts_with("norm"))
        });
        let center = if is_norm { 1.0 } else { 0.0 };
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
