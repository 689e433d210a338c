//! The width's int8 weight file, `w<W>.int8.bin` beside `w<W>.bin`: every
//! tensor the width's graphs read from the fp32 file, once, so all depth
//! variants share it as they share the fp32 file. Weights become int8 per
//! output channel followed by their scales and zero points; everything else
//! (biases, norms, embeddings, LayerScale) is copied as fp32 so the int8
//! graphs need no fp32 file at all.

use std::collections::BTreeMap;

use crate::onnx::ExternalData;

use super::weights;
use super::QuantError;

/// Tensors start at this boundary, as in the fp32 file.
const ALIGN: usize = 64;

/// Where a tensor lies in the fp32 file: its identity across graphs, which
/// may name it differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Extent {
    pub offset: u64,
    pub length: u64,
}

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
    let mut bytes = Vec::new();
    let mut put = |data: &[u8]| {
        bytes.resize(bytes.len().next_multiple_of(ALIGN), 0);
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(data);
        ExternalData {
            location: location.to_owned(),
            offset,
            length: data.len() as u64,
        }
    };
    let mut placed = BTreeMap::new();
    for (&extent, tensor) in stored {
        let data = usize::try_from(extent.offset)
            .ok()
            .zip(usize::try_from(extent.offset + extent.length).ok())
            .and_then(|(start, end)| fp32.get(start..end))
            .ok_or_else(|| QuantError::ExternalData {
                graph: location.to_owned(),
                tensor: tensor.name.clone(),
                problem: format!(
                    "bytes {}..+{} are beyond the fp32 file's {}",
                    extent.offset,
                    extent.length,
                    fp32.len()
                ),
            })?;
        let place = match tensor.axis {
            None => Placed::Float(put(data)),
            Some(axis) => {
                let floats: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect();
                let q = weights::quantize(&floats, &tensor.dims, axis);
                let scales: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                Placed::Weight {
                    values: put(&q.values.iter().map(|&v| v as u8).collect::<Vec<_>>()),
                    scales: put(&scales),
                    zero_points: put(&vec![0; q.scales.len()]),
                    axis,
                    channels: q.scales.len(),
                }
            }
        };
        placed.insert(extent, place);
    }
    Ok(Layout { bytes, placed })
}
