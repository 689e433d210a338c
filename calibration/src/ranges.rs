//! Activation ranges for a later INT8 export: per tensor the minimum, the
//! maximum and a high percentile of |x| (clipping there is the usual
//! calibration for outlier-heavy activations).
//!
//! Tensors are named as in the ONNX graph. [`Scope::Interface`] records the
//! graph's input and outputs (`pixel_values`, `cls_token`, `patch_tokens`),
//! which every engine exposes; [`Scope::Inner`] adds every activation a
//! MatMul, Gemm or Conv reads or writes, through [`inner`]'s tract session.

pub mod inner;

use std::collections::BTreeMap;

use ndarray::{s, ArrayView, ArrayView4, Dimension};
use serde::{Deserialize, Serialize};
use tailor_runtime::engine::Outputs;
use tailor_runtime::interface::{CLS_TOKEN, PATCH_TOKENS, PIXEL_VALUES};
use tailor_runtime::manifest::Sha256;

/// The percentile of |x| recorded per tensor.
pub const PERCENTILE: f64 = 99.99;
/// The ranges file's layout: 3 names the dataset the ranges come from (a
/// later `exporter route` keeps them while scoring on other data), 2 keys
/// each sub-network's tensors by name (1 had three fixed fields).
pub const FORMAT: u32 = 3;
/// Values kept per tensor to estimate the percentile (256 KiB): below it
/// the percentile is exact.
const SAMPLE: usize = 1 << 16;
/// Signed values per tensor the ranges file keeps of that sample
/// ([`RangesFile::samples`]), for the MSE calibrator: enough to rank 100
/// clips, small enough that a 16-graph bundle's file stays a few MB.
pub const KEPT: usize = 1024;

/// Which tensors calibration records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The graph's input and outputs.
    #[default]
    Interface,
    /// Those and every activation of a MatMul, Gemm or Conv (tract only).
    Inner,
}

/// One tensor's range over the calibration images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub min: f32,
    pub max: f32,
    /// The [`PERCENTILE`]th percentile of |x| (nearest rank; estimated from
    /// a uniform random sample of 65536 values when there are more).
    pub abs_percentile: f32,
}

/// The bundle's ranges file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangesFile {
    /// [`FORMAT`].
    pub format: u32,
    pub percentile: f64,
    /// Images the ranges were recorded over.
    pub images: usize,
    /// The dataset those images are (as the manifest's `dataset_sha256`).
    pub dataset_sha256: Sha256,
    pub scope: Scope,
    /// Sub-network id, then ONNX tensor name.
    pub subnets: BTreeMap<String, BTreeMap<String, Range>>,
    /// With [`Scope::Inner`]: up to [`KEPT`] signed values of each tensor,
    /// drawn uniformly from everything observed, keyed like `subnets`, so
    /// one recording serves every calibrator (MSE searches its clip over
    /// them). Absent from files recorded before it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub samples: BTreeMap<String, BTreeMap<String, Vec<f32>>>,
}

impl RangesFile {
    /// No ranges, for a bundle scored without recording them.
    pub fn none(dataset_sha256: Sha256) -> RangesFile {
        RangesFile {
            format: FORMAT,
            percentile: PERCENTILE,
            images: 0,
            dataset_sha256,
            scope: Scope::Interface,
            subnets: BTreeMap::new(),
            samples: BTreeMap::new(),
        }
    }
}

/// Records one tensor's values as batches run, in bounded memory: the
/// extremes, and a reservoir sample of x (Li's "Algorithm L": a uniform
/// sample without periodic gaps, so a strided layout such as one outlier
/// channel cannot hide from it).
#[derive(Debug, Clone)]
pub struct Recorder {
    min: f32,
    max: f32,
    sample: Vec<f32>,
    /// Values seen so far.
    seen: u64,
    /// The index of the next value to enter the full reservoir.
    next: u64,
    /// Algorithm L's running weight.
    weight: f64,
    rng: SplitMix64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            sample: Vec::new(),
            seen: 0,
            next: 0,
            weight: 0.0,
            // Fixed: the same images give the same ranges file.
            rng: SplitMix64(0x5eed),
        }
    }
}

