//! The ONNX graph of one Swin sub-network: shifted-window attention and
//! patch merging, built from the shared layers.

use onnx_protobuf::ModelProto;

use super::{Geometry, Param, ParamKind, LN_EPS, STAGES};
use crate::family::{linspace_blocks, SubnetSpec};
use crate::onnx::layers::{BlockConsts, ConvShape};
use crate::onnx::weights::{LayerNormKind, SliceWriter, Weights};
use crate::onnx::{Attr, Dim, ExternalData, GraphBuilder, Value};
use tailor_runtime::interface::{CLS_TOKEN, PATCH_TOKENS};

/// Added to attention scores between tokens of different shifted-window regions.
const MASK: f32 = -100.0;

/// [W², W²] rows of the bias table for query p and key q of a window:
/// (Δrow + W - 1)·(2W - 1) + (Δcol + W - 1) with Δ = p - q.
pub(super) fn relative_position_index(window: usize) -> Vec<i64> {
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
pub(super) fn shift_regions(side: usize, window: usize, shift: usize) -> Vec<i64> {
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
pub(super) struct GraphWriter<'a> {
    g: &'a Geometry,
    width: u32,
    depths: [u32; STAGES],
    id: String,
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
            depths: g.stage_depths(s),
            id: s.id(),
            w: Weights::new(
                move |p: Param| (p.teacher_name(), g.cut(p, width).shape().to_vec()),
                locate,
                LayerNormKind {
                    eps: LN_EPS,
                    bias: g.ln_bias,
                },
            ),
            b: GraphBuilder::new(&s.id()),
        }
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
            let tail = self
                .b
                .slice(&format!("{n}.tail"), &x, &[cut], &[side], &[axis]);
            let head = self
                .b
                .slice(&format!("{n}.head"), &x, &[0], &[cut], &[axis]);
            x = self
                .b
                .node("Concat", &n, &[&tail, &head], &[("axis", Attr::Int(axis))]);
        }
        x
    }

    /// [B, side, side, C] -> [B·windows·W², C], window by window.
    fn partition(&mut self, name: &str, x: &Value, side: usize, c: usize) -> Value {
        let (win, per) = (self.g.window as i64, (side / self.g.window as usize) as i64);
        let x = self.b.reshape(
            &format!("{name}.grid"),
            x,
            &[-1, per, win, per, win, c as i64],
        );
        let x = self
            .b
            .transpose(&format!("{name}.order"), &x, &[0, 1, 3, 2, 4, 5]);
        self.b.reshape(name, &x, &[-1, c as i64])
    }

    /// The inverse of [`Self::partition`]: [B·windows·W², C] -> [B, side, side, C].
    fn unpartition(&mut self, name: &str, x: &Value, side: usize, c: usize) -> Value {
        let (win, per) = (self.g.window as i64, (side / self.g.window as usize) as i64);
        let x = self.b.reshape(
            &format!("{name}.grid"),
            x,
            &[-1, per, per, win, win, c as i64],
        );
        let x = self
            .b
            .transpose(&format!("{name}.order"), &x, &[0, 1, 3, 2, 4, 5]);
        self.b
            .reshape(name, &x, &[-1, side as i64, side as i64, c as i64])
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

        let mut h = self.b.reshape(
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
        let qkv = self.b.reshape(
            &format!("{n}.qkv.heads"),
            &qkv,
            &[-1, tokens as i64, 3, heads as i64, hd as i64],
        );
        let qkv = self
            .b
            .transpose(&format!("{n}.qkv.split"), &qkv, &[2, 0, 3, 1, 4]);
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
        let kt = self.b.transpose(&format!("{n}.k.t"), &k, &[0, 1, 3, 2]);
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
        let bias = self.b.transpose(
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
            let grouped = self.b.reshape(
                &format!("{n}.scores.windows"),
                &scores,
                &[-1, windows, heads as i64, tokens as i64, tokens as i64],
            );
            let masked = self
                .b
                .node("Add", &format!("{n}.masked"), &[&grouped, &mask], &[]);
            scores = self.b.reshape(
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
        let ctx = self
            .b
            .transpose(&format!("{n}.context.merge"), &ctx, &[0, 2, 1, 3]);
        let ctx = self
            .b
            .reshape(&format!("{n}.context.rows"), &ctx, &[-1, ws as i64]);
        let proj = self.linear(&format!("{n}.proj"), at(ProjWeight), Some(at(ProjBias)));
        let out = self.b.linear(&format!("{n}.proj"), &ctx, &proj);
        let mut out = self.unpartition(&format!("{n}.unwindows"), &out, padded, ws);
        if shift > 0 {
            out = self.roll(&format!("{n}.unshift"), &out, padded, shift);
        }
        if padded > side {
            out = self.b.slice(
                &format!("{n}.crop"),
                &out,
                &[0, 0],
                &[side as i64, side as i64],
                &[1, 2],
            );
        }
        self.b.reshape(&format!("{n}.rows"), &out, &[-1, ws as i64])
    }

    /// Patch merging after `stage`: 2x2 neighbours (odd maps padded) in
    /// nn.Unfold's order, channels [k][c], LayerNorm, reduction to 2·w_s.
    fn merge(&mut self, x: &Value, stage: usize, side: usize) -> Value {
        let n = format!("stages.{stage}.downsample");
        let ws = (self.width as i64) << stage;
        let half = side.div_ceil(2) as i64;
        let mut h = self
            .b
            .reshape(&format!("{n}.map"), x, &[-1, side as i64, side as i64, ws]);
        if side % 2 == 1 {
            h = self.pad(&format!("{n}.pad"), &h, side, side + 1);
        }
        let h = self
            .b
            .reshape(&format!("{n}.grid"), &h, &[-1, half, 2, half, 2, ws]);
        let h = self
            .b
            .transpose(&format!("{n}.order"), &h, &[0, 1, 3, 2, 4, 5]);
        let h = self.b.reshape(&format!("{n}.unfold"), &h, &[-1, 4 * ws]);
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

    pub(super) fn build(mut self) -> ModelProto {
        let g = self.g;
        let (c, w) = (g.max_width as usize, self.width as usize);
        let (p, image) = (g.patch_size as usize, g.image_size as usize);
        let res = g.resolutions();
        let pixels = self.b.pixel_values(image);

        // Patch embedding with all C channels, LayerNorm over all of them,
        // then the first w: [B,3,H,W] -> [B·hw, w].
        use ParamKind::*;
        let pw = self.weight("patch_embed.proj.weight", Param::top(PatchWeight));
        let pb = self.weight("patch_embed.proj.bias", Param::top(PatchBias));
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
            .reshape("patch_embed.flatten", &conv, &[0, c as i64, -1]);
        let tokens = self.b.transpose("patch_embed.transpose", &flat, &[0, 2, 1]);
        let tokens = self.layer_norm(
            "patch_embed.norm",
            &tokens,
            Param::top(PatchNormWeight),
            Param::top(PatchNormBias),
        );
        let tokens = self
            .b
            .slice("patch_embed.width", &tokens, &[0], &[w as i64], &[2]);
        let mut x = self.b.reshape("patch_embed.rows", &tokens, &[-1, w as i64]);
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
        let patches = self
            .b
            .reshape(PATCH_TOKENS, &x, &[-1, tokens as i64, out as i64]);
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
