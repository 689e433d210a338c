//! The ONNX graph of one ResNet sub-network, built from the shared layers.

use std::collections::HashMap;

use onnx_protobuf::ModelProto;

use super::{Block, Geometry, GN_EPS, STAGES, STEM_KERNEL};
use crate::family::SubnetSpec;
use crate::onnx::layers::{ConvShape, GroupNorm};
use crate::onnx::{ExternalData, GraphBuilder, Value};

/// Emits the ONNX graph of one sub-network.
pub(super) struct GraphWriter<'a> {
    g: &'a Geometry,
    spec: SubnetSpec,
    mids: [u32; STAGES],
    /// Each sliced tensor's shape, by canonical teacher name.
    shapes: HashMap<String, Vec<usize>>,
    locate: &'a dyn Fn(&str) -> ExternalData,
    b: GraphBuilder,
}

impl<'a> GraphWriter<'a> {
    pub(super) fn new(
        g: &'a Geometry,
        spec: &SubnetSpec,
        locate: &'a dyn Fn(&str) -> ExternalData,
    ) -> Self {
        GraphWriter {
            g,
            spec: *spec,
            mids: g.mid_widths(spec.width),
            shapes: g
                .tensors(spec.width)
                .into_iter()
                .map(|(name, _, cut)| (name, cut.shape().to_vec()))
                .collect(),
            locate,
            b: GraphBuilder::new(&spec.id()),
        }
    }

    /// The sliced teacher tensor `teacher` (canonical name), `name` in the graph.
    fn weight(&mut self, name: &str, teacher: &str) -> Value {
        let data = (self.locate)(teacher);
        self.b.external(name, &self.shapes[teacher], data)
    }

    /// conv (no bias) → GroupNorm, named after the teacher's modules.
    fn conv_norm(
        &mut self,
        name: &str,
        x: &Value,
        conv: &str,
        norm: &str,
        shape: ConvShape,
        gn: &GroupNorm,
    ) -> Value {
        let w = self.weight(&format!("{name}.conv.weight"), conv);
        let x = self.b.conv(&format!("{name}.conv"), x, &w, None, shape);
        let scale = self.weight(&format!("{name}.norm.weight"), &format!("{norm}weight"));
        let bias = self.weight(&format!("{name}.norm.bias"), &format!("{norm}bias"));
        self.b
            .group_norm(&format!("{name}.norm"), &x, gn, &scale, &bias)
    }

    fn relu(&mut self, name: &str, x: &Value) -> Value {
        self.b.node("Relu", name, &[x], &[])
    }

    pub(super) fn build(mut self) -> ModelProto {
        let side = self.g.image_size as usize;
        let pixels = self.b.pixel_values(side);
        let gn = GroupNorm::new(&mut self.b, self.g.groups as usize, GN_EPS);
        let stem = ConvShape {
            kernel: STEM_KERNEL as usize,
            stride: 2,
            pad: 3,
        };
        let x = self.conv_norm("stem", &pixels, "conv1.weight", "norm1.", stem, &gn);
        let x = self.relu("stem.relu", &x);
        let mut x = self.b.max_pool("stem.maxpool", &x);
        let kept = self.g.kept(self.spec.depths.as_slice());
        let mut renumbered = [0; STAGES];
        for block in kept.iter().copied() {
            let j = renumbered[block.stage];
            renumbered[block.stage] += 1;
            x = self.bottleneck(&format!("layer{}.{j}", block.stage + 1), block, &x, &gn);
        }

        let c = self.g.out_channels(STAGES - 1) as usize;
        let (_, sides) = self.g.sides();
        let hw = (sides[STAGES - 1] as usize).pow(2);
        self.b.map_outputs(&x, c, hw);
        let doc = format!(
            "POA elastic ResNet sub-network {}: mid widths {:?}, blocks {:?} of {:?}",
            self.spec.id(),
            self.mids,
            kept.iter()
                .map(|b| (b.stage + 1, b.index))
                .collect::<Vec<_>>(),
            self.g.max_depths
        );
        self.b.finish(&doc)
    }

    /// Teacher block `block` as graph block `n`.
    fn bottleneck(&mut self, n: &str, block: Block, x: &Value, gn: &GroupNorm) -> Value {
        let p = block.prefix();
        let one = ConvShape {
            kernel: 1,
            stride: 1,
            pad: 0,
        };
        let stride = if block.index == 0 {
            self.g.strides[block.stage] as usize
        } else {
            1
        };
        let h = self.conv_norm(
            &format!("{n}.1"),
            x,
            &format!("{p}conv1.conv.weight"),
            &format!("{p}norm1."),
            one,
            gn,
        );
        let h = self.relu(&format!("{n}.1.relu"), &h);
        let three = ConvShape {
            kernel: 3,
            stride,
            pad: 1,
        };
        let h = self.conv_norm(
            &format!("{n}.2"),
            &h,
            &format!("{p}conv2.conv.weight"),
            &format!("{p}norm2."),
            three,
            gn,
        );
        let h = self.relu(&format!("{n}.2.relu"), &h);
        let h = self.conv_norm(
            &format!("{n}.3"),
            &h,
            &format!("{p}conv3.conv.weight"),
            &format!("{p}norm3."),
            one,
            gn,
        );
        let identity = if block.index == 0 && self.g.has_shortcut(block.stage) {
            let shortcut = ConvShape { stride, ..one };
            self.conv_norm(
                &format!("{n}.downsample"),
                x,
                &format!("{p}downsample.0.weight"),
                &format!("{p}downsample.1."),
                shortcut,
                gn,
            )
        } else {
            x.clone()
        };
        let sum = self
            .b
            .node("Add", &format!("{n}.residual"), &[&h, &identity], &[]);
        self.relu(&format!("{n}.relu"), &sum)
    }
}
