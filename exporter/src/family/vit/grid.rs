//! A ViT teacher's grid: what its tensors say, reconciled with POA's
//! `student:` keys and the user's flags.

use serde::Deserialize;

use super::Geometry;
use crate::checkpoint::Checkpoint;
use crate::config::{Axis, ConfigError, GridRange, Overrides, PoaConfig};
use crate::family::{FamilyError, OpenError, SubnetSpec, Teacher};

/// The checkpoints this family reads, as errors name them.
pub(super) const FAMILY: &str = "POA/DINOv2 ViT";

/// POA's `student:` keys of a ViT.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Student {
    #[serde(default)]
    patch_size: Option<u32>,
    min_embed_dim: u32,
    max_embed_dim: u32,
    min_depth: u32,
    max_depth: u32,
    head_dim: u32,
    #[serde(default = "one")]
    width_interval: u32,
    #[serde(default = "one")]
    depth_interval: u32,
}

fn one() -> u32 {
    1
}

/// Reads a ViT teacher: its tensors, then its grid.
pub fn open(
    ckpt: &Checkpoint,
    config: Option<&PoaConfig>,
    overrides: &Overrides,
) -> Result<Teacher, OpenError> {
    let facts = tensor_facts(ckpt)?;
    let r = resolve(&facts, config, overrides)?;
    let grid = r
        .widths
        .iter()
        .flat_map(|&w| r.depths.iter().map(move |&d| SubnetSpec::single(w, d)))
        .collect();
    Ok(Teacher {
        family: Box::new(r.geometry),
        grid,
        assumptions: r.assumptions,
    })
}

/// What the tensors of a checkpoint say about the teacher, before any config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorFacts {
    pub max_width: u32,
    pub max_depth: u32,
    pub patch_size: u32,
    /// Tokens of the positional embedding, CLS included.
    pub tokens: u32,
    pub ln_bias: bool,
}

