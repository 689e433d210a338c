//! POA's elastic ViT (DINOv2-style backbone): every slicing rule, the cost
//! model and the ONNX graph of a sub-network. The rules follow POA's own
//! dynamic forward exactly (see docs/exporter.md, "The slicing").

use std::ops::Range;

use onnx_protobuf::ModelProto;
use tailor_runtime::manifest::TeacherConfig;

use super::SubnetSpec;
use crate::checkpoint::{Checkpoint, TensorRef};
use crate::onnx::{Attr, Dim, ExternalData, GraphBuilder, Value};

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

/// A sub-network's size and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Costs {
    pub params: u64,
    /// Multiply-accumulates per image (matrix products and the patch conv).
    pub macs: u64,
    /// Estimated peak activation bytes at batch 1 (see [`Geometry::costs`]).
    pub activation_bytes: u64,
}

/// A teacher that does not have the shape of a POA ViT, or a request outside its grid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VitError {
    #[error("missing tensor `{0}` (is this a POA/DINOv2 ViT checkpoint?)")]
    Missing(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("blocks are not numbered 0..{count}: block {missing} is missing")]
    BlockGap { count: u32, missing: u32 },
    #[error("width {width} is not a multiple of head_dim {head_dim}")]
    WidthNotMultiple { width: u32, head_dim: u32 },
    #[error("width {width} is outside 1..={max} (the teacher's width)")]
    WidthRange { width: u32, max: u32 },
    #[error("depth {depth} is outside 1..={max} (the teacher's depth)")]
    DepthRange { depth: u32, max: u32 },
    #[error("head_dim {head_dim} does not divide the teacher's width {max_width}")]
    HeadDim { head_dim: u32, max_width: u32 },
    #[error("image size {image} is not a multiple of the patch size {patch}")]
    ImageSize { image: u32, patch: u32 },
}

