//! The width's int8 weight file, `w<W>.int8.bin` beside `w<W>.bin`: every
//! tensor the width's graphs read from the fp32 file, once, so all depth
//! variants share it as they share the fp32 file. Weights become int8 per
//! output channel followed by their scales and zero points; everything else
//! (biases, norms, embeddings, LayerScale) is copied as fp32 so the int8
//! graphs need no fp32 file at all.

use std::collections::BTreeMap;

use crate::onnx::ExternalData;

use super::external::{Extent, FileBuilder};
use super::weights;
use super::QuantError;

/// A tensor of the fp32 file as the graphs use it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stored {
    /// Its name in the first graph that reads it (for errors).
    pub name: String,
    pub dims: Vec<usize>,
    /// The channel axis when some graph reads it as a MatMul/Gemm/Conv
    /// weight; `None` keeps it fp32.
    pub axis: Option<usize>,
}

/// Where a tensor went in the int8 file.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Placed {
    Float(ExternalData),
    Weight {
        values: ExternalData,
        scales: ExternalData,
        zero_points: ExternalData,
        axis: usize,
        channels: usize,
    },
}

/// The int8 file's bytes and where each fp32 tensor went.
#[derive(Debug)]
pub(super) struct Layout {
    pub bytes: Vec<u8>,
    pub placed: BTreeMap<Extent, Placed>,
}

/// Lays out `stored` (read from `fp32`, the width's fp32 file) as the int8
/// file at `location`, in the fp32 file's order.
pub(super) fn lay_out(
    fp32: &[u8],
    location: &str,
    stored: &BTreeMap<Extent, Stored>,
) -> Result<Layout, QuantError> {
    let mut file = FileBuilder::new(location);
    let mut placed = BTreeMap::new();
    for (&extent, tensor) in stored {
        let data = extent.read(fp32, location, &tensor.name)?;
        let place = match tensor.axis {
            None => Placed::Float(file.put(data)),
            Some(axis) => {
                let floats: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect();
                let q = weights::quantize(&floats, &tensor.dims, axis);
                let scales: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                Placed::Weight {
                    values: file.put(&q.values.iter().map(|&v| v as u8).collect::<Vec<_>>()),
                    scales: file.put(&scales),
                    zero_points: file.put(&vec![0; q.scales.len()]),
                    axis,
                    channels: q.scales.len(),
                }
            }
        };
        placed.insert(extent, place);
    }
    Ok(Layout {
        bytes: file.bytes,
        placed,
    })
}
