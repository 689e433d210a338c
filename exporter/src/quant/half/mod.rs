//! FP16 variants: a width's weights stored once in float16
//! (`w<W>.fp16.bin` beside `w<W>.bin`, shared by every depth as the fp32
//! file is), and graphs computing in float16 between float32 inputs and
//! outputs, with the operators whose sums or exponentials overflow float16
//! (LayerNorm, Softmax, a normalisation's statistics) kept in float32.

mod rewrite;

use std::collections::BTreeMap;

use half::f16;
use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::ModelProto;

use super::external::{extent, Extent, FileBuilder};
use super::graph::body;
use super::{QuantError, Width};

/// `weights/w<W>.fp16.bin` for the fp32 file `weights/w<W>.bin`.
pub fn fp16_location(fp32: &str) -> String {
    let stem = fp32.strip_suffix(".bin").unwrap_or(fp32);
    format!("{stem}.fp16.bin")
}

/// The fp16 form of every sub-network of one width, `(id, fp32 graph)`.
/// `fp32` is the width's weight file, which the graphs read as `location`.
pub fn fp16_width(
    fp32: &[u8],
    location: &str,
    subnets: &[(&str, &ModelProto)],
) -> Result<Width, QuantError> {
    // Every stored tensor once, by its place in the fp32 file.
    let mut stored = BTreeMap::new();
    for &(id, model) in subnets {
        for t in &body(id, model)?.initializer {
            if t.data_location.enum_value() == Ok(DataLocation::EXTERNAL) {
                stored
                    .entry(extent(id, t, location)?)
                    .or_insert_with(|| t.name.clone());
            }
        }
    }
    let half = fp16_location(location);
    let mut file = FileBuilder::new(&half);
    let mut placed = BTreeMap::new();
    for (&place, name) in &stored {
        let data = place.read(fp32, location, name)?;
        let bytes = to_fp16(data).ok_or_else(|| QuantError::Fp16Range {
            tensor: name.clone(),
        })?;
        placed.insert(place, file.put(&bytes));
    }
    let graphs = subnets
        .iter()
        .map(|&(id, model)| rewrite::rewrite(id, model, location, &placed))
        .collect::<Result<_, _>>()?;
    Ok(Width {
        location: half,
        bytes: file.bytes,
        graphs,
    })
}

/// Little-endian float32 bytes as little-endian float16 ones, rounded to
/// nearest even; `None` when a finite value is beyond float16's ±65504.
fn to_fp16(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2);
    for b in data.chunks_exact(4) {
        let x = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        let h = f16::from_f32(x);
        if h.is_infinite() && x.is_finite() {
            return None;
        }
        out.extend(h.to_le_bytes());
    }
    Some(out)
}

/// Where each tensor of the fp32 file went in the fp16 one.
type Placed = BTreeMap<Extent, crate::onnx::ExternalData>;

#[cfg(test)]
mod tests;
