//! POA's elastic Swin (mmseg-style Swin backbone): every slicing rule, the
//! cost model and the ONNX graph of a sub-network, following POA's own
//! dynamic forward exactly (see docs/exporter.md, "Swin").

use onnx_protobuf::ModelProto;
use serde::Deserialize;
use tailor_runtime::manifest::{PerStage, SwinConfig, TeacherConfig};

use super::slice::{Cut, TensorCut};
use super::{
    check_heads_and_patches, linspace_blocks, Costs, Depths, Family, FamilyError, Layout,
    OpenError, SubnetSpec, Teacher,
};
use crate::checkpoint::Checkpoint;
use crate::config::{Axis, ConfigError, GridRange, Overrides, PoaConfig};
use crate::onnx::layers::{BlockConsts, Linear};
use crate::onnx::{Attr, Dim, ExternalData, GraphBuilder, Value};
use tailor_runtime::interface::{CLS_TOKEN, PATCH_TOKENS, PIXEL_VALUES};

/// The checkpoints this family reads, as errors name them.
const FAMILY: &str = "POA Swin";

/// Stages of a Swin; each after the first halves the map and doubles the width.
pub const STAGES: usize = 4;
/// The one stage whose depth is elastic (POA's stage 3).
const ELASTIC_STAGE: usize = 2;
/// MLP hidden width as a multiple of the stage width.
const MLP_RATIO: usize = 4;
/// LayerNorm epsilon of POA's Swin (`DynamicLayerNorm`'s default).
const LN_EPS: f32 = 1e-5;
/// Added to attention scores between tokens of different shifted-window regions.
const MASK: f32 = -100.0;
/// POA's `crops.global_crops_size`, assumed when there is no config.
const DEFAULT_IMAGE: u32 = 224;

