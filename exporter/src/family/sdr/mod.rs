//! SDR teachers (Scalable Dynamic Routing): a BatchNorm ResNet whose SDR
//! blocks split their bottleneck mid channels into shared channels and
//! individual groups; a path picks one group per SDR block and computes on
//! shared ∪ that group (docs/sdr.md). Every path and the whole SDRnet are
//! exported with their channels gathered and BatchNorm folded; each weight
//! piece (a part's rows × a part's columns) is stored once and a graph
//! composes its convs from the pieces.

mod fold;
mod graph;
mod grid;
mod routing;

use onnx_protobuf::ModelProto;
use tailor_runtime::manifest::{PerSdrBlock, SdrConfig, TeacherConfig};

use super::slice::{Computed, TensorCut};
use super::{Costs, Depths, Family, FamilyError, Layout, Route, SdrPath, SubnetSpec};
use crate::checkpoint::Checkpoint;
use crate::onnx::ExternalData;
pub use grid::open;
use routing::Parts;
pub use routing::{spec_beside, SPEC_FILE};

/// The checkpoints this family reads, as errors name them.
const FAMILY: &str = "SDR (docs/sdr.md)";

/// The error for a tensor the family needs and the checkpoint lacks.
fn missing(name: &str) -> FamilyError {
    FamilyError::Missing {
        name: name.into(),
        family: FAMILY,
    }
}

/// The stem: one conv (+BN, ReLU), optionally a 3×3/2 max pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stem {
    channels: u32,
    kernel: u32,
    stride: u32,
    max_pool: bool,
}

/// One bottleneck: conv1 1×1 → conv2 3×3 (carries the stride) → conv3 1×1,
/// each with BatchNorm, and a 1×1 conv + BN shortcut when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    /// The module name, e.g. `layer2.0`.
    module: String,
    cin: u32,
    mid: u32,
    out: u32,
    stride: u32,
    shortcut: bool,
    parts: Parts,
    /// Its place among the SDR blocks, if it is one.
    sdr: Option<usize>,
}

/// An SDR teacher's shape and routing.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    image_size: u32,
    bn_eps: f32,
    stem: Stem,
    blocks: Vec<Block>,
    /// Blocks per stage.
    depths: Depths,
}

impl Geometry {
    /// The blocks, each with the teacher parts of its mid channels that
    /// `path` keeps, in the graph's channel order.
    fn kept<'a>(&'a self, path: &SdrPath) -> impl Iterator<Item = (&'a Block, Vec<usize>)> + 'a {
        let route = match path {
            SdrPath::Full => None,
            SdrPath::Route(r) => Some(*r),
        };
        self.blocks.iter().map(move |b| {
            let parts = match (route, b.sdr) {
                (Some(r), Some(i)) => vec![0, 1 + usize::from(r.as_slice()[i])],
                _ => (0..=b.parts.groups.len()).collect(),
            };
            (b, parts)
        })
    }

    /// Channels of the parts `parts` of block `b`.
    fn channels(b: &Block, parts: &[usize]) -> u64 {
        let all: Vec<&[u32]> = b.parts.all().collect();
        parts.iter().map(|&p| all[p].len() as u64).sum()
    }

    /// Side of the stem's output and of each block's output.
    fn sides(&self) -> (u32, Vec<u32>) {
        let conv = |x: u32, k: u32, s: u32| (x + 2 * (k / 2) - k) / s + 1;
        let mut side = conv(self.image_size, self.stem.kernel, self.stem.stride);
        let stem_conv = side;
        if self.stem.max_pool {
            side = conv(side, 3, 2);
        }
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                side = conv(side, 3, b.stride);
                side
            })
            .collect();
        (stem_conv, blocks)
    }

    /// Individual groups of each SDR block, in network order (at most 255
    /// each, checked at open).
    fn route_groups(&self) -> Vec<u8> {
        self.blocks
            .iter()
            .filter(|b| b.sdr.is_some())
            .map(|b| b.parts.groups.len() as u8)
            .collect()
    }

    /// Every route, the first SDR block's group varying slowest.
    fn routes(&self) -> Vec<Route> {
        let counts = self.route_groups();
        let total: usize = counts.iter().map(|&g| usize::from(g)).product();
        (0..total)
            .map(|mut k| {
                let mut groups = vec![0u8; counts.len()];
                for (g, &n) in groups.iter_mut().zip(&counts).rev() {
                    *g = (k % usize::from(n)) as u8;
                    k /= usize::from(n);
                }
                Route::new(&groups).expect("the spec's block count fits a route")
            })
            .collect()
    }

    fn spec(&self, path: SdrPath) -> SubnetSpec {
        SubnetSpec {
            width: self.blocks.last().map_or(0, |b| b.out),
            depths: self.depths,
            path: Some(path),
        }
    }

    /// Parameters (folded: conv weights and one bias per output channel),
    /// MACs of the convs, and at batch 1 the largest block's live maps.
    fn sdr_costs(&self, path: &SdrPath) -> Costs {
        let (stem_side, sides) = self.sides();
        let area = |s: u32| u64::from(s) * u64::from(s);
        let s = &self.stem;
        let c = u64::from(s.channels);
        let k2 = u64::from(s.kernel * s.kernel);
        let mut params = 3 * k2 * c + c;
        let mut macs = 3 * k2 * c * area(stem_side);
        let mut peak = 3 * area(self.image_size) + c * area(stem_side);
        let mut side_in = if s.max_pool {
            (stem_side - 1) / 2 + 1
        } else {
            stem_side
        };
        for ((b, parts), &side) in self.kept(path).zip(&sides) {
            let (cin, m, out) = (
                u64::from(b.cin),
                Self::channels(b, &parts),
                u64::from(b.out),
            );
            let (a_in, a_out) = (area(side_in), area(side));
            params += cin * m + m + 9 * m * m + m + m * out + out;
            macs += cin * m * a_in + (9 * m * m + m * out) * a_out;
            if b.shortcut {
                params += cin * out + out;
                macs += cin * out * a_out;
            }
            peak = peak.max(cin * a_in + m * a_in + m * a_out + 2 * out * a_out);
            side_in = side;
        }
        Costs {
            params,
            macs,
            activation_bytes: 4 * peak,
        }
    }
}

