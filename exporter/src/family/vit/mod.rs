//! POA's elastic ViT (DINOv2-style backbone): every slicing rule, the cost
//! model and the ONNX graph of a sub-network. The rules follow POA's own
//! dynamic forward exactly (see docs/exporter.md, "The slicing").

mod graph;
mod grid;

use onnx_protobuf::ModelProto;
use tailor_runtime::manifest::{TeacherConfig, VitConfig};

use super::slice::{Cut, TensorCut};
use super::{
    check_heads_and_patches, linspace_blocks, Costs, Family, FamilyError, Layout, SubnetSpec,
};
use crate::onnx::ExternalData;
use graph::GraphWriter;
pub use grid::{open, tensor_facts, TensorFacts};

/// MLP hidden width as a multiple of the width (POA/DINOv2 ViTs).
pub const MLP_RATIO: u32 = 4;
/// LayerNorm epsilon of POA's ViTs.
const LN_EPS: f32 = 1e-6;

/// The shape of a ViT teacher that every sub-network shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Full width D.
    pub max_width: u32,
    /// Full depth Lmax.
    pub max_depth: u32,
    /// Channels per head; every width is a multiple of it.
    pub head_dim: u32,
    pub patch_size: u32,
    pub image_size: u32,
    /// Whether the LayerNorms carry a bias (some checkpoints drop it).
    pub ln_bias: bool,
}

impl Geometry {
    /// Patches per image, N.
    pub fn patches(&self) -> usize {
        let side = (self.image_size / self.patch_size) as usize;
        side * side
    }

    /// Tokens per image, CLS included.
    pub fn tokens(&self) -> usize {
        1 + self.patches()
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

    /// Parameters, MACs and the activation-memory estimate of a
    /// sub-network of width `width` and depth `depth`.
    ///
    /// The activation estimate is the larger of the two peaks of a block at
    /// batch 1: attention (qkv, two score maps, the residual) and the MLP
    /// (two hidden maps and two residual-width maps), plus the input image.
    fn vit_costs(&self, width: u32, depth: u32) -> Costs {
        let (w, l, t, n) = (
            width as u64,
            depth as u64,
            self.tokens() as u64,
            self.patches() as u64,
        );
        let p2 = (self.patch_size * self.patch_size) as u64;
        let hidden = MLP_RATIO as u64 * w;
        let heads = w / self.head_dim as u64;
        let ln = if self.ln_bias { 2 * w } else { w };
        let block_params = 2 * ln
            + (3 * w * w + 3 * w)
            + (w * w + w)
            + 2 * w
            + (hidden * w + hidden)
            + (w * hidden + w);
        let params = (3 * p2 * w + w) + w + t * w + l * block_params + ln;
        let block_macs = t * w * 3 * w
            + 2 * heads * t * t * self.head_dim as u64
            + t * w * w
            + 2 * t * w * hidden;
        let macs = n * w * 3 * p2 + l * block_macs;
        let attention = t * 3 * w + 2 * heads * t * t + t * w;
        let mlp = 2 * t * hidden + 2 * t * w;
        let image = 3 * (self.image_size as u64).pow(2);
        Costs {
            params,
            macs,
            activation_bytes: 4 * (attention.max(mlp) + image),
        }
    }

    /// Every teacher tensor a width slice holds, in file order: the whole
    /// depth, so every depth variant of a width can share one file.
    pub fn params(&self) -> impl Iterator<Item = Param> + '_ {
        let top = |kind| Param { kind, block: None };
        let head = [
            ParamKind::PatchWeight,
            ParamKind::PatchBias,
            ParamKind::ClsToken,
            ParamKind::PosEmbed,
        ];
        let blocks = (0..self.max_depth).flat_map(move |b| {
            BLOCK_PARAMS
                .iter()
                .filter(move |k| self.ln_bias || !k.is_ln_bias())
                .map(move |&kind| Param {
                    kind,
                    block: Some(b),
                })
        });
        let tail = [ParamKind::NormWeight, ParamKind::NormBias]
            .into_iter()
            .filter(move |k| self.ln_bias || !k.is_ln_bias());
        head.into_iter().map(top).chain(blocks).chain(tail.map(top))
    }

