//! Families (elastic POA grids, SDR routes): each module is the one place
//! that knows its architecture's grid, slicing rules, costs and graph. This module is the
//! seam the plan, the bundle writer and the CLI use without knowing any.

mod error;
pub mod resnet;
pub mod sdr;
pub mod slice;
mod spec;
pub mod swin;
pub mod vit;

use std::fmt;

use onnx_protobuf::ModelProto;
use tailor_runtime::manifest::TeacherConfig;

use crate::checkpoint::Checkpoint;
use crate::config::{ConfigError, Overrides, PoaConfig};
use crate::onnx::ExternalData;
pub use error::FamilyError;
use slice::{Computed, TensorCut};
pub use spec::{Depths, Route, SdrPath, SubnetSpec};

/// What every family answers about its teacher and its sub-networks.
pub trait Family: fmt::Debug + Send + Sync {
    /// The manifest's `teacher.family`: `"vit"`, `"swin"`, `"resnet"`, `"sdr"`.
    fn name(&self) -> &'static str;

    /// One line on the teacher's shape, for the user.
    fn summary(&self) -> String;

    /// The geometry as the manifest records it.
    fn config(&self) -> TeacherConfig;

    /// Checks that `spec` is a sub-network of this teacher and returns it
    /// complete (an SDR id names no width or depths: the teacher's are
    /// filled in).
    fn check(&self, spec: &SubnetSpec) -> Result<SubnetSpec, FamilyError>;

    /// Parameters, MACs and the activation-memory estimate of `spec`.
    fn costs(&self, spec: &SubnetSpec) -> Costs;

    /// What the manifest records of `spec` besides its costs.
    fn layout(&self, spec: &SubnetSpec) -> Layout;

    /// The deepest sub-network of `width`: what its shared slice holds.
    fn full_depth(&self, width: u32) -> SubnetSpec;

    /// Every teacher tensor width `width`'s shared slice holds, in file
    /// order, with its cut: the full depth, so all depths share one file.
    fn width_slice(&self, width: u32) -> Vec<TensorCut>;

    /// Tensors of width `width`'s file computed from several teacher
    /// tensors rather than cut from one (SDR: BatchNorm folded into the
    /// convs), written after the cuts.
    fn computed(&self, _ckpt: &Checkpoint, _width: u32) -> Result<Vec<Computed>, FamilyError> {
        Ok(Vec::new())
    }

    /// The ONNX graph of `spec`; `locate` says where each sliced teacher
    /// tensor (by canonical name) lies in the width's weight file.
    fn graph(&self, spec: &SubnetSpec, locate: &dyn Fn(&str) -> ExternalData) -> ModelProto;
}

/// A sub-network's size and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Costs {
    pub params: u64,
    /// Multiply-accumulates per image at the teacher's resolution.
    pub macs: u64,
    /// Estimated peak activation bytes at batch 1.
    pub activation_bytes: u64,
}

/// The manifest's family-specific fields of one sub-network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Blocks kept per stage, for staged families.
    pub depths: Option<Vec<u32>>,
    /// Bottleneck mid widths per stage (ResNet).
    pub mid_widths: Option<Vec<u32>>,
    /// Teacher blocks kept, numbered across stages.
    pub block_idx: Vec<u16>,
    /// An SDR path's group per SDR block.
    pub route: Option<Vec<u8>>,
}

/// A teacher read as its family, with the grid to export.
#[derive(Debug)]
pub struct Teacher {
    pub family: Box<dyn Family>,
    /// Every sub-network of the grid, before any limits.
    pub grid: Vec<SubnetSpec>,
    /// Facts that came from neither a config, the tensors nor a flag.
    pub assumptions: Vec<String>,
}

/// Why a teacher could not be read as a family.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Tensors(#[from] FamilyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Reads the teacher as SDR when a routing spec lies beside it, else as the
/// family its config's `student.arch` names (POA's own rule: the family's
/// name appears in it) or, without one, its tensor names show.
pub fn open(
    ckpt: &Checkpoint,
    config: Option<&PoaConfig>,
    overrides: &Overrides,
) -> Result<Teacher, OpenError> {
    if let Some(spec) = sdr::spec_beside(ckpt.path()) {
        return sdr::open(ckpt, &spec, overrides);
    }
    match config.and_then(|c| Some((c, c.arch()?))) {
        Some((_, arch)) if arch.contains("vit") => vit::open(ckpt, config, overrides),
        Some((_, arch)) if arch.contains("resnet") => resnet::open(ckpt, config, overrides),
        Some((_, arch)) if arch.contains("swin") => swin::open(ckpt, config, overrides),
        Some((c, arch)) => Err(ConfigError::Invalid(format!(
            "{}: student.arch `{arch}` is not a family this exporter reads ({KNOWN})",
            c.path.display()
        ))
        .into()),
        None if resnet::detect(ckpt) => resnet::open(ckpt, config, overrides),
        None if swin::is_swin(ckpt) => swin::open(ckpt, config, overrides),
        None => vit::open(ckpt, config, overrides),
    }
}