impl Recorder {
    /// Observes a run of values. Past the first 65536, only the values
    /// Algorithm L picks are touched besides the extremes: it jumps to the
    /// next one rather than deciding value by value.
    pub fn observe(&mut self, values: &[f32]) {
        for &v in values {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        let fill = (SAMPLE - self.sample.len()).min(values.len());
        self.sample.extend_from_slice(&values[..fill]);
        if fill > 0 && self.sample.len() == SAMPLE {
            let last = self.seen + fill as u64 - 1;
            self.weight = self.draw_weight();
            self.next = last + self.skip() + 1;
        }
        let end = self.seen + values.len() as u64;
        while self.sample.len() == SAMPLE && self.next < end {
            let v = values[(self.next - self.seen) as usize];
            let slot = (self.rng.next() % SAMPLE as u64) as usize;
            self.sample[slot] = v;
            self.weight *= self.draw_weight();
            self.next = self.next.saturating_add(self.skip()).saturating_add(1);
        }
        self.seen = end;
    }

    /// [`Self::observe`] for an array in any layout.
    pub fn observe_view<D: Dimension>(&mut self, values: ArrayView<'_, f32, D>) {
        match values.as_slice() {
            Some(slice) => self.observe(slice),
            None => self.observe(&values.iter().copied().collect::<Vec<_>>()),
        }
    }

    fn draw_weight(&mut self) -> f64 {
        (self.rng.unit().ln() / SAMPLE as f64).exp()
    }

    /// Values to pass over before the next one enters the reservoir.
    fn skip(&mut self) -> u64 {
        // Saturates for a weight so close to 1 that nothing enters again.
        (self.rng.unit().ln() / (1.0 - self.weight).ln()).floor() as u64
    }

    /// Up to [`KEPT`] of the sampled values, signed, evenly spaced over the
    /// reservoir (itself uniform over everything observed once it is full).
    pub fn kept(&self) -> Vec<f32> {
        let step = self.sample.len().div_ceil(KEPT).max(1);
        self.sample.iter().step_by(step).copied().collect()
    }

    /// The range of everything observed; `None` before any value.
    pub fn finish(mut self) -> Option<Range> {
        if self.seen == 0 {
            return None;
        }
        for v in &mut self.sample {
            *v = v.abs();
        }
        // Nearest rank, selected in linear time rather than sorted.
        let rank = (PERCENTILE / 100.0 * self.sample.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.sample.len()) - 1;
        let (_, &mut abs_percentile, _) = self.sample.select_nth_unstable_by(index, f32::total_cmp);
        Some(Range {
            min: self.min,
            max: self.max,
            abs_percentile,
        })
    }
}

/// A small seeded generator for the reservoir (statistical quality is
/// ample; no dependency for it).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1), never 0, so its logarithm is finite.
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// The graph outputs every engine returns, recorded in every scope.
const INTERFACE: [&str; 3] = [PIXEL_VALUES, CLS_TOKEN, PATCH_TOKENS];

/// Records a graph's tensors by name: the interface's, and any added.
#[derive(Debug, Clone)]
pub struct GraphRecorder {
    tensors: Vec<(String, Recorder)>,
}

impl Default for GraphRecorder {
    fn default() -> Self {
        GraphRecorder {
            tensors: INTERFACE
                .iter()
                .map(|name| (name.to_string(), Recorder::default()))
                .collect(),
        }
    }
}

impl GraphRecorder {
    /// Starts recording tensor `name`; returns its slot for [`Self::observe`].
    pub fn add(&mut self, name: String) -> usize {
        self.tensors.push((name, Recorder::default()));
        self.tensors.len() - 1
    }

    /// Observes values of the tensor in `slot`.
    pub fn observe<D: Dimension>(&mut self, slot: usize, values: ArrayView<'_, f32, D>) {
        self.tensors[slot].1.observe_view(values);
    }