/// The shape of a Swin teacher that every sub-network shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Stage-1 width C of the teacher; stage s has C·2^s.
    pub max_width: u32,
    /// Blocks per stage of the teacher.
    pub max_depths: [u32; STAGES],
    /// Channels per head; every width is a multiple of it.
    pub head_dim: u32,
    /// Side of an attention window.
    pub window: u32,
    pub patch_size: u32,
    pub image_size: u32,
    /// Whether the LayerNorms carry a bias (POA under torch >= 2.1 drops it).
    pub ln_bias: bool,
    /// Whether qkv has a bias (POA's `qkv_bias`).
    pub qkv_bias: bool,
}

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
pub struct Student {
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
pub struct Grid {
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
pub fn resolve(
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

impl Geometry {
    /// Side of each stage's token map: the patch grid, then ⌈/2⌉ per merge
    /// (patch merging pads odd maps).
    pub fn resolutions(&self) -> [usize; STAGES] {
        let mut side = (self.image_size / self.patch_size) as usize;
        std::array::from_fn(|s| {
            if s > 0 {
                side = side.div_ceil(2);
            }
            side
        })
    }

    /// The sub-network of width `width` whose stage 3 keeps `s3_depth` blocks.
    pub fn subnet(&self, width: u32, s3_depth: u32) -> SubnetSpec {
        let mut depths = self.max_depths;
        depths[ELASTIC_STAGE] = s3_depth;
        SubnetSpec {
            width,
            depths: Depths::new(&depths).expect("four stages fit Depths"),
            path: None,
        }
    }

    /// The four stage depths of a checked `s`.
    fn stage_depths(&self, s: &SubnetSpec) -> [u32; STAGES] {
        let mut depths = self.max_depths;
        for (d, &given) in depths.iter_mut().zip(s.depths.as_slice()) {
            *d = given;
        }
        depths
    }

    /// Checks the geometry itself is consistent.
    pub fn validate(&self) -> Result<(), FamilyError> {
        check_heads_and_patches(
            self.max_width,
            self.head_dim,
            self.image_size,
            self.patch_size,
        )
    }

    /// Parameters, MACs and the activation-memory estimate of `s`.
    ///
    /// Window attention runs on the padded map; the MLPs and merges on the
    /// real one. The activation estimate is the largest working set of one
    /// block at batch 1 (attention: qkv, two score maps, the residual; MLP:
    /// two hidden maps and two residual-width maps), plus the input image.
    fn swin_costs(&self, width: u32, depths: [u32; STAGES]) -> Costs {
        let c = self.max_width as u64;
        let p2 = (self.patch_size * self.patch_size) as u64;
        let ln = |n: u64| if self.ln_bias { 2 * n } else { n };
        let n = (self.window * self.window) as u64;
        let table = (2 * self.window as u64 - 1).pow(2);
        let res = self.resolutions();
        // The patch embed keeps all C channels (its LayerNorm spans them).
        let mut params = 3 * p2 * c + c + ln(c);
        let mut macs = (res[0] * res[0]) as u64 * c * 3 * p2;
        let mut peak = 0;
        for (stage, &depth) in depths.iter().enumerate() {
            let w = (width as u64) << stage;
            let heads = w / self.head_dim as u64;
            let t = (res[stage] * res[stage]) as u64;
            let padded = self.padded(res[stage]).pow(2) as u64;
            let hidden = MLP_RATIO as u64 * w;
            let block_params = 2 * ln(w)
                + 3 * w * w
                + if self.qkv_bias { 3 * w } else { 0 }
                + (w * w + w)
                + table * heads
                + (hidden * w + hidden)
                + (w * hidden + w);
            let block_macs =
                padded * w * 3 * w + 2 * padded * n * w + padded * w * w + 2 * t * w * hidden;
            params += depth as u64 * block_params;
            macs += depth as u64 * block_macs;
            let attention = padded * 3 * w + 2 * heads * padded * n + t * w;
            let mlp = 2 * t * hidden + 2 * t * w;
            peak = peak.max(attention).max(mlp);
            if stage + 1 < STAGES {
                let merged = (res[stage + 1] * res[stage + 1]) as u64;
                params += ln(4 * w) + 4 * w * 2 * w;
                macs += merged * 4 * w * 2 * w;
            }
        }
        params += ln((width as u64) << (STAGES - 1));
        let image = 3 * (self.image_size as u64).pow(2);
        Costs {
            params,
            macs,
            activation_bytes: 4 * (peak + image),
        }
    }

    /// A map side padded up to a multiple of the window.
    fn padded(&self, side: usize) -> usize {
        side.next_multiple_of(self.window as usize)
    }

    /// Every teacher tensor a width slice holds, in file order: every block
    /// of every stage, so every depth variant of a width can share one file.
    pub fn params(&self) -> impl Iterator<Item = Param> + '_ {
        let (ln_bias, qkv_bias) = (self.ln_bias, self.qkv_bias);
        let keep = move |p: &Param| {
            (ln_bias || !p.kind.is_ln_bias()) && (qkv_bias || p.kind != ParamKind::QkvBias)
        };
        let head = [
            ParamKind::PatchWeight,
            ParamKind::PatchBias,
            ParamKind::PatchNormWeight,
            ParamKind::PatchNormBias,
        ]
        .map(Param::top);
        let stages = (0..STAGES).flat_map(move |stage| {
            let blocks = (0..self.max_depths[stage])
                .flat_map(move |b| BLOCK_PARAMS.map(move |kind| Param::block(kind, stage, b)));
            let merge = (stage + 1 < STAGES)
                .then_some(MERGE_PARAMS.map(move |kind| Param::merge(kind, stage)))
                .into_iter()
                .flatten();
            blocks.chain(merge)
        });
        let tail = [ParamKind::FinalNormWeight, ParamKind::FinalNormBias].map(Param::top);
        head.into_iter().chain(stages).chain(tail).filter(keep)
    }

    /// The shape a teacher tensor must have.
    pub fn teacher_shape(&self, param: Param) -> Vec<usize> {
        let c = self.max_width as usize;
        let (cs, p) = (c << param.stage, self.patch_size as usize);
        let table = (2 * self.window as usize - 1).pow(2);
        use ParamKind::*;
        match param.kind {
            PatchWeight => vec![c, 3, p, p],
            PatchBias | PatchNormWeight | PatchNormBias => vec![c],
            BiasTable => vec![table, cs / self.head_dim as usize],
            QkvWeight => vec![3 * cs, cs],
            QkvBias => vec![3 * cs],
            ProjWeight => vec![cs, cs],
            Fc1Weight => vec![MLP_RATIO * cs, cs],
            Fc1Bias => vec![MLP_RATIO * cs],
            Fc2Weight => vec![cs, MLP_RATIO * cs],
            Norm1Weight | Norm1Bias | ProjBias | Norm2Weight | Norm2Bias | Fc2Bias => vec![cs],
            MergeNormWeight | MergeNormBias => vec![4 * cs],
            ReductionWeight => vec![2 * cs, 4 * cs],
            FinalNormWeight | FinalNormBias => vec![c << (STAGES - 1)],
        }
    }

    /// How `param` is cut for stage-1 width `w`: the rules of POA's elastic forward.
    // A cut is a list of ranges (qkv needs three, merging four); most lists hold one.
    #[allow(clippy::single_range_in_vec_init)]
    pub fn cut(&self, param: Param, w: u32) -> Cut {
        let stage = param.stage;
        let (c, p) = (self.max_width as usize, self.patch_size as usize);
        let (cs, ws) = (c << stage, (w as usize) << stage);
        // POA multiplies the input of every elastic Linear by a = C/w (the
        // same at every stage); it is folded into the weights.
        let a = (c as f64 / w as f64) as f32;
        let table = (2 * self.window as usize - 1).pow(2);
        let heads = ws / self.head_dim as usize;
        let hidden = MLP_RATIO * ws;
        // q, k, v rows and merged channels: ∪_k [k·C_s, k·C_s + w_s).
        let grouped = |groups: usize| (0..groups).map(|k| k * cs..k * cs + ws).collect::<Vec<_>>();
        use ParamKind::*;
        match param.kind {
            // The patch embed keeps every channel: its LayerNorm normalises
            // over all C, and the graph slices after it (POA's quirk).
            PatchWeight => Cut::matrix(
                3 * p * p,
                vec![0..c],
                vec![0..3 * p * p],
                1.0,
                vec![c, 3, p, p],
            ),
            PatchBias | PatchNormWeight | PatchNormBias => Cut::prefix(c),
            BiasTable => Cut::matrix(
                cs / self.head_dim as usize,
                vec![0..table],
                vec![0..heads],
                1.0,
                vec![table, heads],
            ),
            QkvWeight => Cut::matrix(cs, grouped(3), vec![0..ws], a, vec![3 * ws, ws]),
            QkvBias => Cut::matrix(3 * cs, vec![0..1], grouped(3), 1.0, vec![3 * ws]),
            ProjWeight => Cut::matrix(cs, vec![0..ws], vec![0..ws], a, vec![ws, ws]),
            Fc1Weight => Cut::matrix(cs, vec![0..hidden], vec![0..ws], a, vec![hidden, ws]),
            Fc1Bias => Cut::prefix(hidden),
            // fc2's input is 4w_s of 4C_s channels: the same a.
            Fc2Weight => Cut::matrix(
                MLP_RATIO * cs,
                vec![0..ws],
                vec![0..hidden],
                a,
                vec![ws, hidden],
            ),
            Norm1Weight | Norm1Bias | ProjBias | Norm2Weight | Norm2Bias | Fc2Bias => {
                Cut::prefix(ws)
            }
            MergeNormWeight | MergeNormBias => {
                Cut::matrix(4 * cs, vec![0..1], grouped(4), 1.0, vec![4 * ws])
            }
            // POA's ScaledDynamicLinear: a = 4·C_s / 4·w_s, no bias.
            ReductionWeight => {
                Cut::matrix(4 * cs, vec![0..2 * ws], grouped(4), a, vec![2 * ws, 4 * ws])
            }
            FinalNormWeight | FinalNormBias => Cut::prefix((w as usize) << (STAGES - 1)),
        }
    }
}

impl Family for Geometry {
    fn name(&self) -> &'static str {
        "swin"
    }

