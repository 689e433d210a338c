//! POA's elastic bottleneck ResNet (`resnet_dynamic`): every slicing rule,
//! the cost model and the ONNX graph of a sub-network, following POA's
//! dynamic forward exactly (see docs/exporter.md, "ResNet").
//!
//! The rules: only the bottleneck mid widths are elastic, one choice zipped
//! across the stages (stage i's mid width is 2^i times stage 1's); stage
//! widths, the stem and the shortcuts are never sliced. A block of mid width
//! m of max_mid keeps conv1 `[:m]`, conv2 `[:m, :m]`, conv3 `[:, :m]`,
//! norm1/norm2 `[:m]` with the SAME number of GroupNorm groups, and POA
//! multiplies the inputs of conv2 and conv3 (not conv1) by max_mid / m:
//! folded into their weights here. Each stage keeps POA's linspace blocks.

mod graph;
mod grid;

use onnx_protobuf::ModelProto;
use tailor_runtime::manifest::{PerStage, ResNetConfig, TeacherConfig};

use super::slice::{Cut, TensorCut};
use super::{linspace_blocks, Costs, Family, FamilyError, Layout, SubnetSpec};
use crate::onnx::ExternalData;
use graph::GraphWriter;
pub use grid::{detect, open};

/// Stages of every POA ResNet.
pub const STAGES: usize = 4;
/// Output channels of a stage per mid channel at the narrowest choice.
const EXPANSION: u32 = 4;
/// GroupNorm epsilon of POA's ResNets (`F.group_norm`'s default).
const GN_EPS: f32 = 1e-5;
/// The stem: a 7×7/2 convolution padded by 3, then a 3×3/2 max pool padded by 1.
const STEM_KERNEL: u32 = 7;

/// The shape of a ResNet teacher that every sub-network shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub stem_channels: u32,
    /// Stage 1's narrowest mid width; stage i outputs `4 · base · 2^i`.
    pub base_channels: u32,
    /// Groups of every GroupNorm, whatever its width.
    pub groups: u32,
    pub min_depths: [u32; STAGES],
    pub max_depths: [u32; STAGES],
    /// Stride of each stage's first block (on its 3×3 conv and shortcut).
    pub strides: [u32; STAGES],
    pub image_size: u32,
}

/// POA's released ResNet config (`resnet_ssl_default_config.yaml`): the
/// 465-sub-network grid.
pub const POA_RESNET: Geometry = Geometry {
    stem_channels: 64,
    base_channels: 64,
    groups: 32,
    min_depths: [3, 4, 6, 3],
    max_depths: [3, 8, 36, 3],
    strides: [1, 2, 2, 2],
    image_size: 224,
};

/// One block of one stage, as the teacher numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    stage: usize,
    index: u32,
}

impl Block {
    /// The canonical name prefix, e.g. `layer3.layers.7.`.
    fn prefix(self) -> String {
        format!("layer{}.layers.{}.", self.stage + 1, self.index)
    }
}

impl Geometry {
    pub fn out_channels(&self, stage: usize) -> u32 {
        (EXPANSION * self.base_channels) << stage
    }

    pub fn in_channels(&self, stage: usize) -> u32 {
        match stage {
            0 => self.stem_channels,
            s => self.out_channels(s - 1),
        }
    }

    /// The widest mid width of a stage: half its output channels.
    pub fn max_mid(&self, stage: usize) -> u32 {
        self.out_channels(stage) / 2
    }

    /// Stage 1's mid width choices: base ..= 2·base in steps of the groups
    /// (POA's `range(out/4, out/2 + 1, groups · 2^i)`, zipped across stages).
    pub fn widths(&self) -> Vec<u32> {
        (self.base_channels..=2 * self.base_channels)
            .step_by(self.groups as usize)
            .collect()
    }

    /// Every stage's mid width for stage-1 mid width `width`.
    pub fn mid_widths(&self, width: u32) -> [u32; STAGES] {
        std::array::from_fn(|s| width << s)
    }

    /// Whether a stage's first block has a 1×1 conv + GroupNorm shortcut.
    fn has_shortcut(&self, stage: usize) -> bool {
        self.strides[stage] != 1 || self.in_channels(stage) != self.out_channels(stage)
    }

    /// Side of the stem's output (after the max pool) and of each stage's output.
    fn sides(&self) -> (u32, [u32; STAGES]) {
        let conv = |x: u32, k: u32, s: u32, p: u32| (x + 2 * p - k) / s + 1;
        let stem = conv(conv(self.image_size, STEM_KERNEL, 2, 3), 3, 2, 1);
        let mut side = stem;
        let stages = std::array::from_fn(|s| {
            side = conv(side, 3, self.strides[s], 1);
            side
        });
        (stem, stages)
    }