    /// The shape a teacher tensor must have.
    pub fn teacher_shape(&self, kind: ParamKind, tokens: usize) -> Vec<usize> {
        let (d, p) = (self.max_width as usize, self.patch_size as usize);
        let hidden = MLP_RATIO as usize * d;
        use ParamKind::*;
        match kind {
            PatchWeight => vec![d, 3, p, p],
            ClsToken => vec![1, 1, d],
            PosEmbed => vec![1, tokens, d],
            QkvWeight => vec![3 * d, d],
            QkvBias => vec![3 * d],
            ProjWeight => vec![d, d],
            Fc1Weight => vec![hidden, d],
            Fc1Bias => vec![hidden],
            Fc2Weight => vec![d, hidden],
            PatchBias | Norm1Weight | Norm1Bias | Norm2Weight | Norm2Bias | ProjBias | Ls1
            | Ls2 | Fc2Bias | NormWeight | NormBias => vec![d],
        }
    }

    /// How `kind` is cut for width `w`: the rules of POA's elastic forward.
    // A cut is a list of ranges (qkv needs three); most lists hold one.
    #[allow(clippy::single_range_in_vec_init)]
    pub(crate) fn cut(&self, kind: ParamKind, w: u32) -> Cut {
        let (d, w) = (self.max_width as usize, w as usize);
        let (p, t, hidden) = (self.patch_size as usize, self.tokens(), MLP_RATIO as usize);
        // POA multiplies the input of every elastic Linear by a = D/w; it is
        // folded into the weights (exact up to fp32 rounding).
        let a = (d as f64 / w as f64) as f32;
        let qkv_rows = vec![0..w, d..d + w, 2 * d..2 * d + w];
        use ParamKind::*;
        match kind {
            // Patch embed: output channels only, not scaled.
            PatchWeight => Cut::matrix(
                3 * p * p,
                vec![0..w],
                vec![0..3 * p * p],
                1.0,
                vec![w, 3, p, p],
            ),
            ClsToken => Cut::matrix(d, vec![0..1], vec![0..w], 1.0, vec![1, 1, w]),
            PosEmbed => Cut::matrix(d, vec![0..t], vec![0..w], 1.0, vec![1, t, w]),
            QkvWeight => Cut::matrix(d, qkv_rows, vec![0..w], a, vec![3 * w, w]),
            QkvBias => Cut::matrix(3 * d, vec![0..1], qkv_rows, 1.0, vec![3 * w]),
            ProjWeight => Cut::matrix(d, vec![0..w], vec![0..w], a, vec![w, w]),
            Fc1Weight => Cut::matrix(d, vec![0..hidden * w], vec![0..w], a, vec![hidden * w, w]),
            Fc1Bias => Cut::prefix(hidden * w),
            // fc2's input is 4w of 4D channels: the same a.
            Fc2Weight => Cut::matrix(
                hidden * d,
                vec![0..w],
                vec![0..hidden * w],
                a,
                vec![w, hidden * w],
            ),
            // LayerNorms, LayerScale and biases: the first w channels, unscaled.
            PatchBias | Norm1Weight | Norm1Bias | Norm2Weight | Norm2Bias | ProjBias | Ls1
            | Ls2 | Fc2Bias | NormWeight | NormBias => Cut::prefix(w),
        }
    }
}