    fn summary(&self) -> String {
        format!(
            "Swin width {} depths {:?} head_dim {} window {} patch {} image {}",
            self.max_width,
            self.max_depths,
            self.head_dim,
            self.window,
            self.patch_size,
            self.image_size
        )
    }

    fn config(&self) -> TeacherConfig {
        TeacherConfig::Swin(SwinConfig {
            max_width: self.max_width,
            max_depths: PerStage::from_slice(&self.max_depths).expect("four stages fit"),
            head_dim: self.head_dim,
            window_size: self.window,
            patch_size: self.patch_size,
            image_size: self.image_size,
            mlp_ratio: MLP_RATIO as u32,
        })
    }

    /// Four stage depths, only stage 3's differing from the teacher's.
    fn check(&self, s: &SubnetSpec) -> Result<SubnetSpec, FamilyError> {
        super::refuse_sdr_id(s, "Swin")?;
        let depths = s.depths.as_slice();
        if depths.len() != STAGES {
            return Err(FamilyError::Stages {
                family: "Swin",
                expected: STAGES,
                found: depths.len(),
            });
        }
        super::check_head_width(s.width, self.max_width, self.head_dim)?;
        let bounds = self.max_depths.iter().enumerate().map(|(stage, &max)| {
            let min = if stage == ELASTIC_STAGE { 1 } else { max };
            (min, max)
        });
        super::check_stage_depths(depths, bounds)?;
        Ok(*s)
    }

    fn costs(&self, s: &SubnetSpec) -> Costs {
        self.swin_costs(s.width, self.stage_depths(s))
    }

    /// Kept teacher blocks are numbered across stages (stage 2's first is
    /// stage 1's depth).
    fn layout(&self, s: &SubnetSpec) -> Layout {
        let mut block_idx = Vec::new();
        let mut first = 0;
        for (&max, depth) in self.max_depths.iter().zip(self.stage_depths(s)) {
            block_idx.extend(linspace_blocks(max, depth).into_iter().map(|b| first + b));
            first += max as u16;
        }
        Layout {
            depths: Some(self.stage_depths(s).to_vec()),
            mid_widths: None,
            block_idx,
            route: None,
        }
    }

    fn full_depth(&self, width: u32) -> SubnetSpec {
        self.subnet(width, self.max_depths[ELASTIC_STAGE])
    }

    fn width_slice(&self, width: u32) -> Vec<TensorCut> {
        self.params()
            .map(|p| TensorCut {
                name: p.teacher_name(),
                cut: self.cut(p, width),
            })
            .collect()
    }

    fn graph(&self, s: &SubnetSpec, locate: &dyn Fn(&str) -> ExternalData) -> ModelProto {
        GraphWriter::new(self, s, locate).build()
    }
}

/// Which tensor of the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    PatchWeight,
    PatchBias,
    PatchNormWeight,
    PatchNormBias,
    Norm1Weight,
    Norm1Bias,
    BiasTable,
    QkvWeight,
    QkvBias,
    ProjWeight,
    ProjBias,
    Norm2Weight,
    Norm2Bias,
    Fc1Weight,
    Fc1Bias,
    Fc2Weight,
    Fc2Bias,
    MergeNormWeight,
    MergeNormBias,
    ReductionWeight,
    FinalNormWeight,
    FinalNormBias,
}

const BLOCK_PARAMS: [ParamKind; 13] = {
    use ParamKind::*;
    [
        Norm1Weight,
        Norm1Bias,
        BiasTable,
        QkvWeight,
        QkvBias,
        ProjWeight,
        ProjBias,
        Norm2Weight,
        Norm2Bias,
        Fc1Weight,
        Fc1Bias,
        Fc2Weight,
        Fc2Bias,
    ]
};

const MERGE_PARAMS: [ParamKind; 3] = [
    ParamKind::MergeNormWeight,
    ParamKind::MergeNormBias,
    ParamKind::ReductionWeight,
];

impl ParamKind {
    /// The canonical name (POA's without `backbone.`, `.linear`, `.norm`),
    /// after `stages.{s}.blocks.{i}.` / `stages.{s}.downsample.` where it has one.
    fn suffix(self) -> &'static str {
        use ParamKind::*;
        match self {
            PatchWeight => "patch_embed.proj.weight",
            PatchBias => "patch_embed.proj.bias",
            PatchNormWeight => "patch_embed.norm.weight",
            PatchNormBias => "patch_embed.norm.bias",
            Norm1Weight => "norm1.weight",
            Norm1Bias => "norm1.bias",
            BiasTable => "attn.w_msa.relative_position_bias_table",
            QkvWeight => "attn.w_msa.qkv.weight",
            QkvBias => "attn.w_msa.qkv.bias",
            ProjWeight => "attn.w_msa.proj.weight",
            ProjBias => "attn.w_msa.proj.bias",
            Norm2Weight => "norm2.weight",
            Norm2Bias => "norm2.bias",
            Fc1Weight => "ffn.fc1.weight",
            Fc1Bias => "ffn.fc1.bias",
            Fc2Weight => "ffn.fc2.weight",
            Fc2Bias => "ffn.fc2.bias",
            MergeNormWeight => "norm.weight",
            MergeNormBias => "norm.bias",
            ReductionWeight => "reduction.weight",
            FinalNormWeight => "norm3.weight",
            FinalNormBias => "norm3.bias",
        }
    }

    fn is_ln_bias(self) -> bool {
        use ParamKind::*;
        matches!(
            self,
            PatchNormBias | Norm1Bias | Norm2Bias | MergeNormBias | FinalNormBias
        )
    }
}

