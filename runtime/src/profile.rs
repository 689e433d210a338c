//! Measuring a candidate, with the conventions of trtexec and TFLite's
//! `benchmark_model`: time the load and the cold first run, discard warm-up
//! runs, then time runs until both a run count and a wall time are reached.
//!
//! Statistics: the mean and the population standard deviation (as
//! `benchmark_model`), percentiles by nearest rank on the sorted samples (the
//! p-th percentile is the smallest sample with at least p% of the samples at
//! or below it, so it is always a measured latency, never an interpolation).
//!
//! Memory is process-wide, read from `/proc/self/status` (`VmRSS` is
//! `/proc/self/statm`'s resident field, already in kB, so no page size is
//! needed); see [`MemorySource`] for how the peak is obtained.

use std::fs;
use std::time::{Duration, Instant};

use ndarray::ArrayView4;
use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, Session};

/// How long and how often to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureOptions {
    /// Untimed runs after the first, to settle caches, clocks and allocators.
    pub warmup_runs: u32,
    /// Timed runs continue until at least this many were made...
    pub min_runs: u32,
    /// ...and at least this much time was spent in them...
    pub min_time: Duration,
    /// ...but never more than this many.
    pub max_runs: u32,
}

impl Default for MeasureOptions {
    /// trtexec's and `benchmark_model`'s defaults, scaled for edge devices.
    fn default() -> Self {
        MeasureOptions {
            warmup_runs: 3,
            min_runs: 10,
            min_time: Duration::from_secs(1),
            max_runs: 1000,
        }
    }
}

/// A latency percentile a [`Measurement`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Percentile {
    P50,
    P90,
    P99,
}

impl Percentile {
    /// The whole percentage, e.g. 90 for [`Percentile::P90`].
    pub fn value(self) -> u8 {
        self.percent() as u8
    }

    /// The percentage, e.g. 90.0 for [`Percentile::P90`].
    pub fn percent(self) -> f64 {
        match self {
            Percentile::P50 => 50.0,
            Percentile::P90 => 90.0,
            Percentile::P99 => 99.0,
        }
    }
}

impl TryFrom<u8> for Percentile {
    type Error = String;

    fn try_from(p: u8) -> Result<Self, String> {
        match p {
            50 => Ok(Percentile::P50),
            90 => Ok(Percentile::P90),
            99 => Ok(Percentile::P99),
            _ => Err(format!("percentile {p} is not measured: use 50, 90 or 99")),
        }
    }
}

/// How [`Measurement::peak_mb`] was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// `VmHWM` after resetting the high-water mark through
    /// `/proc/self/clear_refs`: exact, whatever happened between runs.
    HighWaterMark,
    /// The kernel refused the reset, so `VmRSS` was sampled after every run:
    /// a lower bound of the true peak.
    SampledRss,
    /// No `/proc` (not Linux): both memory fields are 0.
    Unavailable,
}

/// What measuring a session found (serialisable, so decisions can be cached).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Time to load the session.
    pub load_ms: f64,
    /// The first (cold) run.
    pub first_ms: f64,
    /// Timed runs (after warm-up).
    pub runs: u32,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Population standard deviation of the timed runs.
    pub stdev_ms: f64,
    /// Coefficient of variation, `stdev_ms / mean_ms`.
    pub cv: f64,
    /// `cv > 0.1`: the device was busy or throttling; distrust the numbers.
    pub noisy: bool,
    /// Process RSS right after the load.
    pub rss_mb: f64,
    /// Peak process RSS from the first run to the last, never below `rss_mb`.
    pub peak_mb: f64,
    /// How `peak_mb` was obtained.
    pub memory: MemorySource,
}

impl Measurement {
    pub fn percentile_ms(&self, p: Percentile) -> f64 {
        match p {
            Percentile::P50 => self.p50_ms,
            Percentile::P90 => self.p90_ms,
            Percentile::P99 => self.p99_ms,
        }
    }
}

/// Loads a session with `load` and measures it on `input`; the session is
/// handed back for serving.
pub fn measure(
    load: impl FnOnce() -> Result<Box<dyn Session>, EngineError>,
    input: ArrayView4<'_, f32>,
    opts: &MeasureOptions,
) -> Result<(Box<dyn Session>, Measurement), EngineError> {
    if opts.max_runs == 0 || opts.max_runs < opts.min_runs {
        return Err(EngineError::Options(
            "max_runs must be at least 1 and at least min_runs",
        ));
    }
    let start = Instant::now();
    let mut session = load()?;
    let load_ms = ms(start.elapsed());

    let rss_kb = status_kb("VmRSS:");
    let mut peak = Peak::start(rss_kb);

    let start = Instant::now();
    session.run(input)?;
    let first_ms = ms(start.elapsed());
    peak.sample();
    for _ in 0..opts.warmup_runs {
        session.run(input)?;
        peak.sample();
    }

    let mut samples = Vec::new();
    let timed = Instant::now();
    loop {
        let start = Instant::now();
        session.run(input)?;
        samples.push(ms(start.elapsed()));
        peak.sample();
        let runs = samples.len() as u32;
        if runs >= opts.max_runs || (runs >= opts.min_runs && timed.elapsed() >= opts.min_time) {
            break;
        }
    }

    let latency = Latency::of(samples);
    let rss_mb = rss_kb.map_or(0.0, mb);
    let (peak_mb, memory) = peak.finish();
    let measurement = Measurement {
        load_ms,
        first_ms,
        runs: latency.runs,
        mean_ms: latency.mean,
        p50_ms: latency.p50,
        p90_ms: latency.p90,
        p99_ms: latency.p99,
        stdev_ms: latency.stdev,
        cv: latency.cv,
        noisy: latency.cv > 0.1,
        rss_mb,
        peak_mb: peak_mb.max(rss_mb),
        memory,
    };
    Ok((session, measurement))
}

