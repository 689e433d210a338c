//! A Swin teacher's grid: what its tensors say, reconciled with POA's
//! `student:` keys and the user's flags.

use serde::Deserialize;

use super::{Geometry, Param, ParamKind, ELASTIC_STAGE, STAGES};
use crate::checkpoint::Checkpoint;
use crate::config::{Axis, ConfigError, GridRange, Overrides, PoaConfig};
use crate::family::{FamilyError, OpenError, SubnetSpec, Teacher};

/// The checkpoints this family reads, as errors name them.
const FAMILY: &str = "POA Swin";
/// POA's `crops.global_crops_size`, assumed when there is no config.
const DEFAULT_IMAGE: u32 = 224;

/// What the tensors of a checkpoint say about a Swin teacher, before any config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorFacts {
    pub max_width: u32,
    pub max_depths: [u32; STAGES],
    pub patch_size: u32,
    /// Read off the bias table's columns: C / heads of stage 1.
    pub head_dim: u32,
    /// Read off the bias table's rows: (2·window - 1)².
    pub window: u32,
    pub ln_bias: bool,
    pub qkv_bias: bool,
}

fn missing(name: &str) -> FamilyError {
    FamilyError::Missing {
        name: name.into(),
        family: FAMILY,
    }
}

/// Whether the checkpoint's tensors are named as a Swin's (no config to say so).
pub fn is_swin(ckpt: &Checkpoint) -> bool {
    ckpt.tensor(&Param::block(ParamKind::QkvWeight, 0, 0).teacher_name())
        .is_some()
}

/// Reads a Swin teacher: its tensors, then its grid.
pub fn open(
    ckpt: &Checkpoint,
    config: Option<&PoaConfig>,
    overrides: &Overrides,
) -> Result<Teacher, OpenError> {
    let facts = tensor_facts(ckpt)?;
    let grid = resolve(&facts, config, overrides)?;
    Ok(Teacher {
        grid: grid.subnets(),
        family: Box::new(grid.geometry),
        assumptions: grid.assumptions,
    })
}

/// Reads the teacher's geometry off its tensors and checks every tensor's shape.
pub fn tensor_facts(ckpt: &Checkpoint) -> Result<TensorFacts, FamilyError> {
    let shape = |name: &str| -> Result<Vec<usize>, FamilyError> {
        ckpt.tensor(name)
            .map(|t| t.shape.to_vec())
            .ok_or_else(|| missing(name))
    };
    let patch_name = top_name(ParamKind::PatchWeight);
    let patch = shape(&patch_name)?;
    let [c, 3, p, q] = patch[..] else {
        return Err(FamilyError::Shape {
            name: patch_name,
            found: patch,
            expected: vec![0, 3, 0, 0],
        });
    };
    if p != q || c == 0 {
        return Err(FamilyError::Shape {
            name: patch_name,
            found: patch,
            expected: vec![c, 3, p, p],
        });
    }
    let mut max_depths = [0; STAGES];
    for name in ckpt.names() {
        let mut parts = name.split('.');
        if let (Some("stages"), Some(s), Some("blocks"), Some(i)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            if let (Ok(s), Ok(i)) = (s.parse::<usize>(), i.parse::<u32>()) {
                if let Some(d) = max_depths.get_mut(s) {
                    *d = (*d).max(i + 1);
                }
            }
        }
    }
    if let Some(s) = max_depths.iter().position(|&d| d == 0) {
        return Err(missing(
            &Param::block(ParamKind::QkvWeight, s, 0).teacher_name(),
        ));
    }
    let table_name = Param::block(ParamKind::BiasTable, 0, 0).teacher_name();
    let table = shape(&table_name)?;
    let (window, heads) = match table[..] {
        [rows, heads] if heads > 0 && c % heads == 0 => {
            match (1..=rows).find(|w| (2 * w - 1) * (2 * w - 1) == rows) {
                Some(w) => (w, heads),
                None => {
                    return Err(FamilyError::Shape {
                        name: table_name,
                        found: table,
                        expected: vec![169, heads],
                    })
                }
            }
        }
        _ => {
            return Err(FamilyError::Shape {
                name: table_name,
                found: table,
                expected: vec![169, c / 16],
            })
        }
    };
    let facts = TensorFacts {
        max_width: c as u32,
        max_depths,
        patch_size: p as u32,
        head_dim: (c / heads) as u32,
        window: window as u32,
        ln_bias: ckpt.tensor(&top_name(ParamKind::FinalNormBias)).is_some(),
        qkv_bias: ckpt
            .tensor(&Param::block(ParamKind::QkvBias, 0, 0).teacher_name())
            .is_some(),
    };
    let g = Geometry {
        max_width: facts.max_width,
        max_depths,
        head_dim: facts.head_dim,
        window: facts.window,
        patch_size: facts.patch_size,
        image_size: facts.patch_size,
        ln_bias: facts.ln_bias,
        qkv_bias: facts.qkv_bias,
    };
    for param in g.params() {
        let name = param.teacher_name();
        let t = ckpt.tensor(&name).ok_or_else(|| missing(&name))?;
        let expected = g.teacher_shape(param);
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

/// POA's `student:` section of a Swin config (`arch: swin_dynamic`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct Student {
    pub min_embed_dim: u32,
    pub max_embed_dim: u32,
    pub min_s3_depth: u32,
    pub max_depths: [u32; STAGES],
    pub head_dim: u32,
    pub window_size: u32,
    #[serde(default)]
    pub patch_size: Option<u32>,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default = "one")]
    pub width_interval: u32,
    #[serde(default = "one")]
    pub depth_interval: u32,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// The geometry and grid of a Swin export, with what had to be assumed.
