//! Weights quantised per output channel, symmetric int8 (zero point 0): the
//! form every INT8 engine takes, and per channel because one channel's
//! large weights would otherwise cost every other channel its precision.

use super::activation::{Encoding, QParams};

/// A weight tensor as int8 values and one scale per channel of `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelWeights {
    /// In the float tensor's layout.
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Quantises `weights` (row-major, shape `dims`) per channel along `axis`:
/// each channel's scale is its largest |w| over 127, as ONNX Runtime's
/// per-channel symmetric quantiser computes it.
pub fn quantize(weights: &[f32], dims: &[usize], axis: usize) -> ChannelWeights {
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    debug_assert_eq!(weights.len(), dims.iter().product::<usize>());
    // Element i belongs to channel (i / inner) % channels.
    let channel = |i: usize| (i / inner) % channels;
    let mut bounds = vec![(0f32, 0f32); channels];
    for (i, &w) in weights.iter().enumerate() {
        let b = &mut bounds[channel(i)];
        *b = (b.0.min(w), b.1.max(w));
    }
    let params: Vec<QParams> = bounds
        .iter()
        .map(|&(lo, hi)| QParams::covering(lo, hi, Encoding::S8))
        .collect();
    ChannelWeights {
        values: weights
            .iter()
            .enumerate()
            .map(|(i, &w)| params[channel(i)].quantize(w) as i8)
            .collect(),
        scales: params.iter().map(|p| p.scale).collect(),
    }
}
