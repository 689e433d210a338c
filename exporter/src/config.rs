//! POA's training `config.yaml` as read from disk and found from POA's
//! layout, and the user's flags; each family reads its own `student:` keys
//! and reconciles them with its tensors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// POA's `config.yaml`: the `student:` section each family reads its keys
/// from, and the crops.
#[derive(Debug, Clone, PartialEq)]
pub struct PoaConfig {
    /// The file it was read from, named in every error.
    pub path: PathBuf,
    student: serde_norway::Value,
    pub crops: Option<Crops>,
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
        PoaConfig::parse(path, &text)
    }

    /// Parses `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<PoaConfig, ConfigError> {
        #[derive(Deserialize)]
        struct Raw {
            student: serde_norway::Value,
            #[serde(default)]
            crops: Option<Crops>,
        }
        let raw: Raw = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        Ok(PoaConfig {
            path: path.into(),
            student: raw.student,
            crops: raw.crops,
        })
    }

    /// `student.arch`, which names the family (`vit_large`, `resnet_dynamic`, ...).
    pub fn arch(&self) -> Option<&str> {
        self.student.get("arch")?.as_str()
    }

    /// The `student:` keys a family reads, as its type `T`.
    pub fn student<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_norway::from_value(self.student.clone()).map_err(|e| ConfigError::Parse {
            path: self.path.clone(),
            message: format!("student: {e}"),
        })
    }

    /// The error for a config value `key` that the tensors contradict.
    pub fn contradiction(&self, key: &'static str, config: u32, tensors: u32) -> ConfigError {
        ConfigError::Contradiction {
            path: self.path.clone(),
            key,
            config,
            tensors,
        }
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
    /// `start..=end` by `step`, as a config's `min_*`, `max_*` and interval give it.
    pub(crate) fn stepped(start: u32, end: u32, step: u32) -> GridRange {
        GridRange {
            start,
            end,
            step: Some(step),
        }
    }

    /// The values, stepping by the range's step or else `default_step`.
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

/// One axis of a grid (widths or depths), resolved alike in every family:
/// the command line wins, then the config's range, then the family's
/// default, which is stated as an assumption because nothing confirmed it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Axis {
    /// Names the axis in the assumption, e.g. "widths".
    pub name: &'static str,
    /// Values are multiples of this (head_dim for widths, 1 for depths).
    pub unit: u32,
    pub default: GridRange,
    /// Where the default comes from and which flag replaces it.
    pub why: &'static str,
}

impl Axis {
    /// Widths: multiples of `head_dim` from `min` to the teacher's `max`.
    pub(crate) fn widths(head_dim: u32, min: u32, max: u32, why: &'static str) -> Axis {
        Axis {
            name: "widths",
            unit: head_dim,
            default: GridRange {
                start: min,
                end: max,
                step: Some(head_dim),
            },
            why,
        }
    }

    pub(crate) fn values(
        self,
        flag: Option<GridRange>,
        config: Option<GridRange>,
        assumptions: &mut Vec<String>,
    ) -> Vec<u32> {
        let range = flag.or(config).unwrap_or_else(|| {
            assumptions.push(format!("{} = {} ({})", self.name, self.default, self.why));
            self.default
        });
        range.values(self.unit)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_student_section_is_read_by_each_family() {
        #[derive(Debug, Deserialize)]
        struct Keys {
            max_depth: u32,
        }
        let c = PoaConfig::parse(
            Path::new("c.yaml"),
            "student:\n  arch: vit_large\n  max_depth: 24\ncrops:\n  global_crops_size: 224\n",
        )
        .unwrap();
        assert_eq!(c.arch(), Some("vit_large"));
        assert_eq!(c.student::<Keys>().unwrap().max_depth, 24);
        assert_eq!(c.crops.unwrap().global_crops_size, 224);
        let bad = PoaConfig::parse(Path::new("c.yaml"), "student:\n  arch: x\n").unwrap();
        let msg = bad.student::<Keys>().unwrap_err().to_string();
        assert!(msg.contains("c.yaml") && msg.contains("max_depth"), "{msg}");
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