fn top_name(kind: ParamKind) -> String {
    Param::top(kind).teacher_name()
}

/// Where a teacher tensor lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Top,
    Block(u32),
    Merge,
}

/// One teacher tensor: a kind, and where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub kind: ParamKind,
    stage: usize,
    place: Place,
}

impl Param {
    fn top(kind: ParamKind) -> Param {
        Param {
            kind,
            stage: 0,
            place: Place::Top,
        }
    }

    fn block(kind: ParamKind, stage: usize, block: u32) -> Param {
        Param {
            kind,
            stage,
            place: Place::Block(block),
        }
    }

    fn merge(kind: ParamKind, stage: usize) -> Param {
        Param {
            kind,
            stage,
            place: Place::Merge,
        }
    }

    /// The tensor's canonical name in the teacher.
    pub fn teacher_name(&self) -> String {
        let (s, suffix) = (self.stage, self.kind.suffix());
        match self.place {
            Place::Top => suffix.to_owned(),
            Place::Block(b) => format!("stages.{s}.blocks.{b}.{suffix}"),
            Place::Merge => format!("stages.{s}.downsample.{suffix}"),
        }
    }
}

/// [W², W²] rows of the bias table for query p and key q of a window:
/// (Δrow + W - 1)·(2W - 1) + (Δcol + W - 1) with Δ = p - q.
fn relative_position_index(window: usize) -> Vec<i64> {
    let n = window * window;
    let span = 2 * window as i64 - 1;
    let at = |t: usize| ((t / window) as i64, (t % window) as i64);
    (0..n * n)
        .map(|pq| {
            let ((pr, pc), (qr, qc)) = (at(pq / n), at(pq % n));
            (pr - qr + window as i64 - 1) * span + (pc - qc + window as i64 - 1)
        })
        .collect()
}

/// The shifted-window region of every token of a padded `side`² map, in
/// window order ([window][token], both row-major): tokens of different
/// regions may not attend to each other. Per axis, the rolled map has bands
/// [0, side-W), [side-W, side-shift) and [side-shift, side).
fn shift_regions(side: usize, window: usize, shift: usize) -> Vec<i64> {
    let band = |i: usize| (i >= side - window) as i64 + (i >= side - shift) as i64;
    let per_side = side / window;
    let mut out = Vec::with_capacity(side * side);
    for wr in 0..per_side {
        for wc in 0..per_side {
            for t in 0..window * window {
                let (r, c) = (wr * window + t / window, wc * window + t % window);
                out.push(3 * band(r) + band(c));
            }
        }
    }
    out
}

/// Emits the ONNX graph of one sub-network.
struct GraphWriter<'a> {
    g: &'a Geometry,
    width: u32,
    depths: [u32; STAGES],
    id: String,
    locate: &'a dyn Fn(&str) -> ExternalData,
    b: GraphBuilder,
}

impl<'a> GraphWriter<'a> {
    fn new(g: &'a Geometry, s: &SubnetSpec, locate: &'a dyn Fn(&str) -> ExternalData) -> Self {
        GraphWriter {
            g,
            width: s.width,
            depths: g.stage_depths(s),
            id: s.id(),
            locate,
            b: GraphBuilder::new(&s.id()),
        }
    }

    /// The sliced teacher tensor `param`, named `name` in the graph.
    fn weight(&mut self, name: &str, param: Param) -> Value {
        let cut = self.g.cut(param, self.width);
        let data = (self.locate)(&param.teacher_name());
        self.b.external(name, cut.shape(), data)
    }

    fn layer_norm(&mut self, name: &str, x: &Value, weight: Param, bias: Param) -> Value {
        let scale = self.weight(&format!("{name}.weight"), weight);
        let bias = self
            .g
            .ln_bias
            .then(|| self.weight(&format!("{name}.bias"), bias));
        self.b.layer_norm(name, x, &scale, bias.as_ref(), LN_EPS)
    }

    /// The Linear `name` of teacher tensors `weight` and `bias`.
    fn linear(&mut self, name: &str, weight: Param, bias: Option<Param>) -> Linear {
        Linear {
            weight: self.weight(&format!("{name}.weight"), weight),
            bias: bias.map(|b| self.weight(&format!("{name}.bias"), b)),
        }
    }

    fn reshape(&mut self, name: &str, x: &Value, shape: &[i64]) -> Value {
        let dims = self
            .b
            .const_i64(&format!("{name}.shape"), &[shape.len()], shape);
        self.b.node("Reshape", name, &[x, &dims], &[])
    }

    fn transpose(&mut self, name: &str, x: &Value, perm: &[i64]) -> Value {
        self.b.node(
            "Transpose",
            name,
            &[x],
            &[("perm", Attr::Ints(perm.to_vec()))],
        )
    }

