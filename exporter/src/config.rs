//! The teacher's grid and geometry: POA's training `config.yaml`, what the
//! tensors say, and the user's flags, reconciled into one [`Resolved`] plan.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::family::vit::{Geometry, TensorFacts};

/// The parts of POA's `config.yaml` the exporter reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PoaConfig {
    pub student: Student,
    #[serde(default)]
    pub crops: Option<Crops>,
}

/// POA's `student:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Student {
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub patch_size: Option<u32>,
    pub min_embed_dim: u32,
    pub max_embed_dim: u32,
    pub min_depth: u32,
    pub max_depth: u32,
    pub head_dim: u32,
    #[serde(default = "one")]
    pub width_interval: u32,
    #[serde(default = "one")]
    pub depth_interval: u32,
}

fn one() -> u32 {
    1
}

/// POA's `crops:` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Crops {
    pub global_crops_size: u32,
}

/// Why the grid could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a POA training config: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} contradicts the checkpoint: config says {key} = {config}, the tensors say {tensors}")]
    Contradiction {
        path: PathBuf,
        key: &'static str,
        config: u32,
        tensors: u32,
    },
    #[error("{0}")]
    Invalid(String),
}

impl PoaConfig {
    pub fn read(path: &Path) -> Result<PoaConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        serde_norway::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }
}

/// Finds POA's `config.yaml` for a checkpoint laid out as training writes it
/// (`<output_dir>/eval/training_<iter>/teacher_checkpoint.pth`), or beside it.
pub fn find_config(teacher: &Path) -> Option<PathBuf> {
    let dir = teacher.parent()?;
    let beside = dir.join("config.yaml");
    if beside.is_file() {
        return Some(beside);
    }
    let eval = dir.parent()?;
    let is_training_dir = dir.file_name()?.to_str()?.starts_with("training_");
    let output = eval.parent()?;
    let poa = output.join("config.yaml");
    (is_training_dir && eval.file_name()? == "eval" && poa.is_file()).then_some(poa)
}

/// An inclusive range with a step, as `START:END[:STEP]` (or one value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridRange {
    pub start: u32,
    pub end: u32,
    pub step: Option<u32>,
}

impl GridRange {
    /// The values from start to end inclusive, by the step or `default_step`.
    pub fn values(self, default_step: u32) -> Vec<u32> {
        let step = self.step.unwrap_or(default_step).max(1) as usize;
        (self.start..=self.end).step_by(step).collect()
    }
}

impl FromStr for GridRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<_> = s.split(':').map(str::parse::<u32>).collect();
        let bad = || format!("`{s}` is not a range: expected START:END[:STEP], e.g. 384:1024:64");
        match parts[..] {
            [Ok(v)] => Ok(GridRange {
                start: v,
                end: v,
                step: None,
            }),
            [Ok(start), Ok(end)] if start <= end => Ok(GridRange {
                start,
                end,
                step: None,
            }),
            [Ok(start), Ok(end), Ok(step)] if start <= end && step > 0 => Ok(GridRange {
                start,
                end,
                step: Some(step),
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for GridRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start, self.end)?;
        self.step.map_or(Ok(()), |s| write!(f, ":{s}"))
    }
}

/// Flags that override the config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub widths: Option<GridRange>,
    pub depths: Option<GridRange>,
    pub head_dim: Option<u32>,
    pub image_size: Option<u32>,
}

/// The geometry and grid an export uses, with where each fact came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub geometry: Geometry,
    pub widths: Vec<u32>,
    pub depths: Vec<u32>,
    /// Facts that came from neither a config, the tensors nor a flag.
    pub assumptions: Vec<String>,
}

/// Reconciles tensors, config and flags; a config that contradicts the
/// tensors is an error, a missing config becomes stated assumptions.
pub fn resolve(
    facts: &TensorFacts,
    config: Option<(&Path, &PoaConfig)>,
    overrides: &Overrides,
) -> Result<Resolved, ConfigError> {
    let mut assumptions = Vec::new();
    if let Some((path, c)) = config {
        let s = &c.student;
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
            return Err(ConfigError::Contradiction {
                path: path.into(),
                key,
                config,
                tensors,
            });
        }
    }
    let student = config.map(|(_, c)| &c.student);
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
    let widths = match (overrides.widths, student) {
        (Some(r), _) => r.values(head_dim),
        (None, Some(s)) => GridRange {
            start: s.min_embed_dim,
            end: s.max_embed_dim,
            step: Some(head_dim * s.width_interval),
        }
        .values(head_dim),
        (None, None) => {
            let min = (3 * facts.max_width / 8).div_ceil(head_dim) * head_dim;
            assumptions.push(format!(
                "widths = {min}:{}:{head_dim} (POA's 3/8 of the full width; pass --widths)",
                facts.max_width
            ));
            GridRange {
                start: min,
                end: facts.max_width,
                step: Some(head_dim),
            }
            .values(head_dim)
        }
    };
    let depths = match (overrides.depths, student) {
        (Some(r), _) => r.values(1),
        (None, Some(s)) => GridRange {
            start: s.min_depth,
            end: s.max_depth,
            step: Some(s.depth_interval),
        }
        .values(1),
        (None, None) => {
            let min = facts.max_depth.div_ceil(2);
            assumptions.push(format!(
                "depths = {min}:{} (POA's half to full depth; pass --depths)",
                facts.max_depth
            ));
            GridRange {
                start: min,
                end: facts.max_depth,
                step: None,
            }
            .values(1)
        }
    };
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

    fn poa_config() -> PoaConfig {
        serde_norway::from_str(
            "student:\n  arch: vit_large\n  patch_size: 16\n  min_embed_dim: 384\n  max_embed_dim: 1024\n  \
             min_depth: 12\n  max_depth: 24\n  head_dim: 64\n  width_interval: 1\n  depth_interval: 1\n\
             crops:\n  global_crops_size: 224\noptim:\n  lr: 0.001\n",
        )
        .unwrap()
    }

    #[test]
    fn poa_config_gives_the_143_grid() {
        let c = poa_config();
        let r = resolve(
            &vit_l(),
            Some((Path::new("config.yaml"), &c)),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(r.widths.len() * r.depths.len(), 143);
        assert_eq!((r.widths[0], *r.widths.last().unwrap()), (384, 1024));
        assert_eq!(r.geometry.image_size, 224);
        assert!(r.assumptions.is_empty());
    }

    #[test]
    fn contradictions_name_the_key() {
        let mut c = poa_config();
        c.student.max_depth = 12;
        let err = resolve(
            &vit_l(),
            Some((Path::new("cfg.yaml"), &c)),
            &Overrides::default(),
        )
        .unwrap_err();
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
        let c = poa_config();
        let o = Overrides {
            widths: Some("512:768:128".parse().unwrap()),
            depths: Some("24".parse().unwrap()),
            ..Default::default()
        };
        let r = resolve(&vit_l(), Some((Path::new("c"), &c)), &o).unwrap();
        assert_eq!(r.widths, [512, 640, 768]);
        assert_eq!(r.depths, [24]);
    }

    #[test]
    fn ranges_parse_strictly() {
        assert_eq!(
            "12:24".parse(),
            Ok(GridRange {
                start: 12,
                end: 24,
                step: None
            })
        );
        for bad in ["", "24:12", "1:2:0", "a:b", "1:2:3:4"] {
            assert!(bad.parse::<GridRange>().is_err(), "{bad}");
        }
    }
}