    /// The teacher blocks kept at `depths`, stage by stage.
    fn kept(&self, depths: &[u32]) -> Vec<Block> {
        (0..STAGES)
            .flat_map(|stage| {
                linspace_blocks(self.max_depths[stage], depths[stage])
                    .into_iter()
                    .map(move |i| Block {
                        stage,
                        index: i.into(),
                    })
            })
            .collect()
    }

    /// Parameters, MACs and the activation estimate: at batch 1, the
    /// largest of the stem's maps and each kept block's live maps (its
    /// input, the two mid maps, its output and the shortcut), plus the image.
    fn resnet_costs(&self, width: u32, depths: &[u32]) -> Costs {
        let (stem_side, sides) = self.sides();
        let stem_conv_side = (self.image_size + 6 - STEM_KERNEL) / 2 + 1;
        let area = |s: u32| u64::from(s) * u64::from(s);
        let c = u64::from(self.stem_channels);
        let mut params = 3 * 49 * c + 2 * c;
        let mut macs = 3 * 49 * c * area(stem_conv_side);
        let mut peak = c * (area(stem_conv_side) + area(stem_side));
        let mids = self.mid_widths(width);
        for b in self.kept(depths) {
            let s = b.stage;
            let (cin, out, mid) = (
                u64::from(if b.index == 0 {
                    self.in_channels(s)
                } else {
                    self.out_channels(s)
                }),
                u64::from(self.out_channels(s)),
                u64::from(mids[s]),
            );
            let side_in = if b.index == 0 {
                match s {
                    0 => stem_side,
                    _ => sides[s - 1],
                }
            } else {
                sides[s]
            };
            let (a_in, a_out) = (area(side_in), area(sides[s]));
            params += cin * mid + 9 * mid * mid + mid * out + 4 * mid + 2 * out;
            macs += (cin * mid) * a_in + (9 * mid * mid + mid * out) * a_out;
            let shortcut = b.index == 0 && self.has_shortcut(s);
            if shortcut {
                params += cin * out + 2 * out;
                macs += cin * out * a_out;
            }
            let live = cin * a_in + mid * a_in + mid * a_out + 2 * out * a_out;
            peak = peak.max(live);
        }
        Costs {
            params,
            macs,
            activation_bytes: 4 * (peak + 3 * area(self.image_size)),
        }
    }

    /// Every tensor of the teacher with its shape, in file order.
    pub fn teacher_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.tensors(self.base_channels)
            .into_iter()
            .map(|(name, shape, _)| (name, shape))
            .collect()
    }

    /// Every teacher tensor of the full-depth slice of `width`, in file
    /// order, with the shape it has in the teacher and its cut.
    // A cut is a list of ranges; here every list holds one.
    #[allow(clippy::single_range_in_vec_init)]
    fn tensors(&self, width: u32) -> Vec<(String, Vec<usize>, Cut)> {
        let channels = |n: u32| vec![n as usize];
        let stem = self.stem_channels;
        let mut out = vec![
            whole("conv1.weight", vec![stem as usize, 3, 7, 7]),
            whole("norm1.weight", channels(stem)),
            whole("norm1.bias", channels(stem)),
        ];
        let mids = self.mid_widths(width);
        for (stage, &mid) in mids.iter().enumerate() {
            let max_mid = self.max_mid(stage) as usize;
            let out_ch = self.out_channels(stage) as usize;
            let mid = mid as usize;
            // POA multiplies conv2's and conv3's inputs by max_mid / mid.
            let a = (max_mid as f64 / mid as f64) as f32;
            for index in 0..self.max_depths[stage] {
                let b = Block { stage, index };
                let p = b.prefix();
                let cin = if index == 0 {
                    self.in_channels(stage)
                } else {
                    out_ch as u32
                } as usize;
                let norm = |name: &str, n: usize, keep: usize| {
                    (format!("{p}{name}"), vec![n], Cut::channels(keep))
                };
                out.push((
                    format!("{p}conv1.conv.weight"),
                    vec![max_mid, cin, 1, 1],
                    Cut::matrix(cin, vec![0..mid], vec![0..cin], 1.0, vec![mid, cin, 1, 1]),
                ));
                out.push(norm("norm1.weight", max_mid, mid));
                out.push(norm("norm1.bias", max_mid, mid));
                out.push((
                    format!("{p}conv2.conv.weight"),
                    vec![max_mid, max_mid, 3, 3],
                    Cut::matrix(
                        9 * max_mid,
                        vec![0..mid],
                        vec![0..9 * mid],
                        a,
                        vec![mid, mid, 3, 3],
                    ),
                ));
                out.push(norm("norm2.weight", max_mid, mid));
                out.push(norm("norm2.bias", max_mid, mid));
                out.push((
                    format!("{p}conv3.conv.weight"),
                    vec![out_ch, max_mid, 1, 1],
                    Cut::matrix(
                        max_mid,
                        vec![0..out_ch],
                        vec![0..mid],
                        a,
                        vec![out_ch, mid, 1, 1],
                    ),
                ));
                out.push(norm("norm3.weight", out_ch, out_ch));
                out.push(norm("norm3.bias", out_ch, out_ch));
                if index == 0 && self.has_shortcut(stage) {
                    out.push(whole(
                        &format!("{p}downsample.0.weight"),
                        vec![out_ch, cin, 1, 1],
                    ));
                    out.push(norm("downsample.1.weight", out_ch, out_ch));
                    out.push(norm("downsample.1.bias", out_ch, out_ch));
                }
            }
        }
        out
    }
}