    fn slice(
        &mut self,
        name: &str,
        x: &Value,
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
    ) -> Value {
        let n = axes.len();
        let starts = self.b.const_i64(&format!("{name}.starts"), &[n], starts);
        let ends = self.b.const_i64(&format!("{name}.ends"), &[n], ends);
        let axes = self.b.const_i64(&format!("{name}.axes"), &[n], axes);
        self.b.node("Slice", name, &[x, &starts, &ends, &axes], &[])
    }

    /// Zero-pads a [B, side, side, C] map at the bottom and right to `padded`.
    fn pad(&mut self, name: &str, x: &Value, side: usize, padded: usize) -> Value {
        let extra = (padded - side) as i64;
        let pads = self.b.const_i64(
            &format!("{name}.pads"),
            &[8],
            &[0, 0, 0, 0, 0, extra, extra, 0],
        );
        self.b.node("Pad", name, &[x, &pads], &[])
    }

    /// torch.roll of a [B, side, side, C] map by `shift` along rows and columns
    /// (towards the end; `side - k` rolls back by k).
    fn roll(&mut self, name: &str, x: &Value, side: usize, shift: usize) -> Value {
        let (side, cut) = (side as i64, (side - shift) as i64);
        let mut x = x.clone();
        for axis in [1, 2] {
            let n = format!("{name}.{axis}");
            let tail = self.slice(&format!("{n}.tail"), &x, &[cut], &[side], &[axis]);
            let head = self.slice(&format!("{n}.head"), &x, &[0], &[cut], &[axis]);
            x = self
                .b
                .node("Concat", &n, &[&tail, &head], &[("axis", Attr::Int(axis))]);
        }
        x
    }

    /// [B, side, side, C] -> [B·windows·W², C], window by window.
    fn partition(&mut self, name: &str, x: &Value, side: usize, c: usize) -> Value {
        let (win, per) = (self.g.window as i64, (side / self.g.window as usize) as i64);
        let x = self.reshape(
            &format!("{name}.grid"),
            x,
            &[-1, per, win, per, win, c as i64],
        );
        let x = self.transpose(&format!("{name}.order"), &x, &[0, 1, 3, 2, 4, 5]);
        self.reshape(name, &x, &[-1, c as i64])
    }

    /// The inverse of [`Self::partition`]: [B·windows·W², C] -> [B, side, side, C].
    fn unpartition(&mut self, name: &str, x: &Value, side: usize, c: usize) -> Value {
        let (win, per) = (self.g.window as i64, (side / self.g.window as usize) as i64);
        let x = self.reshape(
            &format!("{name}.grid"),
            x,
            &[-1, per, per, win, win, c as i64],
        );
        let x = self.transpose(&format!("{name}.order"), &x, &[0, 1, 3, 2, 4, 5]);
        self.reshape(name, &x, &[-1, side as i64, side as i64, c as i64])
    }

    /// [windows, 1, W², W²]: 0 within a shifted-window region, -100 across regions.
    fn shift_mask(&mut self, name: &str, side: usize, shift: usize) -> Value {
        let win = self.g.window as usize;
        let (windows, n) = ((side / win).pow(2), win * win);
        let regions = shift_regions(side, win, shift);
        let queries = self
            .b
            .const_i64(&format!("{name}.queries"), &[windows, 1, n, 1], &regions);
        let keys = self
            .b
            .const_i64(&format!("{name}.keys"), &[windows, 1, 1, n], &regions);
        let same = self
            .b
            .node("Equal", &format!("{name}.same"), &[&queries, &keys], &[]);
        let zero = self.b.const_f32(&format!("{name}.zero"), &[], &[0.0]);
        let masked = self.b.const_f32(&format!("{name}.masked"), &[], &[MASK]);
        self.b.node("Where", name, &[&same, &zero, &masked], &[])
    }

