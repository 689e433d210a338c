//! The ONNX graph of one ViT sub-network, built from the shared layers.

use onnx_protobuf::ModelProto;

use super::{Geometry, Param, ParamKind, LN_EPS};
use crate::family::{linspace_blocks, SubnetSpec};
use crate::onnx::layers::{BlockConsts, ConvShape, Linear};
use crate::onnx::{Attr, Dim, ExternalData, GraphBuilder, Value};
use tailor_runtime::interface::{CLS_TOKEN, PATCH_TOKENS};

/// Emits the ONNX graph of one sub-network.
pub(super) struct GraphWriter<'a> {
    g: &'a Geometry,
    width: u32,
    id: String,
    block_idx: Vec<u16>,
    locate: &'a dyn Fn(&str) -> ExternalData,
    b: GraphBuilder,
}

impl<'a> GraphWriter<'a> {
    pub(super) fn new(
        g: &'a Geometry,
        s: &SubnetSpec,
        locate: &'a dyn Fn(&str) -> ExternalData,
    ) -> Self {
        GraphWriter {
            g,
            width: s.width,
            id: s.id(),
            block_idx: linspace_blocks(g.max_depth, s.depths.total()),
            locate,
            b: GraphBuilder::new(&s.id()),
        }
    }

    /// The sliced teacher tensor `param`, named `name` in the graph.
    fn weight(&mut self, name: &str, param: Param) -> Value {
        let cut = self.g.cut(param.kind, self.width);
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

    /// Block `block`'s Linear `name` from its weight and bias tensors.
    fn linear_weights(
        &mut self,
        name: &str,
        block: u32,
        weight: ParamKind,
        bias: ParamKind,
    ) -> Linear {
        let at = |kind| Param {
            kind,
            block: Some(block),
        };
        Linear {
            weight: self.weight(&format!("{name}.weight"), at(weight)),
            bias: Some(self.weight(&format!("{name}.bias"), at(bias))),
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
        let starts = self.b.const_i64("patch_tokens.starts", &[1], &[1]);
        let ends = self.b.const_i64("patch_tokens.ends", &[1], &[t as i64]);
        let axes = self.b.const_i64("patch_tokens.axes", &[1], &[1]);
        let patches = self
            .b
            .node("Slice", PATCH_TOKENS, &[&x, &starts, &ends, &axes], &[]);
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
        let qkv = self.linear_weights(&format!("{n}.attn.qkv"), b, QkvWeight, QkvBias);
        let qkv = self.b.linear(&format!("{n}.attn.qkv"), &h, &qkv);
        let ctx = self.b.self_attention(&format!("{n}.attn"), &qkv, consts);
        let proj = self.linear_weights(&format!("{n}.attn.proj"), b, ProjWeight, ProjBias);
        let out = self.b.linear(&format!("{n}.attn.proj"), &ctx, &proj);
        let gamma = self.weight(&format!("{n}.ls1.gamma"), at(Ls1));
        let out = self
            .b
            .node("Mul", &format!("{n}.ls1"), &[&out, &gamma], &[]);
        let x = self
            .b
            .node("Add", &format!("{n}.residual1"), &[x, &out], &[]);

        let h = self.layer_norm(&format!("{n}.norm2"), &x, at(Norm2Weight), at(Norm2Bias));
        let fc1 = self.linear_weights(&format!("{n}.mlp.fc1"), b, Fc1Weight, Fc1Bias);
        let fc2 = self.linear_weights(&format!("{n}.mlp.fc2"), b, Fc2Weight, Fc2Bias);
        let out = self.b.mlp(&format!("{n}.mlp"), &h, &fc1, &fc2, consts);
        let gamma = self.weight(&format!("{n}.ls2.gamma"), at(Ls2));
        let out = self
            .b
            .node("Mul", &format!("{n}.ls2"), &[&out, &gamma], &[]);
        self.b
            .node("Add", &format!("{n}.residual2"), &[&x, &out], &[])
    }
}
