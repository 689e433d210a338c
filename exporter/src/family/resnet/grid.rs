//! A ResNet teacher's grid: what its tensors say, reconciled with POA's
//! `student:` keys (`resnet_dynamic`) and the user's flags.

use serde::Deserialize;

use super::{Geometry, STAGES};
use crate::checkpoint::Checkpoint;
use crate::config::{ConfigError, Overrides, PoaConfig};
use crate::family::{refuse_grid_flags, Depths, FamilyError, OpenError, SubnetSpec, Teacher};

/// The checkpoints this family reads, as errors name them.
const FAMILY: &str = "POA ResNet (resnet_dynamic)";
/// The tensor whose presence makes a checkpoint a ResNet.
const MARKER: &str = "layer1.layers.0.conv1.conv.weight";
/// POA's `resnet_dynamic` defaults, assumed (and said) without a config.
const DEFAULT_GROUPS: u32 = 32;
const DEFAULT_STRIDES: [u32; STAGES] = [1, 2, 2, 2];
const DEFAULT_IMAGE: u32 = 224;

/// POA's `student:` keys of a ResNet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Student {
    min_depths: [u32; STAGES],
    max_depths: [u32; STAGES],
    stem_channels: u32,
    base_channels: u32,
    num_gn_groups: u32,
    strides: [u32; STAGES],
}

/// Whether `ckpt` holds a POA ResNet, by its tensor names.
pub fn detect(ckpt: &Checkpoint) -> bool {
    ckpt.tensor(MARKER).is_some()
}

/// What the tensors say: the stem width, stage 1's narrowest mid width and
/// each stage's block count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TensorFacts {
    stem_channels: u32,
    base_channels: u32,
    max_depths: [u32; STAGES],
}