impl Family for Geometry {
    fn name(&self) -> &'static str {
        "vit"
    }

    fn summary(&self) -> String {
        format!(
            "ViT width {} depth {} head_dim {} patch {} image {}",
            self.max_width, self.max_depth, self.head_dim, self.patch_size, self.image_size
        )
    }

    fn config(&self) -> TeacherConfig {
        TeacherConfig::Vit(VitConfig {
            max_width: self.max_width,
            max_depth: self.max_depth,
            head_dim: self.head_dim,
            patch_size: self.patch_size,
            image_size: self.image_size,
            mlp_ratio: MLP_RATIO,
        })
    }

    fn check(&self, s: &SubnetSpec) -> Result<SubnetSpec, FamilyError> {
        super::refuse_sdr_id(s, "ViT")?;
        let &[depth] = s.depths.as_slice() else {
            return Err(FamilyError::Stages {
                family: "ViT",
                expected: 1,
                found: s.depths.as_slice().len(),
            });
        };
        super::check_head_width(s.width, self.max_width, self.head_dim)?;
        if depth == 0 || depth > self.max_depth {
            return Err(FamilyError::DepthRange {
                depth,
                max: self.max_depth,
            });
        }
        Ok(*s)
    }

    fn costs(&self, s: &SubnetSpec) -> Costs {
        self.vit_costs(s.width, s.depths.total())
    }

    fn layout(&self, s: &SubnetSpec) -> Layout {
        Layout {
            depths: None,
            mid_widths: None,
            block_idx: linspace_blocks(self.max_depth, s.depths.total()),
            route: None,
        }
    }

    fn full_depth(&self, width: u32) -> SubnetSpec {
        SubnetSpec::single(width, self.max_depth)
    }

    fn width_slice(&self, width: u32) -> Vec<TensorCut> {
        self.params()
            .map(|p| TensorCut {
                name: p.teacher_name(),
                cut: self.cut(p.kind, width),
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
    ClsToken,
    PosEmbed,
    Norm1Weight,
    Norm1Bias,
    QkvWeight,
    QkvBias,
    ProjWeight,
    ProjBias,
    Ls1,
    Norm2Weight,
    Norm2Bias,
    Fc1Weight,
    Fc1Bias,
    Fc2Weight,
    Fc2Bias,
    Ls2,
    NormWeight,
    NormBias,
}

const BLOCK_PARAMS: [ParamKind; 14] = {
    use ParamKind::*;
    [
        Norm1Weight,
        Norm1Bias,
        QkvWeight,
        QkvBias,
        ProjWeight,
        ProjBias,
        Ls1,
        Norm2Weight,
        Norm2Bias,
        Fc1Weight,
        Fc1Bias,
        Fc2Weight,
        Fc2Bias,
        Ls2,
    ]
};

impl ParamKind {
    /// The canonical (plain DINOv2) name, without the `blocks.{i}.` prefix.
    fn suffix(self) -> &'static str {
        use ParamKind::*;
        match self {
            PatchWeight => "patch_embed.proj.weight",
            PatchBias => "patch_embed.proj.bias",
            ClsToken => "cls_token",
            PosEmbed => "pos_embed",
            Norm1Weight => "norm1.weight",
            Norm1Bias => "norm1.bias",
            QkvWeight => "attn.qkv.weight",
            QkvBias => "attn.qkv.bias",
            ProjWeight => "attn.proj.weight",
            ProjBias => "attn.proj.bias",
            Ls1 => "ls1.gamma",
            Norm2Weight => "norm2.weight",
            Norm2Bias => "norm2.bias",
            Fc1Weight => "mlp.fc1.weight",
            Fc1Bias => "mlp.fc1.bias",
            Fc2Weight => "mlp.fc2.weight",
            Fc2Bias => "mlp.fc2.bias",
            Ls2 => "ls2.gamma",
            NormWeight => "norm.weight",
            NormBias => "norm.bias",
        }
    }

    fn is_ln_bias(self) -> bool {
        matches!(
            self,
            ParamKind::Norm1Bias | ParamKind::Norm2Bias | ParamKind::NormBias
        )
    }
}

/// One teacher tensor: a kind, inside a block or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub kind: ParamKind,
    pub block: Option<u32>,
}

impl Param {
    /// The tensor's canonical name in the teacher.
    pub fn teacher_name(&self) -> String {
        match self.block {
            Some(b) => format!("blocks.{b}.{}", self.kind.suffix()),
            None => self.kind.suffix().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(max_depth: u32) -> Geometry {
        Geometry {
            max_width: 1024,
            max_depth,
            head_dim: 64,
            patch_size: 16,
            image_size: 224,
            ln_bias: true,
        }
    }

    #[test]
    fn vit_large_costs_match_the_known_sizes() {
        let g = geometry(24);
        // ViT-L/16 backbone: 304.4M parameters, ~61.6 GMACs at 224².
        let large = g.costs(&SubnetSpec::single(1024, 24));
        assert!(
            (303_000_000..305_000_000).contains(&large.params),
            "{}",
            large.params
        );
        assert!(
            (59_000_000_000..63_000_000_000).contains(&large.macs),
            "{}",
            large.macs
        );
        // ViT-S/16: 21.7M parameters.
        let small = g.costs(&SubnetSpec::single(384, 12));
        assert!(
            (21_000_000..22_500_000).contains(&small.params),
            "{}",
            small.params
        );
    }

    #[test]
    fn grid_checks_name_the_problem() {
        let g = geometry(24);
        assert_eq!(
            g.check(&SubnetSpec::single(400, 12)),
            Err(FamilyError::WidthNotMultiple {
                width: 400,
                head_dim: 64
            })
        );
        assert_eq!(
            g.check(&SubnetSpec::single(1088, 12)),
            Err(FamilyError::WidthRange {
                width: 1088,
                max: 1024
            })
        );
        assert_eq!(
            g.check(&SubnetSpec::single(384, 25)),
            Err(FamilyError::DepthRange { depth: 25, max: 24 })
        );
        assert_eq!(
            g.check(&"384x3.4.6.3".parse().unwrap()),
            Err(FamilyError::Stages {
                family: "ViT",
                expected: 1,
                found: 4
            })
        );
        assert_eq!(
            g.check(&SubnetSpec::single(384, 12)),
            Ok(SubnetSpec::single(384, 12))
        );
    }
}