/// The smallest of `sorted` (ascending, non-empty) with at least `percent`%
/// of the samples at or below it.
pub fn nearest_rank(sorted: &[f64], percent: f64) -> f64 {
    let n = sorted.len();
    let rank = (percent / 100.0 * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Summary statistics of timed runs.
struct Latency {
    runs: u32,
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    stdev: f64,
    cv: f64,
}

impl Latency {
    /// `samples` holds at least one run.
    fn of(mut samples: Vec<f64>) -> Latency {
        samples.sort_by(f64::total_cmp);
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let stdev = (samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        Latency {
            runs: samples.len() as u32,
            mean,
            p50: nearest_rank(&samples, Percentile::P50.percent()),
            p90: nearest_rank(&samples, Percentile::P90.percent()),
            p99: nearest_rank(&samples, Percentile::P99.percent()),
            stdev,
            cv: if mean > 0.0 { stdev / mean } else { 0.0 },
        }
    }
}

/// Tracks the peak RSS from the first run on.
struct Peak {
    source: MemorySource,
    /// The highest `VmRSS` sampled, for [`MemorySource::SampledRss`].
    sampled_kb: u64,
}

impl Peak {
    fn start(rss_kb: Option<u64>) -> Peak {
        let source = match rss_kb {
            None => MemorySource::Unavailable,
            // "5" resets the high-water mark to the current RSS (proc(5)).
            Some(_) if fs::write("/proc/self/clear_refs", "5").is_ok() => {
                MemorySource::HighWaterMark
            }
            Some(_) => MemorySource::SampledRss,
        };
        Peak {
            source,
            sampled_kb: rss_kb.unwrap_or(0),
        }
    }

    fn sample(&mut self) {
        if self.source == MemorySource::SampledRss {
            self.sampled_kb = self.sampled_kb.max(status_kb("VmRSS:").unwrap_or(0));
        }
    }

    fn finish(self) -> (f64, MemorySource) {
        let kb = match self.source {
            MemorySource::HighWaterMark => status_kb("VmHWM:").unwrap_or(self.sampled_kb),
            MemorySource::SampledRss | MemorySource::Unavailable => self.sampled_kb,
        };
        (mb(kb), self.source)
    }
}

/// A `kB` field of `/proc/self/status`.
fn status_kb(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_the_textbook_example() {
        // The worked example of the nearest-rank method (Wikipedia, "Percentile").
        let sorted = [15.0, 20.0, 35.0, 40.0, 50.0];
        for (percent, want) in [
            (5.0, 15.0),
            (30.0, 20.0),
            (40.0, 20.0),
            (50.0, 35.0),
            (100.0, 50.0),
        ] {
            assert_eq!(nearest_rank(&sorted, percent), want, "p{percent}");
        }
    }

    #[test]
    fn percentiles_of_one_to_a_hundred_are_the_ranks() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&sorted, 50.0), 50.0);
        assert_eq!(nearest_rank(&sorted, 90.0), 90.0);
        assert_eq!(nearest_rank(&sorted, 99.0), 99.0);
        assert_eq!(nearest_rank(&sorted, 0.0), 1.0);
    }

    #[test]
    fn latency_sorts_and_uses_the_population_deviation() {
        // Mean 5, population standard deviation exactly 2.
        let latency = Latency::of(vec![9.0, 2.0, 4.0, 5.0, 4.0, 7.0, 4.0, 5.0]);
        assert_eq!(latency.runs, 8);
        assert_eq!(latency.mean, 5.0);
        assert_eq!(latency.stdev, 2.0);
        assert_eq!(latency.cv, 0.4);
        assert_eq!((latency.p50, latency.p90, latency.p99), (4.0, 9.0, 9.0));
    }

    #[test]
    fn the_process_has_a_resident_set() {
        let rss = status_kb("VmRSS:").expect("/proc/self/status has VmRSS on Linux");
        assert!(rss > 0);
        assert!(status_kb("NoSuchField:").is_none());
    }
}