impl Family for Geometry {
    fn name(&self) -> &'static str {
        "sdr"
    }

    fn summary(&self) -> String {
        format!(
            "SDR ResNet blocks {} ({} SDR, groups {:?}), stem {}, image {}: {} paths",
            self.depths,
            self.route_groups().len(),
            self.route_groups(),
            self.stem.channels,
            self.image_size,
            self.routes().len()
        )
    }

    fn config(&self) -> TeacherConfig {
        TeacherConfig::Sdr(SdrConfig {
            groups: PerSdrBlock::from_slice(&self.route_groups()).expect("checked at open"),
            image_size: self.image_size,
        })
    }

    fn check(&self, s: &SubnetSpec) -> Result<SubnetSpec, FamilyError> {
        let Some(path) = s.path else {
            return Err(FamilyError::NotSdrId { id: s.to_string() });
        };
        if let SdrPath::Route(r) = path {
            let counts = self.route_groups();
            if r.as_slice().len() != counts.len()
                || r.as_slice().iter().zip(&counts).any(|(g, n)| g >= n)
            {
                return Err(FamilyError::Route {
                    id: s.id(),
                    groups: counts,
                });
            }
        }
        Ok(self.spec(path))
    }

    fn costs(&self, s: &SubnetSpec) -> Costs {
        self.sdr_costs(&s.path.unwrap_or(SdrPath::Full))
    }

    fn layout(&self, s: &SubnetSpec) -> Layout {
        Layout {
            depths: Some(self.depths.as_slice().to_vec()),
            mid_widths: None,
            block_idx: (0..self.blocks.len() as u16).collect(),
            route: match s.path {
                Some(SdrPath::Route(r)) => Some(r.as_slice().to_vec()),
                _ => None,
            },
        }
    }

    fn full_depth(&self, _width: u32) -> SubnetSpec {
        self.spec(SdrPath::Full)
    }

    /// Nothing is cut: every piece is computed (BatchNorm folded).
    fn width_slice(&self, _width: u32) -> Vec<TensorCut> {
        Vec::new()
    }

    fn computed(&self, ckpt: &Checkpoint, _width: u32) -> Result<Vec<Computed>, FamilyError> {
        fold::pieces(self, ckpt)
    }

    fn graph(&self, s: &SubnetSpec, locate: &dyn Fn(&str) -> ExternalData) -> ModelProto {
        graph::build(self, s, locate)
    }
}