/// Reads the teacher's geometry off its tensors and checks every tensor's shape.
pub fn tensor_facts(ckpt: &Checkpoint) -> Result<TensorFacts, FamilyError> {
    let shape = |name: &str| -> Result<Vec<usize>, FamilyError> {
        ckpt.tensor(name)
            .map(|t| t.shape.to_vec())
            .ok_or_else(|| FamilyError::Missing {
                name: name.into(),
                family: FAMILY,
            })
    };
    let cls = shape("cls_token")?;
    let [1, 1, d] = cls[..] else {
        return Err(FamilyError::Shape {
            name: "cls_token".into(),
            found: cls,
            expected: vec![1, 1, 0],
        });
    };
    let patch = shape("patch_embed.proj.weight")?;
    let p = match patch[..] {
        [pd, 3, p, q] if pd == d && p == q => p,
        _ => {
            let p = patch.get(2).copied().unwrap_or(0);
            return Err(FamilyError::Shape {
                name: "patch_embed.proj.weight".into(),
                found: patch,
                expected: vec![d, 3, p, p],
            });
        }
    };
    let pos = shape("pos_embed")?;
    let tokens = match pos[..] {
        [1, t, pd] if pd == d && t >= 2 => t,
        _ => {
            return Err(FamilyError::Shape {
                name: "pos_embed".into(),
                found: pos,
                expected: vec![1, 0, d],
            })
        }
    };
    let max_depth = ckpt
        .names()
        .filter_map(|n| {
            n.strip_prefix("blocks.")?
                .split_once('.')?
                .0
                .parse::<u32>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    if max_depth == 0 {
        return Err(FamilyError::Missing {
            name: "blocks.0.attn.qkv.weight".into(),
            family: FAMILY,
        });
    }
    let facts = TensorFacts {
        max_width: d as u32,
        max_depth,
        patch_size: p as u32,
        tokens: tokens as u32,
        ln_bias: ckpt.tensor("norm.bias").is_some(),
    };
    let g = Geometry {
        max_width: facts.max_width,
        max_depth,
        head_dim: 1,
        patch_size: facts.patch_size,
        image_size: 0,
        ln_bias: facts.ln_bias,
    };
    for param in g.params() {
        let name = param.teacher_name();
        let Some(t) = ckpt.tensor(&name) else {
            return Err(match param.block {
                Some(b)
                    if ckpt
                        .tensor(&format!("blocks.{b}.attn.qkv.weight"))
                        .is_none() =>
                {
                    FamilyError::BlockGap {
                        what: "blocks".into(),
                        count: max_depth,
                        missing: b,
                    }
                }
                _ => FamilyError::Missing {
                    name,
                    family: FAMILY,
                },
            });
        };
        let expected = g.teacher_shape(param.kind, tokens);
        if t.shape != expected.as_slice() {
            return Err(FamilyError::Shape {
                name,
                found: t.shape.to_vec(),
                expected,
            });
        }
    }
    Ok(facts)
}

/// The geometry and grid an export uses.
#[derive(Debug, Clone)]
struct Resolved {
    geometry: Geometry,
    widths: Vec<u32>,
    depths: Vec<u32>,
    assumptions: Vec<String>,
}

/// Reconciles tensors, config and flags; a config that contradicts the
/// tensors is an error, a missing config becomes stated assumptions.
fn resolve(
    facts: &TensorFacts,
    config: Option<&PoaConfig>,
    overrides: &Overrides,
) -> Result<Resolved, ConfigError> {
    let mut assumptions = Vec::new();
    let student = config.map(PoaConfig::student::<Student>).transpose()?;
    if let (Some(c), Some(s)) = (config, &student) {
        let tokens_side = |img: u32| (img / facts.patch_size).pow(2) + 1;
        let mut checks = vec![
            ("student.max_embed_dim", s.max_embed_dim, facts.max_width),
            ("student.max_depth", s.max_depth, facts.max_depth),
        ];
        if let Some(p) = s.patch_size {
            checks.push(("student.patch_size", p, facts.patch_size));
        }
        if let Some(crops) = &c.crops {
            // Only a config image size that disagrees with pos_embed is a contradiction.
            if tokens_side(crops.global_crops_size) != facts.tokens
                && overrides.image_size.is_none()
            {
                checks.push((
                    "crops.global_crops_size",
                    crops.global_crops_size,
                    image_side(facts)?,
                ));
            }
        }
        if let Some(&(key, config, tensors)) = checks.iter().find(|(_, c, t)| c != t) {
            return Err(c.contradiction(key, config, tensors));
        }
    }
    let student = student.as_ref();
    let head_dim = match (overrides.head_dim, student) {
        (Some(h), _) => h,
        (None, Some(s)) => s.head_dim,
        (None, None) if facts.max_width.is_multiple_of(64) => {
            assumptions.push("head_dim = 64 (POA's released configs; pass --head-dim)".into());
            64
        }
        (None, None) => {
            return Err(ConfigError::Invalid(format!(
                "no config.yaml to give head_dim, and the teacher's width {} is not a multiple of 64: pass --head-dim or --config",
                facts.max_width
            )))
        }
    };
    let image_size = match overrides.image_size {
        Some(i) => i,
        None => image_side(facts)?,
    };
    let geometry = Geometry {
        max_width: facts.max_width,
        max_depth: facts.max_depth,
        head_dim,
        patch_size: facts.patch_size,
        image_size,
        ln_bias: facts.ln_bias,
    };
    geometry
        .validate()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    if geometry.tokens() as u32 != facts.tokens {
        return Err(ConfigError::Invalid(format!(
            "image size {image_size} gives {} tokens but pos_embed holds {} (position interpolation is not supported)",
            geometry.tokens(),
            facts.tokens
        )));
    }
    let widths = Axis::widths(
        head_dim,
        (3 * facts.max_width / 8).div_ceil(head_dim) * head_dim,
        facts.max_width,
        "POA's 3/8 of the full width; pass --widths",
    )
    .values(
        overrides.widths,
        student.map(|s| {
            GridRange::stepped(
                s.min_embed_dim,
                s.max_embed_dim,
                head_dim * s.width_interval,
            )
        }),
        &mut assumptions,
    );
    let depths = Axis {
        name: "depths",
        unit: 1,
        default: GridRange {
            start: facts.max_depth.div_ceil(2),
            end: facts.max_depth,
            step: None,
        },
        why: "POA's half to full depth; pass --depths",
    }
    .values(
        overrides.depths,
        student.map(|s| GridRange::stepped(s.min_depth, s.max_depth, s.depth_interval)),
        &mut assumptions,
    );
    Ok(Resolved {
        geometry,
        widths,
        depths,
        assumptions,
    })
}

/// The image side the positional embedding was trained for.
fn image_side(facts: &TensorFacts) -> Result<u32, ConfigError> {
    let n = facts.tokens - 1;
    let side = (n as f64).sqrt().round() as u32;
    if side * side != n {
        return Err(ConfigError::Invalid(format!(
            "pos_embed holds {n} patch tokens, not a square grid: pass --image-size"
        )));
    }
    Ok(side * facts.patch_size)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn vit_l() -> TensorFacts {
        TensorFacts {
            max_width: 1024,
            max_depth: 24,
            patch_size: 16,
            tokens: 197,
            ln_bias: true,
        }
    }

    fn poa_config(path: &str, max_depth: u32) -> PoaConfig {
        let text = format!(
            "student:\n  arch: vit_large\n  patch_size: 16\n  min_embed_dim: 384\n  max_embed_dim: 1024\n  \
             min_depth: 12\n  max_depth: {max_depth}\n  head_dim: 64\n  width_interval: 1\n  depth_interval: 1\n\
             crops:\n  global_crops_size: 224\noptim:\n  lr: 0.001\n"
        );
        PoaConfig::parse(Path::new(path), &text).unwrap()
    }

    #[test]
    fn poa_config_gives_the_143_grid() {
        let c = poa_config("config.yaml", 24);
        let r = resolve(&vit_l(), Some(&c), &Overrides::default()).unwrap();
        assert_eq!(r.widths.len() * r.depths.len(), 143);
        assert_eq!((r.widths[0], *r.widths.last().unwrap()), (384, 1024));
        assert_eq!(r.geometry.image_size, 224);
        assert!(r.assumptions.is_empty());
    }

    #[test]
    fn contradictions_name_the_key() {
        let c = poa_config("cfg.yaml", 12);
        let err = resolve(&vit_l(), Some(&c), &Overrides::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("cfg.yaml")
                && msg.contains("student.max_depth = 12")
                && msg.contains("24"),
            "{msg}"
        );
    }

    #[test]
    fn without_config_assumptions_are_stated() {
        let r = resolve(&vit_l(), None, &Overrides::default()).unwrap();
        assert_eq!(r.widths.first(), Some(&384));
        assert_eq!(r.depths, (12..=24).collect::<Vec<_>>());
        assert_eq!(r.assumptions.len(), 3, "{:?}", r.assumptions);
    }

    #[test]
    fn flags_override_the_config() {
        let c = poa_config("c", 24);
        let o = Overrides {
            widths: Some("512:768:128".parse().unwrap()),
            depths: Some("24".parse().unwrap()),
            ..Default::default()
        };
        let r = resolve(&vit_l(), Some(&c), &o).unwrap();
        assert_eq!(r.widths, [512, 640, 768]);
        assert_eq!(r.depths, [24]);
    }
}
