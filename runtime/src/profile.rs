//! Measuring one candidate the way trtexec and TFLite's benchmark_model do:
//! load time, first inference, warm-up, then timed runs until both a minimum
//! count and a minimum time are reached; latency percentiles and memory.

use std::fs;
use std::time::{Duration, Instant};

use ndarray::ArrayView4;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, Session};

/// How long to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasureOptions {
    /// Untimed runs after the first one.
    pub warmup_runs: u32,
    pub min_runs: u32,
    pub min_time: Duration,
    /// Stop here even if `min_time` is not reached.
    pub max_runs: u32,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            warmup_runs: 3,
            min_runs: 10,
            min_time: Duration::from_millis(300),
            max_runs: 10_000,
        }
    }
}

/// A coefficient of variation above this marks a measurement noisy.
const NOISY_CV: f64 = 0.10;

/// What one candidate measured. Percentiles are nearest-rank over the timed runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub load_ms: f64,
    pub first_ms: f64,
    pub runs: u32,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub stdev_ms: f64,
    /// Coefficient of variation (stdev / mean).
    pub cv: f64,
    /// `cv` above 10%: the device was busy or throttling.
    pub noisy: bool,
    /// Resident memory of the process after load, MiB.
    pub rss_mb: f64,
    /// Peak resident memory of the process during inference, MiB.
    pub peak_mb: f64,
}

/// Loads with `load`, then measures runs on `input`; returns the session too.
pub fn measure(
    load: impl FnOnce() -> Result<Box<dyn Session>, EngineError>,
    input: ArrayView4<'_, f32>,
    opts: &MeasureOptions,
) -> Result<(Box<dyn Session>, Measurement), EngineError> {
    let start = Instant::now();
    let mut session = load()?;
    let load_ms = ms(start.elapsed());
    let rss_mb = memory_mb("VmRSS:").unwrap_or(0.0);
    // The high-water mark starts from here, so the peak is this candidate's.
    let reset = fs::write("/proc/self/clear_refs", "5").is_ok();

    let t = Instant::now();
    session.run(input)?;
    let first_ms = ms(t.elapsed());
    for _ in 0..opts.warmup_runs {
        session.run(input)?;
    }
    let mut samples = Vec::new();
    let timed = Instant::now();
    while samples.len() < opts.max_runs.max(1) as usize
        && (samples.len() < opts.min_runs.max(1) as usize || timed.elapsed() < opts.min_time)
    {
        let t = Instant::now();
        session.run(input)?;
        samples.push(ms(t.elapsed()));
    }
    let peak_mb = if reset {
        memory_mb("VmHWM:")
    } else {
        memory_mb("VmRSS:")
    }
    .unwrap_or(rss_mb)
    .max(rss_mb);
    Ok((
        session,
        Measurement::from_samples(load_ms, first_ms, samples, rss_mb, peak_mb),
    ))
}

impl Measurement {
    fn from_samples(
        load_ms: f64,
        first_ms: f64,
        mut samples: Vec<f64>,
        rss_mb: f64,
        peak_mb: f64,
    ) -> Measurement {
        samples.sort_by(f64::total_cmp);
        let n = samples.len() as f64;
        let mean_ms = samples.iter().sum::<f64>() / n;
        let stdev_ms = (samples.iter().map(|s| (s - mean_ms).powi(2)).sum::<f64>() / n).sqrt();
        let cv = if mean_ms > 0.0 {
            stdev_ms / mean_ms
        } else {
            0.0
        };
        Measurement {
            load_ms,
            first_ms,
            runs: samples.len() as u32,
            mean_ms,
            p50_ms: nearest_rank(&samples, 50.0),
            p90_ms: nearest_rank(&samples, 90.0),
            p99_ms: nearest_rank(&samples, 99.0),
            stdev_ms,
            cv,
            noisy: cv > NOISY_CV,
            rss_mb,
            peak_mb,
        }
    }
}

/// The nearest-rank percentile of sorted samples: the smallest sample with
/// at least `p`% of the samples at or below it.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A `/proc/self/status` memory line, in MiB.
fn memory_mb(key: &str) -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&samples, 50.0), 50.0);
        assert_eq!(nearest_rank(&samples, 90.0), 90.0);
        assert_eq!(nearest_rank(&samples, 99.0), 99.0);
        let few = [1.0, 2.0, 3.0];
        assert_eq!(
            (nearest_rank(&few, 50.0), nearest_rank(&few, 99.0)),
            (2.0, 3.0)
        );
    }

    #[test]
    fn statistics_and_noise_flag() {
        let steady = Measurement::from_samples(1.0, 2.0, vec![10.0; 20], 5.0, 6.0);
        assert_eq!(
            (steady.mean_ms, steady.stdev_ms, steady.noisy, steady.runs),
            (10.0, 0.0, false, 20)
        );
        let noisy = Measurement::from_samples(1.0, 2.0, vec![5.0, 15.0, 5.0, 15.0], 5.0, 6.0);
        assert_eq!((noisy.mean_ms, noisy.stdev_ms), (10.0, 5.0));
        assert!(noisy.noisy && noisy.p50_ms == 5.0 && noisy.p99_ms == 15.0);
    }
}