/// A tensor no width touches: kept whole, in its own shape.
fn whole(name: &str, shape: Vec<usize>) -> (String, Vec<usize>, Cut) {
    let cut = if shape.len() == 1 {
        Cut::channels(shape[0])
    } else {
        Cut::whole(&shape)
    };
    (name.to_owned(), shape, cut)
}

fn per_stage(values: &[u32]) -> PerStage {
    PerStage::from_slice(values).expect("four stages fit")
}

impl Family for Geometry {
    fn name(&self) -> &'static str {
        "resnet"
    }

    fn summary(&self) -> String {
        format!(
            "ResNet stages {:?}..{:?} mid widths {:?} stem {} GroupNorm({}) image {}",
            self.min_depths,
            self.max_depths,
            self.widths(),
            self.stem_channels,
            self.groups,
            self.image_size
        )
    }

    fn config(&self) -> TeacherConfig {
        TeacherConfig::ResNet(ResNetConfig {
            stem_channels: self.stem_channels,
            base_channels: self.base_channels,
            num_gn_groups: self.groups,
            min_depths: per_stage(&self.min_depths),
            max_depths: per_stage(&self.max_depths),
            strides: per_stage(&self.strides),
            image_size: self.image_size,
        })
    }

    fn check(&self, s: &SubnetSpec) -> Result<SubnetSpec, FamilyError> {
        super::refuse_sdr_id(s, "ResNet")?;
        let depths = s.depths.as_slice();
        if depths.len() != STAGES {
            return Err(FamilyError::Stages {
                family: "ResNet",
                expected: STAGES,
                found: depths.len(),
            });
        }
        if !self.widths().contains(&s.width) {
            return Err(FamilyError::MidWidth {
                width: s.width,
                allowed: self.widths(),
            });
        }
        let bounds = self.min_depths.iter().copied().zip(self.max_depths);
        super::check_stage_depths(depths, bounds)?;
        Ok(*s)
    }

    fn costs(&self, s: &SubnetSpec) -> Costs {
        self.resnet_costs(s.width, s.depths.as_slice())
    }

    fn layout(&self, s: &SubnetSpec) -> Layout {
        let first: Vec<u32> = self
            .max_depths
            .iter()
            .scan(0, |start, &max| {
                let first = *start;
                *start += max;
                Some(first)
            })
            .collect();
        Layout {
            depths: Some(s.depths.as_slice().to_vec()),
            mid_widths: Some(self.mid_widths(s.width).to_vec()),
            block_idx: self
                .kept(s.depths.as_slice())
                .iter()
                .map(|b| (first[b.stage] + b.index) as u16)
                .collect(),
            route: None,
        }
    }

    fn full_depth(&self, width: u32) -> SubnetSpec {
        SubnetSpec {
            width,
            depths: super::Depths::new(&self.max_depths).expect("four stages"),
            path: None,
        }
    }

    fn width_slice(&self, width: u32) -> Vec<TensorCut> {
        self.tensors(width)
            .into_iter()
            .map(|(name, _, cut)| TensorCut { name, cut })
            .collect()
    }

    fn graph(&self, s: &SubnetSpec, locate: &dyn Fn(&str) -> ExternalData) -> ModelProto {
        GraphWriter::new(self, s, locate).build()
    }
}
