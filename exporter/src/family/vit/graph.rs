//! The ONNX graph of one ViT sub-network, built from the shared layers.

use onnx_protobuf::ModelProto;

use super::{Geometry, Param, ParamKind, LN_EPS};
use crate::family::{linspace_blocks, SubnetSpec};
use crate::onnx::layers::{BlockConsts, ConvShape};
use crate::onnx::weights::{LayerNormKind, SliceWriter, Weights};
use crate::onnx::{Attr, Dim, ExternalData, GraphBuilder, Value};
use tailor_runtime::interface::{CLS_TOKEN, PATCH_TOKENS};

/// Emits the ONNX graph of one sub-network.
pub(super) struct GraphWriter<'a> {
    g: &'a Geometry,
    width: u32,
    id: String,
    block_idx: Vec<u16>,
    w: Weights<'a, Param>,
    b: GraphBuilder,
}

impl SliceWriter for GraphWriter<'_> {
    type Param = Param;

    fn graph_and_weights(&mut self) -> (&mut GraphBuilder, &Weights<'_, Param>) {
        (&mut self.b, &self.w)
    }
}

impl<'a> GraphWriter<'a> {
    pub(super) fn new(
        g: &'a Geometry,
        s: &SubnetSpec,
        locate: &'a dyn Fn(&str) -> ExternalData,
    ) -> Self {
        let width = s.width;
        GraphWriter {
            g,
            width,
            id: s.id(),
            block_idx: linspace_blocks(g.max_depth, s.depths.total()),
            w: Weights::new(
                move |p: Param| (p.teacher_name(), g.cut(p.kind, width).shape().to_vec()),
                locate,
                LayerNormKind {
                    eps: LN_EPS,
                    bias: g.ln_bias,
                },
            ),
            b: GraphBuilder::new(&s.id()),
        }
    }

    pub(super) fn build(mut self) -> ModelProto {
        let (w, t) = (self.width as usize, self.g.tokens());
        let (p, side) = (self.g.patch_size as usize, self.g.image_size as usize);
        let top = |kind| Param { kind, block: None };
        let pixels = self.b.pixel_values(side);

        // Patch embedding: [B,3,H,W] -> [B,N,w].
        let pw = self.weight("patch_embed.proj.weight", top(ParamKind::PatchWeight));
        let pb = self.weight("patch_embed.proj.bias", top(ParamKind::PatchBias));
        let patch = ConvShape {
            kernel: p,
            stride: p,
            pad: 0,
        };
        let conv = self
            .b
            .conv("patch_embed.proj", &pixels, &pw, Some(&pb), patch);
        let flat = self
            .b
            .reshape("patch_embed.flatten", &conv, &[0, w as i64, -1]);
        let patches = self.b.transpose("patch_embed.transpose", &flat, &[0, 2, 1]);

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
        let heads = (self.width / self.g.head_dim) as usize;
        let consts = BlockConsts::new(&mut self.b, t, heads, self.g.head_dim as usize, &rows);
        for (j, teacher_block) in self.block_idx.clone().into_iter().enumerate() {
            x = self.block(&format!("blocks.{j}"), teacher_block.into(), &x, &consts);
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
        let cls = self
            .b
            .node("Gather", CLS_TOKEN, &[&x, &zero], &[("axis", Attr::Int(1))]);
        let patches = self.b.slice(PATCH_TOKENS, &x, &[1], &[t as i64], &[1]);
        self.b.output(&cls, &[Dim::Named("batch"), Dim::Fixed(w)]);
        self.b.output(
            &patches,
            &[Dim::Named("batch"), Dim::Fixed(t - 1), Dim::Fixed(w)],
        );
        let doc = format!(
            "POA elastic ViT sub-network {}: width {} of {}, blocks {:?} of {}",
            self.id, self.width, self.g.max_width, self.block_idx, self.g.max_depth
        );
        self.b.finish(&doc)
    }

    /// Teacher block `b` as graph block `n`: pre-norm attention and MLP,
    /// each scaled by its LayerScale and added to the residual.
    fn block(&mut self, n: &str, b: u32, x: &Value, consts: &BlockConsts) -> Value {
        let at = |kind| Param {
            kind,
            block: Some(b),
        };
        use ParamKind::*;
        let h = self.layer_norm(&format!("{n}.norm1"), x, at(Norm1Weight), at(Norm1Bias));
        let qkv = self.linear(&format!("{n}.attn.qkv"), at(QkvWeight), Some(at(QkvBias)));
        let qkv = self.b.linear(&format!("{n}.attn.qkv"), &h, &qkv);
        let ctx = self.b.self_attention(&format!("{n}.attn"), &qkv, consts);
        let proj = self.linear(
            &format!("{n}.attn.proj"),
            at(ProjWeight),
            Some(at(ProjBias)),
        );
        let out = self.b.linear(&format!("{n}.attn.proj"), &ctx, &proj);
        let gamma = self.weight(&format!("{n}.ls1.gamma"), at(Ls1));
        let out = self
            .b
            .node("Mul", &format!("{n}.ls1"), &[&out, &gamma], &[]);
        let x = self
            .b
            .node("Add", &format!("{n}.residual1"), &[x, &out], &[]);

        let h = self.layer_norm(&format!("{n}.norm2"), &x, at(Norm2Weight), at(Norm2Bias));
        let fc1 = self.linear(&format!("{n}.mlp.fc1"), at(Fc1Weight), Some(at(Fc1Bias)));
        let fc2 = self.linear(&format!("{n}.mlp.fc2"), at(Fc2Weight), Some(at(Fc2Bias)));
        let out = self.b.mlp(&format!("{n}.mlp"), &h, &fc1, &fc2, consts);
        let gamma = self.weight(&format!("{n}.ls2.gamma"), at(Ls2));
        let out = self
            .b
            .node("Mul", &format!("{n}.ls2"), &[&out, &gamma], &[]);
        self.b
            .node("Add", &format!("{n}.residual2"), &[&x, &out], &[])
    }
}