    /// One (shifted) window attention of teacher block `block` in `stage`,
    /// on the normed token matrix `x` of a `side`² map.
    fn attention(&mut self, n: &str, x: &Value, stage: usize, block: u32, side: usize) -> Value {
        let ws = (self.width as usize) << stage;
        let (hd, win) = (self.g.head_dim as usize, self.g.window as usize);
        let heads = ws / hd;
        let tokens = win * win;
        let padded = self.g.padded(side);
        // POA shifts odd TEACHER blocks, whatever their place in the sub-network,
        // and also a map that fits in one window.
        let shift = if block % 2 == 1 { win / 2 } else { 0 };
        let at = |kind| Param::block(kind, stage, block);
        use ParamKind::*;

        let mut h = self.reshape(
            &format!("{n}.map"),
            x,
            &[-1, side as i64, side as i64, ws as i64],
        );
        if padded > side {
            h = self.pad(&format!("{n}.pad"), &h, side, padded);
        }
        if shift > 0 {
            h = self.roll(&format!("{n}.shift"), &h, padded, padded - shift);
        }
        let h = self.partition(&format!("{n}.windows"), &h, padded, ws);
        let bias = self.g.qkv_bias.then(|| at(QkvBias));
        let qkv = self.linear(&format!("{n}.qkv"), at(QkvWeight), bias);
        let qkv = self.b.linear(&format!("{n}.qkv"), &h, &qkv);
        let qkv = self.reshape(
            &format!("{n}.qkv.heads"),
            &qkv,
            &[-1, tokens as i64, 3, heads as i64, hd as i64],
        );
        let qkv = self.transpose(&format!("{n}.qkv.split"), &qkv, &[2, 0, 3, 1, 4]);
        let [q, k, v] = [0, 1, 2].map(|i| {
            let index = self.b.const_i64(&format!("{n}.index.{i}"), &[], &[i]);
            let part = ["q", "k", "v"][i as usize];
            self.b.node(
                "Gather",
                &format!("{n}.{part}"),
                &[&qkv, &index],
                &[("axis", Attr::Int(0))],
            )
        });
        let kt = self.transpose(&format!("{n}.k.t"), &k, &[0, 1, 3, 2]);
        let scores = self
            .b
            .node("MatMul", &format!("{n}.scores"), &[&q, &kt], &[]);
        let scale = self
            .b
            .const_f32(&format!("{n}.scale"), &[], &[(hd as f32).powf(-0.5)]);
        let scores = self
            .b
            .node("Mul", &format!("{n}.scaled"), &[&scores, &scale], &[]);
        // Relative position bias: table rows gathered per (query, key), heads first.
        let table = self.weight(&format!("{n}.relative_position_bias_table"), at(BiasTable));
        let index = self.b.const_i64(
            &format!("{n}.relative_position_index"),
            &[tokens, tokens],
            &relative_position_index(win),
        );
        let bias = self.b.node(
            "Gather",
            &format!("{n}.relative_position_bias"),
            &[&table, &index],
            &[("axis", Attr::Int(0))],
        );
        let bias = self.transpose(
            &format!("{n}.relative_position_bias.heads"),
            &bias,
            &[2, 0, 1],
        );
        let mut scores = self
            .b
            .node("Add", &format!("{n}.biased"), &[&scores, &bias], &[]);
        if shift > 0 {
            let windows = (padded / win).pow(2) as i64;
            let mask = self.shift_mask(&format!("{n}.mask"), padded, shift);
            let grouped = self.reshape(
                &format!("{n}.scores.windows"),
                &scores,
                &[-1, windows, heads as i64, tokens as i64, tokens as i64],
            );
            let masked = self
                .b
                .node("Add", &format!("{n}.masked"), &[&grouped, &mask], &[]);
            scores = self.reshape(
                &format!("{n}.scores.heads"),
                &masked,
                &[-1, heads as i64, tokens as i64, tokens as i64],
            );
        }
        let probs = self.b.node(
            "Softmax",
            &format!("{n}.softmax"),
            &[&scores],
            &[("axis", Attr::Int(-1))],
        );
        let ctx = self
            .b
            .node("MatMul", &format!("{n}.context"), &[&probs, &v], &[]);
        let ctx = self.transpose(&format!("{n}.context.merge"), &ctx, &[0, 2, 1, 3]);
        let ctx = self.reshape(&format!("{n}.context.rows"), &ctx, &[-1, ws as i64]);
        let proj = self.linear(&format!("{n}.proj"), at(ProjWeight), Some(at(ProjBias)));
        let out = self.b.linear(&format!("{n}.proj"), &ctx, &proj);
        let mut out = self.unpartition(&format!("{n}.unwindows"), &out, padded, ws);
        if shift > 0 {
            out = self.roll(&format!("{n}.unshift"), &out, padded, shift);
        }
        if padded > side {
            out = self.slice(
                &format!("{n}.crop"),
                &out,
                &[0, 0],
                &[side as i64, side as i64],
                &[1, 2],
            );
        }
        self.reshape(&format!("{n}.rows"), &out, &[-1, ws as i64])
    }

    /// Patch merging after `stage`: 2x2 neighbours (odd maps padded) in
    /// nn.Unfold's order, channels [k][c], LayerNorm, reduction to 2·w_s.
    fn merge(&mut self, x: &Value, stage: usize, side: usize) -> Value {
        let n = format!("stages.{stage}.downsample");
        let ws = (self.width as i64) << stage;
        let half = side.div_ceil(2) as i64;
        let mut h = self.reshape(&format!("{n}.map"), x, &[-1, side as i64, side as i64, ws]);
        if side % 2 == 1 {
            h = self.pad(&format!("{n}.pad"), &h, side, side + 1);
        }
        let h = self.reshape(&format!("{n}.grid"), &h, &[-1, half, 2, half, 2, ws]);
        let h = self.transpose(&format!("{n}.order"), &h, &[0, 1, 3, 2, 4, 5]);
        let h = self.reshape(&format!("{n}.unfold"), &h, &[-1, 4 * ws]);
        let at = |kind| Param::merge(kind, stage);
        let h = self.layer_norm(
            &format!("{n}.norm"),
            &h,
            at(ParamKind::MergeNormWeight),
            at(ParamKind::MergeNormBias),
        );
        let reduction = self.linear(
            &format!("{n}.reduction"),
            at(ParamKind::ReductionWeight),
            None,
        );
        self.b.linear(&format!("{n}.reduction"), &h, &reduction)
    }

