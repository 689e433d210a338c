//! An SDR teacher read from its checkpoint and the routing spec beside it:
//! the bottlenecks from the tensor names, strides and groups from the spec.

use std::path::Path;

use super::routing::{Parts, SpecFile};
use super::{fold, missing, Block, Geometry, SdrPath, Stem};
use crate::checkpoint::Checkpoint;
use crate::config::Overrides;
use crate::family::{refuse_grid_flags, Depths, FamilyError, OpenError, Teacher};
use tailor_runtime::manifest::{MAX_ROUTE, MAX_STAGES};

/// The shape of `name`, or the error naming it.
fn shape<'a>(ckpt: &'a Checkpoint, name: &str) -> Result<&'a [usize], FamilyError> {
    ckpt.tensor(name)
        .map(|t| t.shape)
        .ok_or_else(|| missing(name))
}

/// Blocks per stage from the names `layer<s>.<i>.conv1.weight`, checked to
/// be numbered without gaps.
fn stage_depths(ckpt: &Checkpoint) -> Result<Vec<u32>, FamilyError> {
    let mut found: Vec<Vec<u32>> = Vec::new();
    for name in ckpt.names() {
        let mut parts = name.split('.');
        let (Some(layer), Some(index), Some("conv1"), Some("weight"), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        let (Some(stage), Ok(index)) = (
            layer
                .strip_prefix("layer")
                .and_then(|s| s.parse::<usize>().ok()),
            index.parse::<u32>(),
        ) else {
            continue;
        };
        if stage == 0 {
            continue;
        }
        if found.len() < stage {
            found.resize(stage, Vec::new());
        }
        found[stage - 1].push(index);
    }
    found
        .iter_mut()
        .enumerate()
        .map(|(s, indices)| {
            indices.sort_unstable();
            let count = indices.len() as u32;
            match (0..count).find(|&i| indices[i as usize] != i) {
                Some(gap) => Err(FamilyError::BlockGap {
                    what: format!("stage {}'s blocks", s + 1),
                    count: indices.last().map_or(0, |l| l + 1),
                    missing: gap,
                }),
                None if count == 0 => Err(missing(&format!("layer{}.0.conv1.weight", s + 1))),
                None => Ok(count),
            }
        })
        .collect()
}

/// Reads an SDR teacher: its tensors, its routing spec at `spec_path`, and
/// every path plus the whole SDRnet as the grid. Every piece is folded once
/// here, so a missing or mis-shaped tensor is found before anything is written.
pub fn open(
    ckpt: &Checkpoint,
    spec_path: &Path,
    overrides: &Overrides,
) -> Result<Teacher, OpenError> {
    refuse_grid_flags(overrides, "an SDR", "its sub-networks are its routes")?;
    let spec = SpecFile::read(spec_path)?;
    let bad = |problem: String| FamilyError::SdrSpec {
        path: spec_path.to_owned(),
        problem,
    };
    let depths = stage_depths(ckpt)?;
    if depths.len() != spec.strides.len() {
        return Err(bad(format!(
            "{} strides for the checkpoint's {} stages",
            spec.strides.len(),
            depths.len()
        ))
        .into());
    }
    if spec.sdr_blocks.len() > MAX_ROUTE {
        return Err(bad(format!("more than {MAX_ROUTE} SDR blocks")).into());
    }
    let stem_shape = shape(ckpt, "stem.conv.weight")?;
    let &[channels, 3, kernel, k2] = stem_shape else {
        return Err(FamilyError::Shape {
            name: "stem.conv.weight".into(),
            found: stem_shape.to_vec(),
            expected: vec![stem_shape.first().copied().unwrap_or(0), 3, 3, 3],
        }
        .into());
    };
    if kernel != k2 || kernel % 2 == 0 {
        return Err(bad(format!(
            "the stem conv is {kernel}×{k2}: only odd square kernels are read"
        ))
        .into());
    }
    let stem = Stem {
        channels: channels as u32,
        kernel: kernel as u32,
        stride: spec.stem.stride,
        max_pool: spec.stem.max_pool,
    };
    let mut blocks = Vec::new();
    let mut cin = stem.channels;
    for (stage, (&depth, &stride)) in depths.iter().zip(&spec.strides).enumerate() {
        for index in 0..depth {
            let module = format!("layer{}.{index}", stage + 1);
            let conv1 = shape(ckpt, &format!("{module}.conv1.weight"))?;
            let conv3 = shape(ckpt, &format!("{module}.conv3.weight"))?;
            let (mid, out) = (conv1[0] as u32, conv3[0] as u32);
            blocks.push(Block {
                module: module.clone(),
                cin,
                mid,
                out,
                stride: if index == 0 { stride } else { 1 },
                shortcut: ckpt
                    .tensor(&format!("{module}.downsample.0.weight"))
                    .is_some(),
                parts: Parts::plain(mid),
                sdr: None,
            });
            cin = out;
        }
    }
    for (i, b) in spec.sdr_blocks.iter().enumerate() {
        let Some(block) = blocks.iter_mut().find(|x| x.module == b.module) else {
            return Err(bad(format!(
                "block {} is not a bottleneck of the checkpoint",
                b.module
            ))
            .into());
        };
        if b.groups.len() > usize::from(u8::MAX) {
            return Err(bad(format!(
                "block {}: {} groups, at most {} are read",
                b.module,
                b.groups.len(),
                u8::MAX
            ))
            .into());
        }
        if block.sdr.is_some() {
            return Err(bad(format!("block {} is listed twice", b.module)).into());
        }
        block.parts = b.parts(block.mid).map_err(bad)?;
        block.sdr = Some(i);
    }
    let order: Vec<usize> = blocks.iter().filter_map(|b| b.sdr).collect();
    if order.windows(2).any(|w| w[0] > w[1]) {
        return Err(bad("sdr_blocks must be listed in network order".into()).into());
    }
    let g = Geometry {
        image_size: overrides.image_size.unwrap_or(spec.image_size),
        bn_eps: spec.bn_eps,
        stem,
        blocks,
        depths: Depths::new(&depths).ok_or_else(|| {
            bad(format!(
                "{} stages: at most {MAX_STAGES} are read",
                depths.len()
            ))
        })?,
    };
    fold::pieces(&g, ckpt)?;
    let mut grid = vec![g.spec(SdrPath::Full)];
    grid.extend(g.routes().into_iter().map(|r| g.spec(SdrPath::Route(r))));
    Ok(Teacher {
        family: Box::new(g),
        grid,
        assumptions: Vec::new(),
    })
}
