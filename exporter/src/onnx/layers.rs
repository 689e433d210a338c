//! Layers several families build from, each a few ONNX nodes named after
//! the module they come from. Weights are passed in already sliced (α
//! folded), so a layer knows nothing of elastic rules.

use super::{Attr, Dim, GraphBuilder, Value};
use tailor_runtime::interface::{CLS_TOKEN, PATCH_TOKENS};

/// The weight and (optional) bias of a `Gemm(transB=1)` in PyTorch's layout.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Value,
    pub bias: Option<Value>,
}

/// A convolution's geometry (square kernels, symmetric padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

/// Constants every pre-norm transformer block of a graph shares (attention
/// over `tokens` tokens in `heads` heads, exact GELU), created once.
#[derive(Debug, Clone)]
pub struct BlockConsts {
    /// `[w, w, w]`: q, k and v as column blocks of the qkv rows.
    qkv_split: Value,
    /// `[-1, tokens, heads, head_dim]`: one of q, k, v split into heads.
    heads_shape: Value,
    scale: Value,
    sqrt2: Value,
    one: Value,
    half: Value,
    /// `[-1, width]`: the 2-D token matrix blocks run on.
    rows: Value,
}

impl BlockConsts {
    /// `rows` is the `[-1, width]` shape of the token matrix.
    pub fn new(
        b: &mut GraphBuilder,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        rows: &Value,
    ) -> BlockConsts {
        let width = (heads * head_dim) as i64;
        let qkv_split = b.const_i64("attn.qkv.split", &[3], &[width; 3]);
        let heads_shape = b.const_i64(
            "shape.heads",
            &[4],
            &[-1, tokens as i64, heads as i64, head_dim as i64],
        );
        let scale = b.const_f32("attn.scale", &[], &[(head_dim as f32).powf(-0.5)]);
        let sqrt2 = b.const_f32("gelu.sqrt2", &[], &[std::f32::consts::SQRT_2]);
        let one = b.const_f32("gelu.one", &[], &[1.0]);
        let half = b.const_f32("gelu.half", &[], &[0.5]);
        BlockConsts {
            qkv_split,
            heads_shape,
            scale,
            sqrt2,
            one,
            half,
            rows: rows.clone(),
        }
    }
}

/// Constants every GroupNorm of a graph shares: its groups and epsilon.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    grouped: Value,
    eps: Value,
}

impl GroupNorm {
    pub fn new(b: &mut GraphBuilder, groups: usize, eps: f32) -> GroupNorm {
        GroupNorm {
            grouped: b.const_i64("group_norm.groups", &[3], &[0, groups as i64, -1]),
            eps: b.const_f32("group_norm.eps", &[], &[eps]),
        }
    }
}

impl GraphBuilder {
    /// `x · Wᵀ (+ b)` on a 2-D matrix.
    pub fn linear(&mut self, name: &str, x: &Value, l: &Linear) -> Value {
        let mut inputs = vec![x, &l.weight];
        inputs.extend(l.bias.as_ref());
        self.node("Gemm", name, &inputs, &[("transB", Attr::Int(1))])
    }

