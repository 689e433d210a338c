//! POA's elastic Swin (mmseg-style Swin backbone): every slicing rule, the
//! cost model and the ONNX graph of a sub-network, following POA's own
//! dynamic forward exactly (see docs/exporter.md, "Swin").

mod graph;
mod grid;
#[cfg(test)]
mod tests;

use onnx_protobuf::ModelProto;
use tailor_runtime::manifest::{PerStage, SwinConfig, TeacherConfig};

use super::slice::{Cut, TensorCut};
use super::{
    check_heads_and_patches, linspace_blocks, Costs, Depths, Family, FamilyError, Layout,
    SubnetSpec,
};
use crate::onnx::ExternalData;
use graph::GraphWriter;
pub use grid::{is_swin, open, tensor_facts, TensorFacts};

/// Stages of a Swin; each after the first halves the map and doubles the width.
pub const STAGES: usize = 4;
/// The one stage whose depth is elastic (POA's stage 3).
const ELASTIC_STAGE: usize = 2;
/// MLP hidden width as a multiple of the stage width.
const MLP_RATIO: usize = 4;
/// LayerNorm epsilon of POA's Swin (`DynamicLayerNorm`'s default).
const LN_EPS: f32 = 1e-5;

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
