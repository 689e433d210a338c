//! The stored pieces of an SDR teacher: every conv with its BatchNorm folded
//! in (`W·γ/√(var+ε)`, bias `β − mean·γ/√(var+ε)`), cut along the mid
//! channels' parts so each piece is stored once and every path's graph
//! concatenates the pieces it needs.

use super::{missing, Block, Geometry};
use crate::checkpoint::Checkpoint;
use crate::family::slice::Computed;
use crate::family::FamilyError;

/// A part's name in piece names: `s` (shared), `g0`, `g1`, ...
pub(super) fn part(p: usize) -> String {
    match p {
        0 => "s".into(),
        g => format!("g{}", g - 1),
    }
}

/// The stored name of a folded conv's piece: `rows` and `cols` are part
/// indices of the mid channels when that axis is split.
pub(super) fn piece(conv: &str, what: &str, rows: Option<usize>, cols: Option<usize>) -> String {
    let mut name = format!("{conv}.{what}");
    for p in [rows, cols].into_iter().flatten() {
        name.push('.');
        name.push_str(&part(p));
    }
    name
}

/// A conv folded with its BatchNorm, in PyTorch's `[O, I, kh, kw]` layout.
struct Folded {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    kernel: usize,
}

impl Folded {
    fn read(
        g: &Geometry,
        ckpt: &Checkpoint,
        conv: &str,
        bn: &str,
        shape: [usize; 4],
    ) -> Result<Folded, FamilyError> {
        let weight = tensor(ckpt, &format!("{conv}.weight"), &shape)?;
        let channel = |what: &str| tensor(ckpt, &format!("{bn}.{what}"), &shape[..1]);
        let (gamma, beta) = (channel("weight")?, channel("bias")?);
        let (mean, var) = (channel("running_mean")?, channel("running_var")?);
        let per_out = shape[1] * shape[2] * shape[3];
        let mut folded = Folded {
            weight,
            bias: Vec::with_capacity(shape[0]),
            inputs: shape[1],
            kernel: shape[2] * shape[3],
        };
        for o in 0..shape[0] {
            let scale = f64::from(gamma[o]) / (f64::from(var[o]) + f64::from(g.bn_eps)).sqrt();
            for w in &mut folded.weight[o * per_out..(o + 1) * per_out] {
                *w = (f64::from(*w) * scale) as f32;
            }
            folded
                .bias
                .push((f64::from(beta[o]) - f64::from(mean[o]) * scale) as f32);
        }
        Ok(folded)
    }

    /// Output channels `rows` × input channels `cols` (all when `None`).
    fn gather(&self, rows: &[u32], cols: Option<&[u32]>) -> Vec<f32> {
        let all: Vec<u32> = (0..self.inputs as u32).collect();
        let cols = cols.unwrap_or(&all);
        let mut out = Vec::with_capacity(rows.len() * cols.len() * self.kernel);
        for &o in rows {
            for &i in cols {
                let at = (o as usize * self.inputs + i as usize) * self.kernel;
                out.extend_from_slice(&self.weight[at..at + self.kernel]);
            }
        }
        out
    }

    fn bias(&self, rows: &[u32]) -> Vec<f32> {
        rows.iter().map(|&o| self.bias[o as usize]).collect()
    }
}

/// The checkpoint's tensor `name` as f32, checked to have `shape`.
fn tensor(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<Vec<f32>, FamilyError> {
    let t = ckpt.tensor(name).ok_or_else(|| missing(name))?;
    if t.shape != shape {
        return Err(FamilyError::Shape {
            name: name.into(),
            found: t.shape.to_vec(),
            expected: shape.to_vec(),
        });
    }
    let mut out = vec![0.0; t.numel()];
    t.read_f32(0, 1.0, &mut out);
    Ok(out)
}

/// Every stored piece of the teacher, in network order.
pub(super) fn pieces(g: &Geometry, ckpt: &Checkpoint) -> Result<Vec<Computed>, FamilyError> {
    let s = &g.stem;
    let (c, k) = (s.channels as usize, s.kernel as usize);
    let stem = Folded::read(g, ckpt, "stem.conv", "stem.bn", [c, 3, k, k])?;
    let mut out = vec![
        Computed::new("stem.conv.weight", vec![c, 3, k, k], stem.weight),
        Computed::new("stem.conv.bias", vec![c], stem.bias),
    ];
    for b in &g.blocks {
        block_pieces(g, ckpt, b, &mut out)?;
    }
    Ok(out)
}

fn block_pieces(
    g: &Geometry,
    ckpt: &Checkpoint,
    b: &Block,
    out: &mut Vec<Computed>,
) -> Result<(), FamilyError> {
    let m = &b.module;
    let (cin, mid, cout) = (b.cin as usize, b.mid as usize, b.out as usize);
    let conv = |i: u32| format!("{m}.conv{i}");
    let conv1 = Folded::read(g, ckpt, &conv(1), &format!("{m}.bn1"), [mid, cin, 1, 1])?;
    let conv2 = Folded::read(g, ckpt, &conv(2), &format!("{m}.bn2"), [mid, mid, 3, 3])?;
    let conv3 = Folded::read(g, ckpt, &conv(3), &format!("{m}.bn3"), [cout, mid, 1, 1])?;
    let parts: Vec<&[u32]> = b.parts.all().collect();
    for (r, rows) in parts.iter().enumerate() {
        let n = rows.len();
        out.push(Computed::new(
            &piece(&conv(1), "weight", Some(r), None),
            vec![n, cin, 1, 1],
            conv1.gather(rows, None),
        ));
        out.push(Computed::new(
            &piece(&conv(1), "bias", Some(r), None),
            vec![n],
            conv1.bias(rows),
        ));
        for (c, cols) in parts.iter().enumerate() {
            out.push(Computed::new(
                &piece(&conv(2), "weight", Some(r), Some(c)),
                vec![n, cols.len(), 3, 3],
                conv2.gather(rows, Some(cols)),
            ));
        }
        out.push(Computed::new(
            &piece(&conv(2), "bias", Some(r), None),
            vec![n],
            conv2.bias(rows),
        ));
    }
    let every: Vec<u32> = (0..cout as u32).collect();
    for (c, cols) in parts.iter().enumerate() {
        out.push(Computed::new(
            &piece(&conv(3), "weight", None, Some(c)),
            vec![cout, cols.len(), 1, 1],
            conv3.gather(&every, Some(cols)),
        ));
    }
    out.push(Computed::new(
        &piece(&conv(3), "bias", None, None),
        vec![cout],
        conv3.bias,
    ));
    if b.shortcut {
        let ds = Folded::read(
            g,
            ckpt,
            &format!("{m}.downsample.0"),
            &format!("{m}.downsample.1"),
            [cout, cin, 1, 1],
        )?;
        let name = format!("{m}.downsample");
        out.push(Computed::new(
            &piece(&name, "weight", None, None),
            vec![cout, cin, 1, 1],
            ds.weight,
        ));
        out.push(Computed::new(
            &piece(&name, "bias", None, None),
            vec![cout],
            ds.bias,
        ));
    }
    Ok(())
}