    /// Observes the interface of the first `rows` images of a batch (the
    /// rest is padding).
    pub fn observe_interface(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        outputs: &Outputs,
        rows: usize,
    ) {
        self.observe(0, pixels.slice(s![..rows, .., .., ..]));
        self.observe(1, outputs.cls_token.slice(s![..rows, ..]));
        self.observe(2, outputs.patch_tokens.slice(s![..rows, .., ..]));
    }

    /// Every tensor's [`Recorder::kept`] values by name.
    pub fn samples(&self) -> BTreeMap<String, Vec<f32>> {
        self.tensors
            .iter()
            .map(|(name, r)| (name.clone(), r.kept()))
            .filter(|(_, kept)| !kept.is_empty())
            .collect()
    }

    /// Every tensor's range by name; `None` when no image ran.
    pub fn finish(self) -> Option<BTreeMap<String, Range>> {
        self.tensors
            .into_iter()
            .map(|(name, r)| Some((name, r.finish()?)))
            .collect()
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
        r.observe(&(1..=10_000).map(|v| v as f32).collect::<Vec<_>>());
        r.observe(&[-1e6]);
        let range = r.finish().unwrap();
        assert_eq!((range.min, range.max), (-1e6, 10_000.0));
        assert_eq!(range.abs_percentile, 10_000.0);
        assert_eq!(Recorder::default().finish(), None);
    }

    #[test]
    fn beyond_the_sample_the_percentile_is_estimated_uniformly() {
        let mut r = Recorder::default();
        // Four times the sample, uniform on 0..1: the 99.99th percentile
        // stays near 0.9999 (the estimate's deviation is about 4e-5).
        let n = 4 * SAMPLE;
        let values: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
        // In runs of every length, across the moment the sample fills.
        for run in values.chunks(SAMPLE / 3 + 7) {
            r.observe(run);
        }
        assert_eq!(r.sample.len(), SAMPLE);
        let p = r.finish().unwrap().abs_percentile;
        assert!((p - 0.9999).abs() < 2e-4, "{p}");
    }

    #[test]
    fn runs_of_any_length_give_the_sample_one_run_gives() {
        let values: Vec<f32> = (0..3 * SAMPLE + 11)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let mut whole = Recorder::default();
        whole.observe(&values);
        let mut runs = Recorder::default();
        for (i, run) in values.chunks(1000).enumerate() {
            // Some empty runs too.
            runs.observe(&run[..0]);
            runs.observe(run);
            assert_eq!(runs.seen, (i * 1000 + run.len()) as u64);
        }
        assert_eq!(runs.sample, whole.sample);
        assert_eq!(runs.finish(), whole.finish());
    }

    #[test]
    fn a_periodic_outlier_channel_is_in_the_sample() {
        // One value in 64 (one channel of 64, say) is 100, at odd
        // positions: a sample taken at a power-of-two stride never sees it.
        // It is 1.6% of the values, so the 99.99th percentile is 100.
        let mut r = Recorder::default();
        let n = 16 * SAMPLE;
        let values: Vec<f32> = (0..n)
            .map(|i| if i % 64 == 1 { 100.0 } else { 0.5 })
            .collect();
        r.observe(&values);
        let outliers = r.sample.iter().filter(|&&v| v == 100.0).count();
        // Expected 1024 of 65536; five deviations either side.
        assert!((864..1184).contains(&outliers), "{outliers}");
        assert_eq!(r.finish().unwrap().abs_percentile, 100.0);
    }

    #[test]
    fn the_graph_recorder_names_every_tensor_and_needs_an_image() {
        let mut g = GraphRecorder::default();
        let slot = g.add("blocks.0.mlp.fc1".into());
        assert_eq!(GraphRecorder::default().finish(), None);
        for i in 0..3 {
            g.observe(i, ndarray::aview1(&[1.0]));
        }
        g.observe(slot, ndarray::aview1(&[-3.0, 2.0]));
        let ranges = g.finish().unwrap();
        assert_eq!(
            ranges.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "blocks.0.mlp.fc1",
                "cls_token",
                "patch_tokens",
                "pixel_values"
            ]
        );
        let fc1 = ranges["blocks.0.mlp.fc1"];
        assert_eq!((fc1.min, fc1.max, fc1.abs_percentile), (-3.0, 2.0, 3.0));
    }
}
