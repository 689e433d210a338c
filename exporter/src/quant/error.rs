//! Why a width's graphs could not be quantised. Nothing is written.

/// A graph or statistic the INT8 rewrite cannot use, named so the fix is clear.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("graph `{graph}` holds no graph body")]
    NoGraph { graph: String },
    #[error("graph `{graph}` targets opset {opset}; QDQ per channel needs opset 13 or later")]
    Opset { graph: String, opset: i64 },
    #[error("graph `{graph}`: tensor `{tensor}` reads {location}, not this width's {expected}")]
    Location {
        graph: String,
        tensor: String,
        location: String,
        expected: String,
    },
    #[error("graph `{graph}`: tensor `{tensor}` has bad external data: {problem}")]
    ExternalData {
        graph: String,
        tensor: String,
        problem: String,
    },
    #[error("graph `{graph}`: tensor `{tensor}` is {found}, expected float32")]
    NotFloat {
        graph: String,
        tensor: String,
        found: i32,
    },
    #[error(
        "graph `{graph}`: {op} `{node}` reads `{tensor}`, computed from constants rather than \
         stored (an SDR path's weight pieces joined by Concat): INT8 export of this family is not done yet"
    )]
    ComputedWeight {
        graph: String,
        op: String,
        node: String,
        tensor: String,
    },
    #[error("graph `{graph}`: {op} `{node}` takes a constant as its input {index}; only weights on input 1 are quantised")]
    WeightPosition {
        graph: String,
        op: String,
        node: String,
        index: usize,
    },
    #[error(
        "bytes {offset}..+{length} of the weight file are `{first}` quantised along axis {first_axis:?} \
         in one graph and `{second}` along axis {second_axis:?} in another"
    )]
    Conflict {
        offset: u64,
        length: u64,
        first: String,
        first_axis: Option<usize>,
        second: String,
        second_axis: Option<usize>,
    },
    #[error(
        "graph `{graph}`: no recorded range for activation `{tensor}`: run `exporter calibrate BUNDLE \
         --data DATA --ranges inner` first"
    )]
    NoRange { graph: String, tensor: String },
    #[error("graph `{graph}`: the name `{name}` the rewrite needs is already taken")]
    NameTaken { graph: String, name: String },
    #[error("the MSE calibrator needs a sample of activation `{tensor}`'s values")]
    NoSample { tensor: String },
    #[error(
        "graph `{graph}`: the fp16 rewrite does not handle operator {op} (`{node}`): whether it \
         must stay float32 is not decided, so no fp16 variant is written"
    )]
    Fp16Op {
        graph: String,
        op: String,
        node: String,
    },
    #[error("tensor `{tensor}` holds values beyond float16's range (±65504)")]
    Fp16Range { tensor: String },
}