fn tensor_facts(ckpt: &Checkpoint) -> Result<TensorFacts, FamilyError> {
    let shape = |name: &str| {
        ckpt.tensor(name)
            .map(|t| t.shape.to_vec())
            .ok_or_else(|| FamilyError::Missing {
                name: name.into(),
                family: FAMILY,
            })
    };
    let stem = shape("conv1.weight")?;
    let stem_channels = match stem[..] {
        [c, 3, 7, 7] => c as u32,
        _ => {
            let c = stem.first().copied().unwrap_or(0);
            return Err(FamilyError::Shape {
                name: "conv1.weight".into(),
                found: stem,
                expected: vec![c, 3, 7, 7],
            });
        }
    };
    let conv3 = shape("layer1.layers.0.conv3.conv.weight")?;
    let base_channels = (conv3[0] / 4) as u32;
    let max_depths = std::array::from_fn(|s| {
        let prefix = format!("layer{}.layers.", s + 1);
        ckpt.names()
            .filter_map(|n| {
                n.strip_prefix(&prefix)?
                    .split_once('.')?
                    .0
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1)
    });
    Ok(TensorFacts {
        stem_channels,
        base_channels,
        max_depths,
    })
}

/// Checks every tensor the slices read has the teacher's shape, and names
/// the first block of a stage's numbering that is missing.
fn check_tensors(ckpt: &Checkpoint, g: &Geometry) -> Result<(), FamilyError> {
    for (name, expected) in g.teacher_shapes() {
        let Some(t) = ckpt.tensor(&name) else {
            let gap = (0..STAGES).find_map(|s| {
                (0..g.max_depths[s])
                    .find(|i| {
                        ckpt.tensor(&format!("layer{}.layers.{i}.conv1.conv.weight", s + 1))
                            .is_none()
                    })
                    .map(|missing| (s, missing))
            });
            return Err(match gap {
                Some((s, missing)) => FamilyError::BlockGap {
                    what: format!("stage {}'s blocks", s + 1),
                    count: g.max_depths[s],
                    missing,
                },
                None => FamilyError::Missing {
                    name,
                    family: FAMILY,
                },
            });
        };
        if t.shape != expected.as_slice() {
            return Err(FamilyError::Shape {
                name,
                found: t.shape.to_vec(),
                expected,
            });
        }
    }
    Ok(())
}

/// Reads a ResNet teacher: its tensors, its config, and the grid.
pub fn open(
    ckpt: &Checkpoint,
    config: Option<&PoaConfig>,
    overrides: &Overrides,
) -> Result<Teacher, OpenError> {
    refuse_grid_flags(
        overrides,
        "a ResNet",
        "its grid is the config's mid widths × per-stage depths",
    )?;
    let facts = tensor_facts(ckpt)?;
    let mut assumptions = Vec::new();
    let geometry = match config {
        Some(c) => {
            let s: Student = c.student()?;
            let checks = [
                (
                    "student.stem_channels",
                    s.stem_channels,
                    facts.stem_channels,
                ),
                (
                    "student.base_channels",
                    s.base_channels,
                    facts.base_channels,
                ),
            ]
            .into_iter()
            .chain((0..STAGES).map(|i| (MAX_DEPTH_KEYS[i], s.max_depths[i], facts.max_depths[i])));
            for (key, config, tensors) in checks {
                if config != tensors {
                    return Err(c.contradiction(key, config, tensors).into());
                }
            }
            let image_size = match (overrides.image_size, &c.crops) {
                (Some(i), _) => i,
                (None, Some(crops)) => crops.global_crops_size,
                (None, None) => {
                    assumptions.push(format!("image size {DEFAULT_IMAGE} (no crops.global_crops_size; pass --image-size)"));
                    DEFAULT_IMAGE
                }
            };
            Geometry {
                stem_channels: s.stem_channels,
                base_channels: s.base_channels,
                groups: s.num_gn_groups,
                min_depths: s.min_depths,
                max_depths: s.max_depths,
                strides: s.strides,
                image_size,
            }
        }
        None => {
            assumptions.push(format!(
                "num_gn_groups = {DEFAULT_GROUPS}, strides = {DEFAULT_STRIDES:?} (POA's defaults; pass --config)"
            ));
            assumptions.push(format!(
                "depths = {:?} only (the elastic depth range is in config.yaml; pass --config)",
                facts.max_depths
            ));
            let image_size = overrides.image_size.unwrap_or_else(|| {
                assumptions.push(format!("image size {DEFAULT_IMAGE} (pass --image-size)"));
                DEFAULT_IMAGE
            });
            Geometry {
                stem_channels: facts.stem_channels,
                base_channels: facts.base_channels,
                groups: DEFAULT_GROUPS,
                min_depths: facts.max_depths,
                max_depths: facts.max_depths,
                strides: DEFAULT_STRIDES,
                image_size,
            }
        }
    };
    validate(&geometry)?;
    check_tensors(ckpt, &geometry)?;
    let grid = grid(&geometry);
    Ok(Teacher {
        family: Box::new(geometry),
        grid,
        assumptions,
    })
}

const MAX_DEPTH_KEYS: [&str; STAGES] = [
    "student.max_depths[0]",
    "student.max_depths[1]",
    "student.max_depths[2]",
    "student.max_depths[3]",
];

/// The geometry's own consistency, as POA's constructors assert it.
fn validate(g: &Geometry) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if g.groups == 0 || !g.base_channels.is_multiple_of(g.groups) {
        return invalid(format!(
            "num_gn_groups {} does not divide base_channels {} (POA's bottleneck widths must be multiples of it)",
            g.groups, g.base_channels
        ));
    }
    if !g.stem_channels.is_multiple_of(g.groups) {
        return invalid(format!(
            "num_gn_groups {} does not divide stem_channels {}",
            g.groups, g.stem_channels
        ));
    }
    if let Some(s) =
        (0..STAGES).find(|&s| g.min_depths[s] == 0 || g.min_depths[s] > g.max_depths[s])
    {
        return invalid(format!(
            "stage {} depths {}..={} are not a range of at least one block",
            s + 1,
            g.min_depths[s],
            g.max_depths[s]
        ));
    }
    if g.strides.contains(&0) || g.image_size < 32 {
        return invalid(format!(
            "strides {:?} and image size {} leave no feature map",
            g.strides, g.image_size
        ));
    }
    Ok(())
}

/// Every (stage-1 mid width, stage depths) of the grid, in id order.
fn grid(g: &Geometry) -> Vec<SubnetSpec> {
    let mut depths = vec![Vec::new()];
    for s in 0..STAGES {
        depths = depths
            .into_iter()
            .flat_map(|prefix: Vec<u32>| {
                (g.min_depths[s]..=g.max_depths[s]).map(move |d| {
                    let mut next = prefix.clone();
                    next.push(d);
                    next
                })
            })
            .collect();
    }
    g.widths()
        .into_iter()
        .flat_map(|width| {
            depths.iter().map(move |d| SubnetSpec {
                path: None,
                width,
                depths: Depths::new(d).expect("four stages"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::resnet::POA_RESNET;

    #[test]
    fn poa_resnet_grid_has_465_subnetworks() {
        let g = POA_RESNET;
        let grid = grid(&g);
        assert_eq!(grid.len(), 465);
        assert_eq!(g.widths(), [64, 96, 128]);
        assert_eq!(grid[0].id(), "w64-d3.4.6.3");
        assert_eq!(grid[464].id(), "w128-d3.8.36.3");
        assert!(grid.windows(2).all(|p| p[0] < p[1]), "sorted, no repeats");
    }

    #[test]
    fn groups_must_divide_the_widths() {
        let g = Geometry {
            groups: 24,
            ..POA_RESNET
        };
        let msg = validate(&g).unwrap_err().to_string();
        assert!(
            msg.contains("num_gn_groups 24") && msg.contains("64"),
            "{msg}"
        );
    }
}