    fn build(mut self) -> ModelProto {
        let g = self.g;
        let (c, w) = (g.max_width as usize, self.width as usize);
        let (p, image) = (g.patch_size as usize, g.image_size as usize);
        let res = g.resolutions();
        let pixels = self.b.input(
            PIXEL_VALUES,
            &[
                Dim::Named("batch"),
                Dim::Fixed(3),
                Dim::Fixed(image),
                Dim::Fixed(image),
            ],
        );

        // Patch embedding with all C channels, LayerNorm over all of them,
        // then the first w: [B,3,H,W] -> [B·hw, w].
        use ParamKind::*;
        let pw = self.weight("patch_embed.proj.weight", Param::top(PatchWeight));
        let pb = self.weight("patch_embed.proj.bias", Param::top(PatchBias));
        let conv = self.b.node(
            "Conv",
            "patch_embed.proj",
            &[&pixels, &pw, &pb],
            &[
                ("kernel_shape", Attr::Ints(vec![p as i64; 2])),
                ("strides", Attr::Ints(vec![p as i64; 2])),
            ],
        );
        let flat = self.reshape("patch_embed.flatten", &conv, &[0, c as i64, -1]);
        let tokens = self.transpose("patch_embed.transpose", &flat, &[0, 2, 1]);
        let tokens = self.layer_norm(
            "patch_embed.norm",
            &tokens,
            Param::top(PatchNormWeight),
            Param::top(PatchNormBias),
        );
        let tokens = self.slice("patch_embed.width", &tokens, &[0], &[w as i64], &[2]);
        let mut x = self.reshape("patch_embed.rows", &tokens, &[-1, w as i64]);
        // Only the GELU constants of these serve Swin's MLPs: its attention is windowed.
        let (win, hd) = (g.window as usize, g.head_dim as usize);
        let rows = self.b.const_i64("shape.rows", &[2], &[-1, w as i64]);
        let consts = BlockConsts::new(&mut self.b, win * win, w / hd, hd, &rows);

        for (stage, depth) in self.depths.into_iter().enumerate() {
            let side = res[stage];
            for (j, teacher_block) in linspace_blocks(g.max_depths[stage], depth)
                .into_iter()
                .enumerate()
            {
                let teacher_block = u32::from(teacher_block);
                let n = format!("stages.{stage}.blocks.{j}");
                let at = |kind| Param::block(kind, stage, teacher_block);
                let h = self.layer_norm(&format!("{n}.norm1"), &x, at(Norm1Weight), at(Norm1Bias));
                let h = self.attention(&format!("{n}.attn"), &h, stage, teacher_block, side);
                x = self
                    .b
                    .node("Add", &format!("{n}.residual1"), &[&x, &h], &[]);
                let h = self.layer_norm(&format!("{n}.norm2"), &x, at(Norm2Weight), at(Norm2Bias));
                let fc1 = self.linear(&format!("{n}.ffn.fc1"), at(Fc1Weight), Some(at(Fc1Bias)));
                let fc2 = self.linear(&format!("{n}.ffn.fc2"), at(Fc2Weight), Some(at(Fc2Bias)));
                let h = self.b.mlp(&format!("{n}.ffn"), &h, &fc1, &fc2, &consts);
                x = self
                    .b
                    .node("Add", &format!("{n}.residual2"), &[&x, &h], &[]);
            }
            if stage + 1 < STAGES {
                x = self.merge(&x, stage, side);
            }
        }

        // norm3 over the stage-4 tokens; POA's x_norm_clstoken is their mean.
        let out = w << (STAGES - 1);
        let tokens = res[STAGES - 1].pow(2);
        let x = self.layer_norm(
            "norm3",
            &x,
            Param::top(FinalNormWeight),
            Param::top(FinalNormBias),
        );
        let patches = self.reshape(PATCH_TOKENS, &x, &[-1, tokens as i64, out as i64]);
        let cls = self.b.node(
            "ReduceMean",
            CLS_TOKEN,
            &[&patches],
            &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))],
        );
        self.b.output(&cls, &[Dim::Named("batch"), Dim::Fixed(out)]);
        self.b.output(
            &patches,
            &[Dim::Named("batch"), Dim::Fixed(tokens), Dim::Fixed(out)],
        );
        let doc = format!(
            "POA elastic Swin sub-network {}: width {} of {}, depths {:?} of {:?}",
            self.id, self.width, g.max_width, self.depths, g.max_depths
        );
        self.b.finish(&doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn poa_swin() -> Geometry {
        Geometry {
            max_width: 128,
            max_depths: [2, 2, 18, 2],
            head_dim: 16,
            window: 7,
            patch_size: 4,
            image_size: 224,
            ln_bias: true,
            qkv_bias: true,
        }
    }

    #[test]
    fn swin_t_and_swin_b_costs_match_the_known_sizes() {
        // Swin-T: 28.3M parameters with its 0.77M classifier, 4.5 GMACs at 224².
        let tiny = Geometry {
            max_width: 96,
            max_depths: [2, 2, 6, 2],
            head_dim: 32,
            ..poa_swin()
        };
        let t = tiny.costs(&tiny.subnet(96, 6));
        assert!((27_000_000..28_000_000).contains(&t.params), "{}", t.params);
        assert!(
            (4_300_000_000..4_700_000_000).contains(&t.macs),
            "{}",
            t.macs
        );
        // Swin-B: 87.8M with its 1.03M classifier, 15.4 GMACs (POA's largest).
        let g = poa_swin();
        let b = g.costs(&g.subnet(128, 18));
        assert!((86_000_000..88_000_000).contains(&b.params), "{}", b.params);
        assert!(
            (15_000_000_000..15_800_000_000).contains(&b.macs),
            "{}",
            b.macs
        );
        let small = g.costs(&g.subnet(96, 6));
        assert!(small.params < t.params + 1_000_000 && small.macs < b.macs / 3);
    }

    #[test]
    fn only_stage_three_is_elastic() {
        let g = poa_swin();
        assert_eq!(g.subnet(96, 6).id(), "w96-d2.2.6.2");
        assert_eq!(g.check(&g.subnet(112, 18)), Ok(g.subnet(112, 18)));
        let depths = |d: [u32; 4]| SubnetSpec {
            width: 96,
            depths: Depths::new(&d).unwrap(),
            path: None,
        };
        let stage = |stage, depth, min, max| {
            Err(FamilyError::StageDepth {
                stage,
                depth,
                min,
                max,
            })
        };
        assert_eq!(g.check(&depths([2, 2, 19, 2])), stage(3, 19, 1, 18));
        assert_eq!(g.check(&depths([2, 1, 6, 2])), stage(2, 1, 2, 2));
        assert_eq!(g.check(&depths([2, 2, 6, 3])), stage(4, 3, 2, 2));
        assert_eq!(
            g.check(&SubnetSpec::single(96, 6)),
            Err(FamilyError::Stages {
                family: "Swin",
                expected: 4,
                found: 1
            })
        );
        assert_eq!(
            g.check(&g.subnet(100, 6)),
            Err(FamilyError::WidthNotMultiple {
                width: 100,
                head_dim: 16
            })
        );
        assert_eq!(
            g.check(&g.subnet(144, 6)),
            Err(FamilyError::WidthRange {
                width: 144,
                max: 128
            })
        );
    }

    fn poa_facts() -> TensorFacts {
        TensorFacts {
            max_width: 128,
            max_depths: [2, 2, 18, 2],
            patch_size: 4,
            head_dim: 16,
            window: 7,
            ln_bias: true,
            qkv_bias: true,
        }
    }

    const POA_CONFIG: &str = "student:\n  arch: swin_dynamic\n  min_embed_dim: 96\n  \
        max_embed_dim: 128\n  min_s3_depth: 6\n  max_depths: [2, 2, 18, 2]\n  head_dim: 16\n  \
        mode: order\n  patch_size: 4\n  window_size: 7\n  qkv_bias: true\n\
        crops:\n  global_crops_size: 224\n";

    fn with_config(text: &str) -> Result<Grid, ConfigError> {
        let config = PoaConfig::parse(Path::new("cfg.yaml"), text).unwrap();
        resolve(&poa_facts(), Some(&config), &Overrides::default())
    }

    #[test]
    fn poa_config_gives_the_39_grid() {
        let grid = with_config(POA_CONFIG).unwrap();
        assert_eq!(grid.widths, [96, 112, 128]);
        assert_eq!(grid.s3_depths, (6..=18).collect::<Vec<_>>());
        assert_eq!(grid.subnets().len(), 39);
        assert_eq!(grid.subnets()[0].id(), "w96-d2.2.6.2");
        assert!(grid.assumptions.is_empty());
    }

    #[test]
    fn config_contradictions_name_the_key_and_both_values() {
        for (from, to, want) in [
            (
                "window_size: 7",
                "window_size: 12",
                "student.window_size = 12, the tensors say 7",
            ),
            (
                "[2, 2, 18, 2]",
                "[2, 2, 6, 2]",
                "student.max_depths = [2, 2, 6, 2], the tensors hold [2, 2, 18, 2]",
            ),
        ] {
            let msg = with_config(&POA_CONFIG.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("cfg.yaml") && msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn without_config_assumptions_are_stated() {
        let grid = resolve(&poa_facts(), None, &Overrides::default()).unwrap();
        assert_eq!(grid.widths, [96, 112, 128]);
        assert_eq!(grid.s3_depths, (6..=18).collect::<Vec<_>>());
        assert_eq!(grid.geometry.image_size, 224);
        assert_eq!(grid.assumptions.len(), 3, "{:?}", grid.assumptions);
    }

    #[test]
    fn kept_blocks_are_numbered_across_stages() {
        let g = poa_swin();
        let layout = g.layout(&g.subnet(96, 6));
        assert_eq!(layout.depths, Some(vec![2, 2, 6, 2]));
        // Stage 3 keeps linspace(0, 17, 6) = [0, 3, 6, 10, 13, 17], after 4 blocks.
        assert_eq!(layout.block_idx, [0, 1, 2, 3, 4, 7, 10, 14, 17, 21, 22, 23]);
    }

    #[test]
    fn bias_index_and_shift_regions_follow_swin() {
        // 2x2 window: query (0,0) vs key (1,1) is Δ = (-1,-1), the table's first row.
        let index = relative_position_index(2);
        assert_eq!((index[0], index[3], index[3 * 4], index[5]), (4, 0, 8, 4));
        // A 6² map in windows of 3 shifted by 1: bands [0,3), [3,5), [5,6).
        let regions = shift_regions(6, 3, 1);
        assert_eq!(&regions[..9], &[0; 9]);
        assert_eq!(&regions[27..], &[4, 4, 5, 4, 4, 5, 7, 7, 8]);
    }

    #[test]
    fn cuts_take_grouped_rows_and_merged_channels() {
        let g = poa_swin();
        let runs = |param, w| g.cut(param, w).runs().collect::<Vec<_>>();
        // Stage 2 (C_s = 256, w_s = 192): q, k and v rows of the first 192 columns.
        let qkv = runs(Param::block(ParamKind::QkvBias, 1, 0), 96);
        assert_eq!(qkv, [0..192, 256..448, 512..704]);
        // Merge after stage 1 (C_s = 128, w_s = 96): ∪_k [128k, 128k + 96).
        let merge = runs(Param::merge(ParamKind::MergeNormWeight, 0), 96);
        assert_eq!(merge, [0..96, 128..224, 256..352, 384..480]);
        let reduction = g.cut(Param::merge(ParamKind::ReductionWeight, 0), 96);
        assert_eq!(reduction.shape(), [192, 384]);
        assert_eq!(reduction.scale(), 128.0 / 96.0);
        // Stage 4 bias table: 48 of the teacher's 1024/16 = 64 head columns.
        let table = g.cut(Param::block(ParamKind::BiasTable, 3, 1), 96);
        assert_eq!(table.shape(), [169, 48]);
        assert_eq!(table.runs().nth(1), Some(64..112));
        // The patch embed keeps all 128 channels.
        let patch = g.cut(Param::top(ParamKind::PatchWeight), 96);
        assert_eq!(patch.shape(), [128, 3, 4, 4]);
    }
}