    /// LayerNorm over the last axis, bias optional.
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: &Value,
        scale: &Value,
        bias: Option<&Value>,
        eps: f32,
    ) -> Value {
        let mut inputs = vec![x, scale];
        inputs.extend(bias);
        self.node(
            "LayerNormalization",
            name,
            &inputs,
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        )
    }

    /// GroupNorm of an `NCHW` map with per-channel `scale` and `bias` of
    /// shape `[C, 1, 1]`: opset 17 has no GroupNormalization, so the map is
    /// viewed as `[N, groups, C/groups·H·W]` and normalised over the last axis
    /// (two-pass variance, as PyTorch computes it).
    pub fn group_norm(
        &mut self,
        name: &str,
        x: &Value,
        c: &GroupNorm,
        scale: &Value,
        bias: &Value,
    ) -> Value {
        let shape = self.node("Shape", &format!("{name}.shape"), &[x], &[]);
        let g = self.node("Reshape", &format!("{name}.grouped"), &[x, &c.grouped], &[]);
        let mean_of = |b: &mut GraphBuilder, what: &str, v: &Value| {
            b.node(
                "ReduceMean",
                &format!("{name}.{what}"),
                &[v],
                &[("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(1))],
            )
        };
        let mean = mean_of(self, "mean", &g);
        let centred = self.node("Sub", &format!("{name}.centred"), &[&g, &mean], &[]);
        let square = self.node("Mul", &format!("{name}.square"), &[&centred, &centred], &[]);
        let var = mean_of(self, "var", &square);
        let var = self.node("Add", &format!("{name}.var_eps"), &[&var, &c.eps], &[]);
        let std = self.node("Sqrt", &format!("{name}.std"), &[&var], &[]);
        let normed = self.node("Div", &format!("{name}.normed"), &[&centred, &std], &[]);
        let normed = self.node(
            "Reshape",
            &format!("{name}.ungrouped"),
            &[&normed, &shape],
            &[],
        );
        let scaled = self.node("Mul", &format!("{name}.scale"), &[&normed, scale], &[]);
        self.node("Add", name, &[&scaled, bias], &[])
    }

    /// The outputs of a convolutional family from its last `[B, C, h, w]`
    /// map of `hw` positions: `patch_tokens` `[B, hw, C]` (the map
    /// flattened) and `cls_token` `[B, C]`, their mean.
    pub fn map_outputs(&mut self, x: &Value, c: usize, hw: usize) {
        let flat_shape = self.const_i64("tokens.shape", &[3], &[0, c as i64, -1]);
        let flat = self.node("Reshape", "tokens.flatten", &[x, &flat_shape], &[]);
        let tokens = self.node(
            "Transpose",
            PATCH_TOKENS,
            &[&flat],
            &[("perm", Attr::Ints(vec![0, 2, 1]))],
        );
        let cls = self.node(
            "ReduceMean",
            CLS_TOKEN,
            &[&tokens],
            &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))],
        );
        self.output(&cls, &[Dim::Named("batch"), Dim::Fixed(c)]);
        self.output(
            &tokens,
            &[Dim::Named("batch"), Dim::Fixed(hw), Dim::Fixed(c)],
        );
    }

    /// ResNet's stem pool: 3×3 max, stride 2, padded by 1.
    pub fn max_pool(&mut self, name: &str, x: &Value) -> Value {
        self.node(
            "MaxPool",
            name,
            &[x],
            &[
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("strides", Attr::Ints(vec![2, 2])),
                ("pads", Attr::Ints(vec![1; 4])),
            ],
        )
    }

    /// A 2-D convolution, `NCHW`.
    pub fn conv(
        &mut self,
        name: &str,
        x: &Value,
        weight: &Value,
        bias: Option<&Value>,
        shape: ConvShape,
    ) -> Value {
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        let mut attrs = vec![
            ("kernel_shape", Attr::Ints(vec![shape.kernel as i64; 2])),
            ("strides", Attr::Ints(vec![shape.stride as i64; 2])),
        ];
        if shape.pad > 0 {
            attrs.push(("pads", Attr::Ints(vec![shape.pad as i64; 4])));
        }
        self.node("Conv", name, &inputs, &attrs)
    }

    /// Exact (erf) GELU: 0.5 · x · (1 + erf(x / √2)).
    pub fn gelu(&mut self, name: &str, x: &Value, c: &BlockConsts) -> Value {
        let e = self.node("Div", &format!("{name}.scaled"), &[x, &c.sqrt2], &[]);
        let e = self.node("Erf", &format!("{name}.erf"), &[&e], &[]);
        let e = self.node("Add", &format!("{name}.shift"), &[&e, &c.one], &[]);
        let e = self.node("Mul", &format!("{name}.gate"), &[x, &e], &[]);
        self.node("Mul", name, &[&e, &c.half], &[])
    }

    /// `fc2(GELU(fc1(x)))` on the token matrix.
    pub fn mlp(
        &mut self,
        name: &str,
        x: &Value,
        fc1: &Linear,
        fc2: &Linear,
        c: &BlockConsts,
    ) -> Value {
        let h = self.linear(&format!("{name}.fc1"), x, fc1);
        let h = self.gelu(&format!("{name}.act"), &h, c);
        self.linear(&format!("{name}.fc2"), &h, fc2)
    }

    /// Multi-head self-attention over all tokens: `qkv` rows `[B·T, 3w]` in
    /// (q, k, v) × heads order in, context rows `[B·T, w]` out (before proj).
    pub fn self_attention(&mut self, name: &str, qkv: &Value, c: &BlockConsts) -> Value {
        // q, k, v as column blocks of the token matrix, each to [B, H, T, hd]:
        // tract folds the split into the qkv product and the head transposes
        // into the attention products, where a 5-D transpose and gathers
        // cost copies (docs/benchmarks.md).
        let parts = ["q", "k", "v"];
        let outputs = parts.map(|part| format!("{name}.{part}.rows"));
        let rows = self.node_with_outputs(
            "Split",
            &format!("{name}.qkv.split"),
            &[qkv, &c.qkv_split],
            &[("axis", Attr::Int(1))],
            &outputs.each_ref().map(String::as_str),
        );
        let [q, k, v] = [0, 1, 2].map(|i| {
            let heads = self.node(
                "Reshape",
                &format!("{name}.{}.heads", parts[i]),
                &[&rows[i], &c.heads_shape],
                &[],
            );
            self.node(
                "Transpose",
                &format!("{name}.{}", parts[i]),
                &[&heads],
                &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
            )
        });
        let kt = self.node(
            "Transpose",
            &format!("{name}.k.t"),
            &[&k],
            &[("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        );
        let scores = self.node("MatMul", &format!("{name}.scores"), &[&q, &kt], &[]);
        let scores = self.node("Mul", &format!("{name}.scaled"), &[&scores, &c.scale], &[]);
        let probs = self.node(
            "Softmax",
            &format!("{name}.softmax"),
            &[&scores],
            &[("axis", Attr::Int(-1))],
        );
        let ctx = self.node("MatMul", &format!("{name}.context"), &[&probs, &v], &[]);
        let ctx = self.node(
            "Transpose",
            &format!("{name}.context.merge"),
            &[&ctx],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        self.node(
            "Reshape",
            &format!("{name}.context.rows"),
            &[&ctx, &c.rows],
            &[],
        )
    }
}