/// Refuses the ViT grid flags for a teacher whose grid they do not shape.
pub(crate) fn refuse_grid_flags(
    overrides: &Overrides,
    teacher: &str,
    why: &str,
) -> Result<(), ConfigError> {
    for (flag, given) in [
        ("--widths", overrides.widths.is_some()),
        ("--depths", overrides.depths.is_some()),
        ("--head-dim", overrides.head_dim.is_some()),
    ] {
        if given {
            return Err(ConfigError::Invalid(format!(
                "{flag} does not apply to {teacher} teacher ({why}): use --subnets"
            )));
        }
    }
    Ok(())
}

/// Refuses an SDR id (`full`, `r0.1`) for a family whose sub-networks are
/// a width and depths.
pub(crate) fn refuse_sdr_id(spec: &SubnetSpec, family: &'static str) -> Result<(), FamilyError> {
    match spec.path {
        Some(_) => Err(FamilyError::SdrId {
            id: spec.id(),
            family,
        }),
        None => Ok(()),
    }
}

/// A width that exists in an attention family's grid: within the teacher's
/// and a whole number of heads.
pub(crate) fn check_head_width(
    width: u32,
    max_width: u32,
    head_dim: u32,
) -> Result<(), FamilyError> {
    if width == 0 || width > max_width {
        return Err(FamilyError::WidthRange {
            width,
            max: max_width,
        });
    }
    if !width.is_multiple_of(head_dim) {
        return Err(FamilyError::WidthNotMultiple { width, head_dim });
    }
    Ok(())
}

/// Each stage's depth within its grid bounds `(min, max)`, stage by stage.
pub(crate) fn check_stage_depths(
    depths: &[u32],
    bounds: impl IntoIterator<Item = (u32, u32)>,
) -> Result<(), FamilyError> {
    for (stage, (&depth, (min, max))) in depths.iter().zip(bounds).enumerate() {
        if !(min..=max).contains(&depth) {
            return Err(FamilyError::StageDepth {
                stage: stage + 1,
                depth,
                min,
                max,
            });
        }
    }
    Ok(())
}

/// The `student.arch` values [`open`] reads, for errors.
const KNOWN: &str = "vit_*, resnet_dynamic, swin_*";

/// A transformer's geometry check: heads of `head_dim` fill its width and
/// the image is whole patches.
pub(crate) fn check_heads_and_patches(
    max_width: u32,
    head_dim: u32,
    image_size: u32,
    patch_size: u32,
) -> Result<(), FamilyError> {
    if head_dim == 0 || !max_width.is_multiple_of(head_dim) {
        return Err(FamilyError::HeadDim {
            head_dim,
            max_width,
        });
    }
    if image_size == 0 || !image_size.is_multiple_of(patch_size) {
        return Err(FamilyError::ImageSize {
            image: image_size,
            patch: patch_size,
        });
    }
    Ok(())
}

/// The blocks a stage of `max` blocks keeps at depth `depth`, POA's rule for
/// every family: numpy's `linspace(0, max-1, depth).astype(int64)`, which is
/// not always the paper's floor formula (max = 31, depth = 23 differ).
pub fn linspace_blocks(max: u32, depth: u32) -> Vec<u16> {
    let (lmax, l) = (max as usize, depth as usize);
    if l == 1 {
        return vec![0];
    }
    let step = (lmax - 1) as f64 / (l - 1) as f64;
    (0..l)
        .map(|j| if j == l - 1 { lmax - 1 } else { (j as f64 * step) as usize } as u16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::linspace_blocks;

    #[test]
    fn depth_indices_follow_numpy_linspace() {
        assert_eq!(
            linspace_blocks(24, 12),
            [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 23]
        );
        assert_eq!(linspace_blocks(24, 1), [0]);
        assert_eq!(linspace_blocks(24, 24), (0..24).collect::<Vec<u16>>());
        // max = 31, depth = 23: numpy keeps block 14 at j = 11 where the
        // paper's floor((max-1)·j/(depth-1)) would keep 15; every other
        // index agrees.
        let numpy = linspace_blocks(31, 23);
        let floor: Vec<u16> = (0..23).map(|j| (30 * j / 22) as u16).collect();
        assert_eq!((numpy[11], floor[11]), (14, 15));
        assert_eq!(numpy.iter().zip(&floor).filter(|(a, b)| a != b).count(), 1);
    }
}
