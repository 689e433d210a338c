//! Why a teacher is not of a family's shape, or a request is outside its grid.

/// A teacher that does not have its family's shape, or a sub-network outside its grid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FamilyError {
    #[error("missing tensor `{name}` (is this a {family} checkpoint?)")]
    Missing { name: String, family: &'static str },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{what} are not numbered 0..{count}: block {missing} is missing")]
    BlockGap {
        what: String,
        count: u32,
        missing: u32,
    },
    #[error("width {width} is not a multiple of head_dim {head_dim}")]
    WidthNotMultiple { width: u32, head_dim: u32 },
    #[error("width {width} is outside 1..={max} (the teacher's width)")]
    WidthRange { width: u32, max: u32 },
    #[error("depth {depth} is outside 1..={max} (the teacher's depth)")]
    DepthRange { depth: u32, max: u32 },
    #[error("{family} sub-networks have {expected} stage depth(s), not {found}")]
    Stages {
        family: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("stage-1 mid width {width} is not one of the teacher's {allowed:?}")]
    MidWidth { width: u32, allowed: Vec<u32> },
    #[error("stage {stage} depth {depth} is outside the grid's {min}..={max} (it cannot keep {depth} blocks)")]
    StageDepth {
        stage: usize,
        depth: u32,
        min: u32,
        max: u32,
    },
    #[error("head_dim {head_dim} does not divide the teacher's width {max_width}")]
    HeadDim { head_dim: u32, max_width: u32 },
    #[error("image size {image} is not a multiple of the patch size {patch}")]
    ImageSize { image: u32, patch: u32 },
    #[error("{}: {problem}", path.display())]
    SdrSpec {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error("`{id}` is not an SDR sub-network: SDR teachers take `full` or a route such as r0.1")]
    NotSdrId { id: String },
    #[error("route `{id}` does not pick one of the teacher's groups in each SDR block (groups per block: {groups:?})")]
    Route { id: String, groups: Vec<u8> },
    #[error("`{id}` names an SDR sub-network, but this is a {family} teacher")]
    SdrId { id: String, family: &'static str },
}
