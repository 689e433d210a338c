//! Activation ranges for a later INT8 export: per tensor the minimum, the
//! maximum and a high percentile of |x| (clipping there is the usual
//! calibration for outlier-heavy activations).
//!
//! The tensors are each graph's interface, `pixel_values`, `cls_token` and
//! `patch_tokens`: the ones both engines expose. Inner activations need the
//! graph's intermediate outlets, which a later INT8 export will add.

use std::collections::BTreeMap;

use ndarray::{s, ArrayView4};
use serde::Serialize;
use tailor_runtime::engine::Outputs;

/// The percentile of |x| recorded per tensor.
pub const PERCENTILE: f64 = 99.99;
/// Values kept per tensor to estimate the percentile: beyond it the sample
/// is thinned to every other value, so it stays a uniform stride.
const SAMPLE: usize = 1 << 16;

/// One tensor's range over the calibration images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
    /// The [`PERCENTILE`]th percentile of |x| (estimated from a strided
    /// sample of at most 65536 values).
    pub abs_percentile: f32,
}

/// The ranges of one sub-network's graph.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GraphRanges {
    pub pixel_values: Range,
    pub cls_token: Range,
    pub patch_tokens: Range,
}

/// The bundle's ranges file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangesFile {
    pub percentile: f64,
    /// Images the ranges were recorded over.
    pub images: usize,
    pub subnets: BTreeMap<String, GraphRanges>,
}

/// Records one tensor's values as batches run.
#[derive(Debug, Clone)]
pub struct Recorder {
    min: f32,
    max: f32,
    sample: Vec<f32>,
    /// Every `stride`-th value seen is sampled.
    stride: usize,
    seen: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            sample: Vec::new(),
            stride: 1,
            seen: 0,
        }
    }
}

impl Recorder {
    pub fn observe(&mut self, values: impl IntoIterator<Item = f32>) {
        for v in values {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            if self.seen.is_multiple_of(self.stride) {
                if self.sample.len() == SAMPLE {
                    // Keep every other value: the stride doubles.
                    let mut i = 0;
                    self.sample.retain(|_| {
                        i += 1;
                        i % 2 == 1
                    });
                    self.stride *= 2;
                }
                if self.seen.is_multiple_of(self.stride) {
                    self.sample.push(v.abs());
                }
            }
            self.seen += 1;
        }
    }

    /// The range of everything observed; `None` before any value.
    pub fn finish(mut self) -> Option<Range> {
        if self.seen == 0 {
            return None;
        }
        self.sample.sort_unstable_by(f32::total_cmp);
        // Nearest rank.
        let rank = (PERCENTILE / 100.0 * self.sample.len() as f64).ceil() as usize;
        Some(Range {
            min: self.min,
            max: self.max,
            abs_percentile: self.sample[rank.clamp(1, self.sample.len()) - 1],
        })
    }
}

/// Records a graph's three interface tensors.
#[derive(Debug, Clone, Default)]
pub struct GraphRecorder {
    pixel_values: Recorder,
    cls_token: Recorder,
    patch_tokens: Recorder,
}

impl GraphRecorder {
    /// Observes the first `rows` images of a batch (the rest is padding).
    pub fn observe(&mut self, pixels: ArrayView4<'_, f32>, outputs: &Outputs, rows: usize) {
        let pixels = pixels.slice(s![..rows, .., .., ..]);
        self.pixel_values.observe(pixels.iter().copied());
        let cls = outputs.cls_token.slice(s![..rows, ..]);
        self.cls_token.observe(cls.iter().copied());
        let patches = outputs.patch_tokens.slice(s![..rows, .., ..]);
        self.patch_tokens.observe(patches.iter().copied());
    }

    /// `None` when no image ran.
    pub fn finish(self) -> Option<GraphRanges> {
        Some(GraphRanges {
            pixel_values: self.pixel_values.finish()?,
            cls_token: self.cls_token.finish()?,
            patch_tokens: self.patch_tokens.finish()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_and_percentile_of_a_known_spread() {
        let mut r = Recorder::default();
        // 1..=10000 and one outlier at -1e6: min is the outlier, the
        // 99.99th percentile of |x| is the 10000th of 10001 sorted values.
        r.observe((1..=10_000).map(|v| v as f32));
        r.observe([-1e6]);
        let range = r.finish().unwrap();
        assert_eq!((range.min, range.max), (-1e6, 10_000.0));
        assert_eq!(range.abs_percentile, 10_000.0);
        assert_eq!(Recorder::default().finish(), None);
    }

    #[test]
    fn thinning_keeps_a_uniform_sample() {
        let mut r = Recorder::default();
        // Four times the sample: uniform 0..1 in steps, so the 99.99th
        // percentile stays within a step or two of 0.9999.
        let n = 4 * SAMPLE;
        r.observe((0..n).map(|i| i as f32 / n as f32));
        assert!(
            r.sample.len() <= SAMPLE && r.stride == 4,
            "{} {}",
            r.sample.len(),
            r.stride
        );
        let p = r.finish().unwrap().abs_percentile;
        assert!((p - 0.9999).abs() < 1e-4, "{p}");
    }
}