#[derive(Debug, Clone)]
pub(super) struct Grid {
    pub geometry: Geometry,
    pub widths: Vec<u32>,
    /// Stage 3's depths; the other stages keep every block.
    pub s3_depths: Vec<u32>,
    pub assumptions: Vec<String>,
}

impl Grid {
    /// Every sub-network: each width with each stage-3 depth.
    pub fn subnets(&self) -> Vec<SubnetSpec> {
        let g = &self.geometry;
        self.widths
            .iter()
            .flat_map(|&w| self.s3_depths.iter().map(move |&d| g.subnet(w, d)))
            .collect()
    }
}

/// Reconciles tensors, config and flags: a config that contradicts the
/// tensors is an error naming the key; a missing config becomes assumptions.
/// `--depths` gives stage 3's depths.
pub(super) fn resolve(
    facts: &TensorFacts,
    config: Option<&PoaConfig>,
    overrides: &Overrides,
) -> Result<Grid, ConfigError> {
    let mut assumptions = Vec::new();
    let student = config.map(PoaConfig::student::<Student>).transpose()?;
    if let (Some(c), Some(s)) = (config, &student) {
        let mut checks = vec![
            ("student.max_embed_dim", s.max_embed_dim, facts.max_width),
            ("student.head_dim", s.head_dim, facts.head_dim),
            ("student.window_size", s.window_size, facts.window),
            ("student.qkv_bias", s.qkv_bias as u32, facts.qkv_bias as u32),
        ];
        checks.extend(
            s.patch_size
                .map(|p| ("student.patch_size", p, facts.patch_size)),
        );
        if let Some(&(key, config, tensors)) = checks.iter().find(|(_, c, t)| c != t) {
            return Err(c.contradiction(key, config, tensors));
        }
        if s.max_depths != facts.max_depths {
            return Err(ConfigError::Invalid(format!(
                "{} contradicts the checkpoint: config says student.max_depths = {:?}, the tensors hold {:?} blocks per stage",
                c.path.display(),
                s.max_depths,
                facts.max_depths
            )));
        }
    }
    if let Some(h) = overrides.head_dim.filter(|&h| h != facts.head_dim) {
        return Err(ConfigError::Invalid(format!(
            "--head-dim {h} contradicts the bias tables, which give {} heads of {} channels in stage 1",
            facts.max_width / facts.head_dim,
            facts.head_dim
        )));
    }
    let crops = config.and_then(|c| c.crops.as_ref());
    let image_size = match (overrides.image_size, crops.map(|c| c.global_crops_size)) {
        (Some(i), _) | (None, Some(i)) => i,
        (None, None) => {
            assumptions.push(format!(
                "image size = {DEFAULT_IMAGE} (POA's crops.global_crops_size; Swin has no position table to read it from; pass --image-size)"
            ));
            DEFAULT_IMAGE
        }
    };
    let geometry = Geometry {
        max_width: facts.max_width,
        max_depths: facts.max_depths,
        head_dim: facts.head_dim,
        window: facts.window,
        patch_size: facts.patch_size,
        image_size,
        ln_bias: facts.ln_bias,
        qkv_bias: facts.qkv_bias,
    };
    geometry
        .validate()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let h = facts.head_dim;
    let widths = Axis::widths(
        h,
        (3 * facts.max_width / 4).div_ceil(h) * h,
        facts.max_width,
        "POA's Swin grid, 3/4 of the full width; pass --widths",
    )
    .values(
        overrides.widths,
        student
            .as_ref()
            .map(|s| GridRange::stepped(s.min_embed_dim, s.max_embed_dim, h * s.width_interval)),
        &mut assumptions,
    );
    let max = facts.max_depths[ELASTIC_STAGE];
    let s3_depths = Axis {
        name: "stage-3 depths",
        unit: 1,
        default: GridRange {
            start: max.div_ceil(3),
            end: max,
            step: None,
        },
        why: "POA's Swin grid, a third to all of stage 3; pass --depths",
    }
    .values(
        overrides.depths,
        student
            .as_ref()
            .map(|s| GridRange::stepped(s.min_s3_depth, max, s.depth_interval)),
        &mut assumptions,
    );
    Ok(Grid {
        geometry,
        widths,
        s3_depths,
        assumptions,
    })
}

fn top_name(kind: ParamKind) -> String {
    Param::top(kind).teacher_name()
}
