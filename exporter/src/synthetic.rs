//! Teachers with random weights in a real ViT's shapes, for benchmarks and
//! tests that need a teacher of a given size without training one.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::family::vit::{Geometry, MLP_RATIO};

/// Writes a safetensors teacher of `g`'s shape with plain DINOv2 names and
/// small uniform weights (LayerNorm scales around 1); returns its size.
pub fn write_vit_teacher(path: &Path, g: &Geometry, seed: u64) -> io::Result<u64> {
    let (d, p, t) = (g.max_width as usize, g.patch_size as usize, g.tokens());
    let hidden = MLP_RATIO as usize * d;
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, t, d]),
        ("patch_embed.proj.weight".into(), vec![d, 3, p, p]),
        ("patch_embed.proj.bias".into(), vec![d]),
        ("norm.weight".into(), vec![d]),
        ("norm.bias".into(), vec![d]),
    ];
    for b in 0..g.max_depth {
        for (name, shape) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.qkv.bias", vec![3 * d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("ls1.gamma", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("mlp.fc1.weight", vec![hidden, d]),
            ("mlp.fc1.bias", vec![hidden]),
            ("mlp.fc2.weight", vec![d, hidden]),
            ("mlp.fc2.bias", vec![d]),
            ("ls2.gamma", vec![d]),
        ] {
            tensors.push((format!("blocks.{b}.{name}"), shape));
        }
    }
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
        // LayerNorm scales near 1 keep activations alive through depth.
        let center = if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name == "norm.weight"
        {
            1.0
        } else {
            0.0
        };
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
