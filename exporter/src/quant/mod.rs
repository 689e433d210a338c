//! INT8 and FP16 variants of a bundle's sub-networks. INT8 ones are
//! explicit QDQ graphs (QuantizeLinear/DequantizeLinear, the form ONNX
//! Runtime's CPU and QNN providers and TensorRT all consume); FP16 ones are
//! in [`half`].
//!
//! A width is quantised at once, as it is exported: every graph of width W
//! reads `w<W>.int8.bin` ([`int8_location`]), which holds each tensor of
//! `w<W>.bin` the graphs read exactly once, so depth variants share it.
//! Weights are symmetric int8 per output channel; the activations a
//! MatMul, Gemm or Conv reads, and the outputs of Gemm and Conv, are
//! quantised per tensor from the ranges
//! `exporter calibrate --ranges inner` recorded, clipped by a
//! [`Calibrator`] and encoded as the engine wants ([`Encoding`]).
//! LayerNorm, Softmax, GELU and GroupNorm stay in float.

mod activation;
mod error;
mod external;
mod graph;
pub mod half;
mod store;
pub mod variants;
pub mod weights;

use std::collections::{BTreeMap, HashMap};

use onnx_protobuf::ModelProto;
use tailor_calibration::ranges::Range;

pub use activation::{Calibrator, Encoding, QParams, MSE_CANDIDATES};
pub use error::QuantError;
pub use half::{fp16_location, fp16_width};

/// One sub-network of the width and what calibration observed of it.
#[derive(Debug, Clone, Copy)]
pub struct Subnet<'a> {
    pub id: &'a str,
    /// Its fp32 graph, as the bundle holds it.
    pub model: &'a ModelProto,
    /// Its activations' ranges by ONNX tensor name (the ranges file's
    /// entry for this sub-network).
    pub ranges: &'a BTreeMap<String, Range>,
    /// Values drawn from each activation (signed), for [`Calibrator::Mse`].
    pub samples: Option<&'a BTreeMap<String, Vec<f32>>>,
}

/// The int8 or fp16 form of one width.
#[derive(Debug, Clone)]
pub struct Width {
    /// The weight file's path relative to the graphs,
    /// `weights/w<W>.int8.bin` or `weights/w<W>.fp16.bin`.
    pub location: String,
    /// Its bytes: for int8 the same for every calibrator and encoding.
    pub bytes: Vec<u8>,
    /// The graphs, in the order of the sub-networks given.
    pub graphs: Vec<ModelProto>,
}

/// `weights/w<W>.int8.bin` for the fp32 file `weights/w<W>.bin`.
pub fn int8_location(fp32: &str) -> String {
    let stem = fp32.strip_suffix(".bin").unwrap_or(fp32);
    format!("{stem}.int8.bin")
}

/// Whether graph `id` can be quantised (its family's operators, opset and
/// weights), before any data runs: a refused family fails here with the
/// reason, not after calibration.
pub fn check(id: &str, model: &ModelProto, location: &str) -> Result<(), QuantError> {
    graph::scan(id, model, location).map(drop)
}

/// Quantises every sub-network of one width. `fp32` is the width's weight
/// file, which the graphs read as `location`.
pub fn quantize_width(
    fp32: &[u8],
    location: &str,
    subnets: &[Subnet<'_>],
    calibrator: Calibrator,
    encoding: Encoding,
) -> Result<Width, QuantError> {
    let scans = subnets
        .iter()
        .map(|s| graph::scan(s.id, s.model, location))
        .collect::<Result<Vec<_>, _>>()?;
    let mut stored = BTreeMap::new();
    for scan in &scans {
        scan.collect(&mut stored)?;
    }
    let int8 = int8_location(location);
    let layout = store::lay_out(fp32, &int8, &stored)?;
    let graphs = subnets
        .iter()
        .zip(&scans)
        .map(|(subnet, scan)| {
            let qparams = scan
                .activations()
                .into_iter()
                .filter_map(|name| {
                    let range = subnet.ranges.get(name)?;
                    let sample = subnet.samples.and_then(|s| s.get(name)).map(Vec::as_slice);
                    Some(
                        calibrator
                            .qparams(name, range, sample, encoding)
                            .map(|q| (name, q)),
                    )
                })
                .collect::<Result<HashMap<_, _>, _>>()?;
            scan.rewrite(&layout.placed, &qparams)
        })
        .collect::<Result<_, _>>()?;
    Ok(Width {
        location: int8,
        bytes: layout.bytes,
        graphs,
    })
}

#[cfg(test)]
mod tests;
