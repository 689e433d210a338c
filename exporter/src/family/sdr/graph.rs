//! The ONNX graph of one SDR sub-network: a plain BatchNorm-folded ResNet
//! whose convs are `Concat`s of the stored pieces (engines fold them at load).

use onnx_protobuf::ModelProto;

use super::fold::{part, piece};
use super::{Block, Geometry};
use crate::family::{SdrPath, SubnetSpec};
use crate::onnx::layers::ConvShape;
use crate::onnx::{Attr, ExternalData, GraphBuilder, Value};

/// Emits one graph: initializers are the stored pieces, found by `locate`.
struct Writer<'a> {
    locate: &'a dyn Fn(&str) -> ExternalData,
    b: GraphBuilder,
}

/// One axis of a conv weight: the mid channels' parts kept, in order, or
/// all `n` channels unsplit.
#[derive(Clone, Copy)]
enum Axis<'p> {
    Parts(&'p [usize]),
    Whole(usize),
}

impl Axis<'_> {
    /// Each piece along the axis: its part (if split) and its channels.
    fn pieces(self, block: &Block) -> Vec<(Option<usize>, usize)> {
        match self {
            Axis::Parts(parts) => {
                let all: Vec<&[u32]> = block.parts.all().collect();
                parts.iter().map(|&p| (Some(p), all[p].len())).collect()
            }
            Axis::Whole(n) => vec![(None, n)],
        }
    }
}

/// The graph of `spec`; `locate` says where each stored piece lies.
pub(super) fn build(
    g: &Geometry,
    spec: &SubnetSpec,
    locate: &dyn Fn(&str) -> ExternalData,
) -> ModelProto {
    let path = spec.path.unwrap_or(SdrPath::Full);
    let mut w = Writer {
        locate,
        b: GraphBuilder::new(&spec.id()),
    };
    let pixels = w.b.pixel_values(g.image_size as usize);
    let s = &g.stem;
    let stem = ConvShape {
        kernel: s.kernel as usize,
        stride: s.stride as usize,
        pad: s.kernel as usize / 2,
    };
    let (c, k) = (s.channels as usize, s.kernel as usize);
    let weight = w.stored("stem.conv.weight", &[c, 3, k, k]);
    let bias = w.stored("stem.conv.bias", &[c]);
    let x = w.b.conv("stem.conv", &pixels, &weight, Some(&bias), stem);
    let mut x = w.b.node("Relu", "stem.relu", &[&x], &[]);
    if s.max_pool {
        x = w.b.max_pool("stem.maxpool", &x);
    }
    for (block, parts) in g.kept(&path) {
        x = w.bottleneck(block, &parts, &x);
    }
    let c = g.blocks.last().map_or(s.channels, |b| b.out) as usize;
    let (_, sides) = g.sides();
    let hw = sides.last().map_or(0, |&s| (s * s) as usize);
    w.b.map_outputs(&x, c, hw);
    let doc = format!(
        "SDR sub-network {}: BatchNorm folded, mid channels gathered (shared, then the chosen group)",
        spec.id()
    );
    w.b.finish(&doc)
}

impl Writer<'_> {
    /// The stored piece `name` as an initializer of the same name.
    fn stored(&mut self, name: &str, shape: &[usize]) -> Value {
        let data = (self.locate)(name);
        self.b.external(name, shape, data)
    }

    /// `pieces` joined along `axis` (one piece is used as is).
    fn concat(&mut self, name: &str, pieces: Vec<Value>, axis: i64) -> Value {
        if pieces.len() == 1 {
            return pieces.into_iter().next().expect("one piece");
        }
        let refs: Vec<&Value> = pieces.iter().collect();
        self.b
            .node("Concat", name, &refs, &[("axis", Attr::Int(axis))])
    }

    /// A folded conv of `block` on `x`: its weight the row pieces stacked,
    /// each the column pieces side by side; its bias the row pieces'.
    fn conv(
        &mut self,
        block: &Block,
        conv: &str,
        x: &Value,
        (rows, cols): (Axis<'_>, Axis<'_>),
        shape: ConvShape,
    ) -> Value {
        let k = shape.kernel;
        let cols = cols.pieces(block);
        let rows = rows.pieces(block);
        let mut stacked = Vec::new();
        let mut biases = Vec::new();
        for &(r, height) in &rows {
            let side = cols
                .iter()
                .map(|&(c, width)| {
                    self.stored(&piece(conv, "weight", r, c), &[height, width, k, k])
                })
                .collect();
            let row_name = match r {
                Some(p) => format!("{conv}.weight.{}", part(p)),
                None => format!("{conv}.weight"),
            };
            stacked.push(self.concat(&row_name, side, 1));
            biases.push(self.stored(&piece(conv, "bias", r, None), &[height]));
        }
        let weight = self.concat(&format!("{conv}.weight"), stacked, 0);
        let bias = self.concat(&format!("{conv}.bias"), biases, 0);
        self.b.conv(conv, x, &weight, Some(&bias), shape)
    }

    fn bottleneck(&mut self, block: &Block, parts: &[usize], x: &Value) -> Value {
        let m = &block.module;
        let (cin, out) = (block.cin as usize, block.out as usize);
        let mid = Axis::Parts(parts);
        let one = ConvShape {
            kernel: 1,
            stride: 1,
            pad: 0,
        };
        let three = ConvShape {
            kernel: 3,
            stride: block.stride as usize,
            pad: 1,
        };
        let h = self.conv(
            block,
            &format!("{m}.conv1"),
            x,
            (mid, Axis::Whole(cin)),
            one,
        );
        let h = self.b.node("Relu", &format!("{m}.relu1"), &[&h], &[]);
        let h = self.conv(block, &format!("{m}.conv2"), &h, (mid, mid), three);
        let h = self.b.node("Relu", &format!("{m}.relu2"), &[&h], &[]);
        let h = self.conv(
            block,
            &format!("{m}.conv3"),
            &h,
            (Axis::Whole(out), mid),
            one,
        );
        let identity = if block.shortcut {
            let shortcut = ConvShape {
                stride: block.stride as usize,
                ..one
            };
            let whole = (Axis::Whole(out), Axis::Whole(cin));
            self.conv(block, &format!("{m}.downsample"), x, whole, shortcut)
        } else {
            x.clone()
        };
        let sum = self
            .b
            .node("Add", &format!("{m}.residual"), &[&h, &identity], &[]);
        self.b.node("Relu", &format!("{m}.relu"), &[&sum], &[])
    }
}