/// Reads the teacher's geometry off its tensors and checks every tensor's shape.
pub fn tensor_facts(ckpt: &Checkpoint) -> Result<TensorFacts, VitError> {
    let shape = |name: &str| -> Result<Vec<usize>, VitError> {
        ckpt.tensor(name)
            .map(|t| t.shape.to_vec())
            .ok_or_else(|| VitError::Missing(name.into()))
    };
    let cls = shape("cls_token")?;
    let [1, 1, d] = cls[..] else {
        return Err(VitError::Shape {
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
            return Err(VitError::Shape {
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
            return Err(VitError::Shape {
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
        return Err(VitError::Missing("blocks.0.attn.qkv.weight".into()));
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
                    VitError::BlockGap {
                        count: max_depth,
                        missing: b,
                    }
                }
                _ => VitError::Missing(name),
            });
        };
        let expected = g.teacher_shape(param.kind, tokens);
        if t.shape != expected.as_slice() {
            return Err(VitError::Shape {
                name,
                found: t.shape.to_vec(),
                expected,
            });
        }
    }
    Ok(facts)
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

    /// The geometry as the manifest records it.
    pub fn to_config(&self) -> TeacherConfig {
        TeacherConfig {
            max_width: self.max_width,
            max_depth: self.max_depth,
            head_dim: self.head_dim,
            patch_size: self.patch_size,
            image_size: self.image_size,
            mlp_ratio: MLP_RATIO,
        }
    }

    /// Checks the geometry itself is consistent.
    pub fn validate(&self) -> Result<(), VitError> {
        if self.head_dim == 0 || !self.max_width.is_multiple_of(self.head_dim) {
            return Err(VitError::HeadDim {
                head_dim: self.head_dim,
                max_width: self.max_width,
            });
        }
        if self.image_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(VitError::ImageSize {
                image: self.image_size,
                patch: self.patch_size,
            });
        }
        Ok(())
    }

    /// Checks that `s` is a sub-network of this teacher.
    pub fn check(&self, s: SubnetSpec) -> Result<(), VitError> {
        if s.width == 0 || s.width > self.max_width {
            return Err(VitError::WidthRange {
                width: s.width,
                max: self.max_width,
            });
        }
        if !s.width.is_multiple_of(self.head_dim) {
            return Err(VitError::WidthNotMultiple {
                width: s.width,
                head_dim: self.head_dim,
            });
        }
        if s.depth == 0 || s.depth > self.max_depth {
            return Err(VitError::DepthRange {
                depth: s.depth,
                max: self.max_depth,
            });
        }
        Ok(())
    }

    /// The teacher blocks a depth-`depth` sub-network keeps: numpy's
    /// `linspace(0, Lmax-1, depth).astype(int64)`, which is not always the
    /// paper's floor formula (Lmax = 31, L = 23 differ at one index).
    pub fn block_indices(&self, depth: u32) -> Vec<u16> {
        let (lmax, l) = (self.max_depth as usize, depth as usize);
        if l == 1 {
            return vec![0];
        }
        let step = (lmax - 1) as f64 / (l - 1) as f64;
        (0..l)
            .map(|j| if j == l - 1 { lmax - 1 } else { (j as f64 * step) as usize } as u16)
            .collect()
    }

    /// Parameters, MACs and the activation-memory estimate of `s`.
    ///
    /// The activation estimate is the larger of the two peaks of a block at
    /// batch 1: attention (qkv, two score maps, the residual) and the MLP
    /// (two hidden maps and two residual-width maps), plus the input image.
    pub fn costs(&self, s: SubnetSpec) -> Costs {
        let (w, l, t, n) = (
            s.width as u64,
            s.depth as u64,
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
    fn cut(&self, kind: ParamKind, w: u32) -> Cut {
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

    /// The cut of teacher tensor `param` for width `w`: which elements, in
    /// output order, and the scale they take.
    pub fn slice<'c>(
        &self,
        ckpt: &'c Checkpoint,
        param: Param,
        w: u32,
    ) -> Result<Slice<'c>, VitError> {
        let name = param.teacher_name();
        let tensor = ckpt.tensor(&name).ok_or(VitError::Missing(name))?;
        Ok(Slice {
            tensor,
            cut: self.cut(param.kind, w),
        })
    }

    /// The ONNX graph of sub-network `s`; `locate` says where each sliced
    /// teacher tensor (by teacher name, e.g. `blocks.7.attn.qkv.weight`) lies.
    pub fn graph(&self, s: SubnetSpec, locate: &dyn Fn(&str) -> ExternalData) -> ModelProto {
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

/// Row ranges × column ranges of a tensor's 2-D view, times a scale.
struct Cut {
    view_cols: usize,
    rows: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
    scale: f32,
    shape: Vec<usize>,
}

impl Cut {
    fn matrix(
        view_cols: usize,
        rows: Vec<Range<usize>>,
        cols: Vec<Range<usize>>,
        scale: f32,
        shape: Vec<usize>,
    ) -> Cut {
        Cut {
            view_cols,
            rows,
            cols,
            scale,
            shape,
        }
    }

    /// The first `n` elements of a vector.
    #[allow(clippy::single_range_in_vec_init)]
    fn prefix(n: usize) -> Cut {
        Cut {
            view_cols: 0,
            rows: vec![0..1],
            cols: vec![0..n],
            scale: 1.0,
            shape: vec![n],
        }
    }

    /// Contiguous runs of the tensor's elements, in output order.
    fn runs(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.rows
            .iter()
            .flat_map(|r| r.clone())
            .flat_map(move |row| {
                self.cols.iter().map(move |col| {
                    row * self.view_cols + col.start..row * self.view_cols + col.end
                })
            })
    }
}

/// One teacher tensor cut for one width, read run by run so the writer can
/// stream it without materialising the whole slice.
pub struct Slice<'c> {
    pub tensor: TensorRef<'c>,
    cut: Cut,
}

impl Slice<'_> {
    /// Elements of the sliced tensor, in order, as runs of the teacher's.
    pub fn runs(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.cut.runs()
    }

    /// The factor every element is multiplied by (a = D/w, or 1).
    pub fn scale(&self) -> f32 {
        self.cut.scale
    }

    /// Elements in the sliced tensor.
    pub fn elements(&self) -> usize {
        self.cut.shape.iter().product()
    }
}

/// Emits the ONNX graph of one sub-network.
struct GraphWriter<'a> {
    g: &'a Geometry,
    s: SubnetSpec,
    block_idx: Vec<u16>,
    locate: &'a dyn Fn(&str) -> ExternalData,
    b: GraphBuilder,
}

impl<'a> GraphWriter<'a> {
    fn new(g: &'a Geometry, s: SubnetSpec, locate: &'a dyn Fn(&str) -> ExternalData) -> Self {
        GraphWriter {
            g,
            s,
            block_idx: g.block_indices(s.depth),
            locate,
            b: GraphBuilder::new(&s.id()),
        }
    }

    /// The sliced teacher tensor `param`, named `name` in the graph.
    fn weight(&mut self, name: &str, param: Param) -> Value {
        let shape = self.g.cut(param.kind, self.s.width).shape;
        let data = (self.locate)(&param.teacher_name());
        self.b.external(name, &shape, data)
    }

    fn layer_norm(&mut self, name: &str, x: &Value, weight: Param, bias: Param) -> Value {
        let scale = self.weight(&format!("{name}.weight"), weight);
        let mut inputs = vec![x, &scale];
        let bias = self
            .g
            .ln_bias
            .then(|| self.weight(&format!("{name}.bias"), bias));
        inputs.extend(bias.as_ref());
        self.b.node(
            "LayerNormalization",
            name,
            &inputs,
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(LN_EPS))],
        )
    }

    /// `x · Wᵀ + b` on the 2-D token matrix.
    fn linear(
        &mut self,
        name: &str,
        x: &Value,
        block: u32,
        weight: ParamKind,
        bias: ParamKind,
    ) -> Value {
        let w = self.weight(
            &format!("{name}.weight"),
            Param {
                kind: weight,
                block: Some(block),
            },
        );
        let b = self.weight(
            &format!("{name}.bias"),
            Param {
                kind: bias,
                block: Some(block),
            },
        );
        self.b
            .node("Gemm", name, &[x, &w, &b], &[("transB", Attr::Int(1))])
    }

    fn build(mut self) -> ModelProto {
        let (w, t) = (self.s.width as usize, self.g.tokens());
        let (p, side) = (self.g.patch_size as usize, self.g.image_size as usize);
        let top = |kind| Param { kind, block: None };
        let pixels = self.b.input(
            "pixel_values",
            &[
                Dim::Named("batch"),
                Dim::Fixed(3),
                Dim::Fixed(side),
                Dim::Fixed(side),
            ],
        );

        // Patch embedding: [B,3,H,W] -> [B,N,w].
        let pw = self.weight("patch_embed.proj.weight", top(ParamKind::PatchWeight));
        let pb = self.weight("patch_embed.proj.bias", top(ParamKind::PatchBias));
        let conv = self.b.node(
            "Conv",
            "patch_embed.proj",
            &[&pixels, &pw, &pb],
            &[
                ("kernel_shape", Attr::Ints(vec![p as i64; 2])),
                ("strides", Attr::Ints(vec![p as i64; 2])),
            ],
        );
        let flat_shape = self
            .b
            .const_i64("patch_embed.flatten.shape", &[3], &[0, w as i64, -1]);
        let flat = self
            .b
            .node("Reshape", "patch_embed.flatten", &[&conv, &flat_shape], &[]);
        let patches = self.b.node(
            "Transpose",
            "patch_embed.transpose",
            &[&flat],
            &[("perm", Attr::Ints(vec![0, 2, 1]))],
        );

        // CLS token broadcast over the batch, then positions.
        let cls = self.weight("cls_token.weight", top(ParamKind::ClsToken));
        let batch_shape = self.b.node(
            "Shape",
            "cls_token.batch",
            &[&patches],
            &[("end", Attr::Int(1))],
        );
        let rest = self.b.const_i64("cls_token.rest", &[2], &[1, w as i64]);
        let cls_shape = self.b.node(
            "Concat",
            "cls_token.shape",
            &[&batch_shape, &rest],
            &[("axis", Attr::Int(0))],
        );
        let cls = self
            .b
            .node("Expand", "cls_token.expand", &[&cls, &cls_shape], &[]);
        let tokens = self.b.node(
            "Concat",
            "tokens",
            &[&cls, &patches],
            &[("axis", Attr::Int(1))],
        );
        let pos = self.weight("pos_embed", top(ParamKind::PosEmbed));
        let tokens = self.b.node("Add", "pos_embed.add", &[&tokens, &pos], &[]);

        // Blocks run on the 2-D token matrix [B*T, w].
        let rows = self.b.const_i64("shape.rows", &[2], &[-1, w as i64]);
        let mut x = self
            .b
            .node("Reshape", "tokens.rows", &[&tokens, &rows], &[]);
        let heads = (self.s.width / self.g.head_dim) as i64;
        let qkv_split = self.b.const_i64("attn.qkv.split", &[3], &[w as i64; 3]);
        let heads_shape = self.b.const_i64(
            "shape.heads",
            &[4],
            &[-1, t as i64, heads, self.g.head_dim as i64],
        );
        let scale = self
            .b
            .const_f32("attn.scale", &[], &[(self.g.head_dim as f32).powf(-0.5)]);
        let sqrt2 = self
            .b
            .const_f32("gelu.sqrt2", &[], &[std::f32::consts::SQRT_2]);
        let one = self.b.const_f32("gelu.one", &[], &[1.0]);
        let half = self.b.const_f32("gelu.half", &[], &[0.5]);
        for (j, &teacher_block) in self.block_idx.clone().iter().enumerate() {
            let b = teacher_block as u32;
            let at = |kind| Param {
                kind,
                block: Some(b),
            };
            let n = format!("blocks.{j}");
            use ParamKind::*;

            let h = self.layer_norm(&format!("{n}.norm1"), &x, at(Norm1Weight), at(Norm1Bias));
            let qkv = self.linear(&format!("{n}.attn.qkv"), &h, b, QkvWeight, QkvBias);
            // q, k, v as column blocks of the token matrix, each to [B, H, T, hd]:
            // tract folds the split into the qkv product and the head
            // transposes into the attention products (no copies), where a
            // 5-D transpose and gathers cost copies (docs/benchmarks.md).
            let names = ["q", "k", "v"];
            let outputs = names.map(|part| format!("{n}.attn.{part}.rows"));
            let parts = self.b.node_with_outputs(
                "Split",
                &format!("{n}.attn.qkv.split"),
                &[&qkv, &qkv_split],
                &[("axis", Attr::Int(1))],
                &outputs.each_ref().map(String::as_str),
            );
            let [q, k, v] = [0, 1, 2].map(|i| {
                let heads = self.b.node(
                    "Reshape",
                    &format!("{n}.attn.{}.heads", names[i]),
                    &[&parts[i], &heads_shape],
                    &[],
                );
                self.b.node(
                    "Transpose",
                    &format!("{n}.attn.{}", names[i]),
                    &[&heads],
                    &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
                )
            });
            let kt = self.b.node(
                "Transpose",
                &format!("{n}.attn.k.t"),
                &[&k],
                &[("perm", Attr::Ints(vec![0, 1, 3, 2]))],
            );
            let scores = self
                .b
                .node("MatMul", &format!("{n}.attn.scores"), &[&q, &kt], &[]);
            let scores = self
                .b
                .node("Mul", &format!("{n}.attn.scaled"), &[&scores, &scale], &[]);
            let probs = self.b.node(
                "Softmax",
                &format!("{n}.attn.softmax"),
                &[&scores],
                &[("axis", Attr::Int(-1))],
            );
            let ctx = self
                .b
                .node("MatMul", &format!("{n}.attn.context"), &[&probs, &v], &[]);
            let ctx = self.b.node(
                "Transpose",
                &format!("{n}.attn.context.merge"),
                &[&ctx],
                &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
            );
            let ctx = self.b.node(
                "Reshape",
                &format!("{n}.attn.context.rows"),
                &[&ctx, &rows],
                &[],
            );
            let out = self.linear(&format!("{n}.attn.proj"), &ctx, b, ProjWeight, ProjBias);
            let gamma = self.weight(&format!("{n}.ls1.gamma"), at(Ls1));
            let out = self
                .b
                .node("Mul", &format!("{n}.ls1"), &[&out, &gamma], &[]);
            x = self
                .b
                .node("Add", &format!("{n}.residual1"), &[&x, &out], &[]);

            let h = self.layer_norm(&format!("{n}.norm2"), &x, at(Norm2Weight), at(Norm2Bias));
            let h = self.linear(&format!("{n}.mlp.fc1"), &h, b, Fc1Weight, Fc1Bias);
            // Exact (erf) GELU: 0.5 · h · (1 + erf(h / √2)).
            let e = self
                .b
                .node("Div", &format!("{n}.mlp.act.scaled"), &[&h, &sqrt2], &[]);
            let e = self.b.node("Erf", &format!("{n}.mlp.act.erf"), &[&e], &[]);
            let e = self
                .b
                .node("Add", &format!("{n}.mlp.act.shift"), &[&e, &one], &[]);
            let e = self
                .b
                .node("Mul", &format!("{n}.mlp.act.gate"), &[&h, &e], &[]);
            let h = self
                .b
                .node("Mul", &format!("{n}.mlp.act"), &[&e, &half], &[]);
            let out = self.linear(&format!("{n}.mlp.fc2"), &h, b, Fc2Weight, Fc2Bias);
            let gamma = self.weight(&format!("{n}.ls2.gamma"), at(Ls2));
            let out = self
                .b
                .node("Mul", &format!("{n}.ls2"), &[&out, &gamma], &[]);
            x = self
                .b
                .node("Add", &format!("{n}.residual2"), &[&x, &out], &[]);
        }

        // Final norm, back to [B, T, w], split CLS from patches.
        let x = self.layer_norm(
            "norm",
            &x,
            top(ParamKind::NormWeight),
            top(ParamKind::NormBias),
        );
        let seq = self
            .b
            .const_i64("shape.tokens", &[3], &[-1, t as i64, w as i64]);
        let x = self.b.node("Reshape", "norm.tokens", &[&x, &seq], &[]);
        let zero = self.b.const_i64("index.cls", &[], &[0]);
        let cls = self.b.node(
            "Gather",
            "cls_token",
            &[&x, &zero],
            &[("axis", Attr::Int(1))],
        );
        let starts = self.b.const_i64("patch_tokens.starts", &[1], &[1]);
        let ends = self.b.const_i64("patch_tokens.ends", &[1], &[t as i64]);
        let axes = self.b.const_i64("patch_tokens.axes", &[1], &[1]);
        let patches = self
            .b
            .node("Slice", "patch_tokens", &[&x, &starts, &ends, &axes], &[]);
        self.b.output(&cls, &[Dim::Named("batch"), Dim::Fixed(w)]);
        self.b.output(
            &patches,
            &[Dim::Named("batch"), Dim::Fixed(t - 1), Dim::Fixed(w)],
        );
        let doc = format!(
            "POA elastic ViT sub-network {}: width {} of {}, blocks {:?} of {}",
            self.s.id(),
            self.s.width,
            self.g.max_width,
            self.block_idx,
            self.g.max_depth
        );
        self.b.finish(&doc)
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
    fn depth_indices_follow_numpy_linspace() {
        assert_eq!(
            geometry(24).block_indices(12),
            [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 23]
        );
        assert_eq!(geometry(24).block_indices(1), [0]);
        assert_eq!(
            geometry(24).block_indices(24),
            (0..24).collect::<Vec<u16>>()
        );
        // Lmax = 31, L = 23: numpy keeps block 14 at j = 11 where the paper's
        // floor((Lmax-1)·j/(L-1)) would keep 15; every other index agrees.
        let numpy = geometry(31).block_indices(23);
        let floor: Vec<u16> = (0..23).map(|j| (30 * j / 22) as u16).collect();
        assert_eq!((numpy[11], floor[11]), (14, 15));
        assert_eq!(numpy.iter().zip(&floor).filter(|(a, b)| a != b).count(), 1);
    }

    #[test]
    fn vit_large_costs_match_the_known_sizes() {
        let g = geometry(24);
        // ViT-L/16 backbone: 304.4M parameters, ~61.6 GMACs at 224².
        let large = g.costs(SubnetSpec {
            width: 1024,
            depth: 24,
        });
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
        let small = g.costs(SubnetSpec {
            width: 384,
            depth: 12,
        });
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
            g.check(SubnetSpec {
                width: 400,
                depth: 12
            }),
            Err(VitError::WidthNotMultiple {
                width: 400,
                head_dim: 64
            })
        );
        assert_eq!(
            g.check(SubnetSpec {
                width: 1088,
                depth: 12
            }),
            Err(VitError::WidthRange {
                width: 1088,
                max: 1024
            })
        );
        assert_eq!(
            g.check(SubnetSpec {
                width: 384,
                depth: 25
            }),
            Err(VitError::DepthRange { depth: 25, max: 24 })
        );
        assert_eq!(
            g.check(SubnetSpec {
                width: 384,
                depth: 12
            }),
            Ok(())
        );
    }
}
