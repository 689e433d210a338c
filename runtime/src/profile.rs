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
//! needed); see [`MemorySource`] for how the peak is obtained. The peak
//! window opens before the load, where out-of-memory really happens; to
//! keep earlier candidates' heap out of it, measure each in a fresh process
//! (the caller's choice: this module only measures the process it runs in).

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
    /// Time to load the session (with TensorRT: from its engine cache).
    pub load_ms: f64,
    /// The TensorRT engine build a first load did before `load_ms`'s load:
    /// that load's time minus a load from the cache it filled.
    pub engine_build_ms: Option<f64>,
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
    /// Peak process RSS from just before the load to the last run: the load's
    /// own peak (where out-of-memory happens) included.
    pub peak_mb: f64,
    /// How `peak_mb` was obtained.
    pub memory: MemorySource,
    /// The timed runs, ascending; emptied before a decision is cached (only
    /// a fresh selection needs them).
    pub samples_ms: Vec<f64>,
}

/// The confidence of [`Measurement::upper_ms`]: one-sided, for an order
/// statistic of the runs.
pub const UPPER_CONFIDENCE: f64 = 0.8;

impl Measurement {
    /// The statistics of timed runs (at least one), with no load or memory
    /// figures yet.
    fn of_runs(mut samples: Vec<f64>) -> Measurement {
        samples.sort_by(f64::total_cmp);
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let stdev = (samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        let cv = if mean > 0.0 { stdev / mean } else { 0.0 };
        Measurement {
            load_ms: 0.0,
            engine_build_ms: None,
            first_ms: 0.0,
            runs: samples.len() as u32,
            mean_ms: mean,
            p50_ms: nearest_rank(&samples, Percentile::P50.percent()),
            p90_ms: nearest_rank(&samples, Percentile::P90.percent()),
            p99_ms: nearest_rank(&samples, Percentile::P99.percent()),
            stdev_ms: stdev,
            cv,
            noisy: cv > NOISY_CV,
            rss_mb: 0.0,
            peak_mb: 0.0,
            memory: MemorySource::Unavailable,
            samples_ms: samples,
        }
    }

    /// This measurement and `again`'s, as one: their runs together, the
    /// first's load and cold run, the larger memory figures. A burst of
    /// other load that hit one of them weighs as it does on the device.
    pub fn pooled(&self, again: &Measurement) -> Measurement {
        Measurement {
            load_ms: self.load_ms,
            engine_build_ms: self.engine_build_ms,
            first_ms: self.first_ms,
            rss_mb: self.rss_mb.max(again.rss_mb),
            peak_mb: self.peak_mb.max(again.peak_mb),
            memory: self.memory,
            ..Measurement::of_runs([&self.samples_ms[..], &again.samples_ms[..]].concat())
        }
    }

    pub fn percentile_ms(&self, p: Percentile) -> f64 {
        match p {
            Percentile::P50 => self.p50_ms,
            Percentile::P90 => self.p90_ms,
            Percentile::P99 => self.p99_ms,
        }
    }

    /// An upper confidence bound of the true percentile `p`, at
    /// [`UPPER_CONFIDENCE`]: the smallest order statistic that exceeds the
    /// percentile with that probability, whatever the distribution; the
    /// slowest run when there are too few runs for one. Without samples
    /// (a cached measurement) it is the percentile itself.
    pub fn upper_ms(&self, p: Percentile) -> f64 {
        match upper_rank(self.samples_ms.len(), p.percent() / 100.0, UPPER_CONFIDENCE) {
            Some(rank) => self.samples_ms[rank - 1],
            None => self
                .samples_ms
                .last()
                .copied()
                .unwrap_or(self.percentile_ms(p)),
        }
    }

    /// How far the true percentile may be above the measured one, relative:
    /// `upper_ms / percentile_ms - 1`.
    pub fn spread(&self, p: Percentile) -> f64 {
        let point = self.percentile_ms(p);
        if point > 0.0 {
            (self.upper_ms(p) / point - 1.0).max(0.0)
        } else {
            0.0
        }
    }
}

/// The 1-based rank `k` of the smallest order statistic of `n` samples that
/// is at or above the `q`-quantile with probability `confidence`, i.e. the
/// smallest `k` with `P(Binomial(n, q) < k) >= confidence`; `None` if even
/// the largest sample is not enough.
pub fn upper_rank(n: usize, q: f64, confidence: f64) -> Option<usize> {
    // P(X = 0) = (1-q)^n, then P(X = j) = P(X = j-1) · (n-j+1)/j · q/(1-q).
    if n == 0 || !(0.0..1.0).contains(&q) {
        return None;
    }
    let mut pmf = (1.0 - q).powi(n as i32);
    let mut cdf = 0.0;
    for k in 1..=n {
        cdf += pmf; // P(X <= k-1)
        if cdf >= confidence {
            return Some(k);
        }
        let j = k as f64;
        pmf *= (n as f64 - j + 1.0) / j * q / (1.0 - q);
    }
    None
}

/// A session loader for [`measure`] and [`measure_interleaved`].
pub type Load<'a> = Box<dyn FnMut() -> Result<Box<dyn Session>, EngineError> + 'a>;

/// A loaded session with its measurement, handed back for serving.
pub type Measured = (Box<dyn Session>, Measurement);

/// Runs `load`, timed in milliseconds.
fn timed_load(load: &mut Load<'_>) -> Result<(Box<dyn Session>, f64), EngineError> {
    let start = Instant::now();
    let session = load()?;
    Ok((session, ms(start.elapsed())))
}

/// Loads a session with `load` and measures it on `input`; the session is
/// handed back for serving.
pub fn measure(
    load: impl FnMut() -> Result<Box<dyn Session>, EngineError>,
    input: ArrayView4<'_, f32>,
    opts: &MeasureOptions,
) -> Result<Measured, EngineError> {
    let mut measured = measure_interleaved(vec![Box::new(load) as Load<'_>], input, opts)?;
    Ok(measured.pop().expect("one session loaded"))
}

/// Loads every session, then times them round-robin (one run of each per
/// round), so drift, throttling and other load hit all of them alike: the
/// fair way to compare close candidates. Each session gets the run count and
/// timed duration of `opts`; the memory figures are the process's, so with
/// several sessions they cover all of them.
pub fn measure_interleaved(
    loads: Vec<Load<'_>>,
    input: ArrayView4<'_, f32>,
    opts: &MeasureOptions,
) -> Result<Vec<Measured>, EngineError> {
    if opts.max_runs == 0 || opts.max_runs < opts.min_runs {
        return Err(EngineError::Options(
            "max_runs must be at least 1 and at least min_runs",
        ));
    }
    let mut peak = Peak::start();
    let mut sessions = Vec::with_capacity(loads.len());
    let mut load_ms = Vec::with_capacity(loads.len());
    let mut engine_build_ms = Vec::with_capacity(loads.len());
    for mut load in loads {
        let (mut session, mut ms_taken) = timed_load(&mut load)?;
        let mut build = None;
        if session.built_engine() {
            // Load again from the engine cache the first load filled, so the
            // load time is what every later boot pays and the build is apart.
            drop(session);
            let first = ms_taken;
            (session, ms_taken) = timed_load(&mut load)?;
            build = Some((first - ms_taken).max(0.0));
        }
        sessions.push(session);
        load_ms.push(ms_taken);
        engine_build_ms.push(build);
        peak.sample();
    }
    let rss_mb = status_kb("VmRSS:").map_or(0.0, mb);

    let mut first_ms = Vec::with_capacity(sessions.len());
    for session in &mut sessions {
        let start = Instant::now();
        session.run(input)?;
        first_ms.push(ms(start.elapsed()));
        peak.sample();
        for _ in 0..opts.warmup_runs {
            session.run(input)?;
            peak.sample();
        }
    }

    let count = sessions.len() as u32;
    let mut samples = vec![Vec::new(); sessions.len()];
    let min_time = opts.min_time.saturating_mul(count);
    let timed = Instant::now();
    for runs in 1..=opts.max_runs {
        for (session, samples) in sessions.iter_mut().zip(&mut samples) {
            let start = Instant::now();
            session.run(input)?;
            samples.push(ms(start.elapsed()));
            peak.sample();
        }
        if runs >= opts.min_runs && timed.elapsed() >= min_time {
            break;
        }
    }

    let (peak_mb, memory) = peak.finish();
    Ok(sessions
        .into_iter()
        .zip(samples)
        .zip(load_ms.into_iter().zip(first_ms).zip(engine_build_ms))
        .map(
            |((session, samples), ((load_ms, first_ms), engine_build_ms))| {
                let measurement = Measurement {
                    load_ms,
                    engine_build_ms,
                    first_ms,
                    rss_mb,
                    peak_mb,
                    memory,
                    ..Measurement::of_runs(samples)
                };
                (session, measurement)
            },
        )
        .collect())
}

/// A coefficient of variation above this marks a measurement noisy.
pub const NOISY_CV: f64 = 0.1;

/// The smallest of `sorted` (ascending, non-empty) with at least `percent`%
/// of the samples at or below it.
pub fn nearest_rank(sorted: &[f64], percent: f64) -> f64 {
    let n = sorted.len();
    let rank = (percent / 100.0 * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Tracks the process's peak RSS from just before the first load on.
struct Peak {
    source: MemorySource,
    /// The highest `VmRSS` sampled, for [`MemorySource::SampledRss`].
    sampled_kb: u64,
}

impl Peak {
    fn start() -> Peak {
        let rss_kb = status_kb("VmRSS:");
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
    kb_field(&fs::read_to_string("/proc/self/status").ok()?, field)
}

/// The value of `field` (e.g. `VmRSS:`) in the text of a `/proc/*/status`
/// file, in kB; `None` if absent or not in kB.
fn kb_field(status: &str, field: &str) -> Option<u64> {
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
    use ndarray::{Array2, Array3, Array4};

    use super::*;
    use crate::engine::Outputs;

    /// A session whose load reports `built` for `built_engine`.
    struct Fake {
        built: bool,
    }

    impl Session for Fake {
        fn run(&mut self, _: ArrayView4<'_, f32>) -> Result<Outputs, EngineError> {
            Ok(Outputs {
                cls_token: Array2::zeros((1, 1)),
                patch_tokens: Array3::zeros((1, 1, 1)),
                logits: None,
            })
        }

        fn input_shape(&self) -> [usize; 4] {
            [1, 3, 1, 1]
        }

        fn provider(&self) -> &str {
            "tensorrt"
        }

        fn built_engine(&self) -> bool {
            self.built
        }
    }

    /// A measurement made of one run, whose first load sleeps `first` and
    /// reports an engine build when `builds`; later loads (from the engine
    /// cache the build filled) sleep `cached`. Also how many loads it made.
    fn measured_loads(builds: bool, first: Duration, cached: Duration) -> (u32, Measurement) {
        let once = MeasureOptions {
            warmup_runs: 0,
            min_runs: 1,
            min_time: Duration::ZERO,
            max_runs: 1,
        };
        let mut loads = 0;
        let load = || {
            loads += 1;
            std::thread::sleep(if loads == 1 { first } else { cached });
            let built = builds && loads == 1;
            Ok(Box::new(Fake { built }) as Box<dyn Session>)
        };
        let input = Array4::zeros((1, 3, 1, 1));
        let (_, m) = measure(load, input.view(), &once).unwrap();
        (loads, m)
    }

    #[test]
    fn a_load_that_built_an_engine_is_timed_again_from_the_cache() {
        let slow = Duration::from_millis(100);
        // A 100 ms build, a quick load from its cache: the first load's time
        // is split into the build (first minus cached) and the load, so the
        // two cover the 100 ms slept. A build left unreported, or taken as
        // cached minus first (clamped to 0), falls short.
        let (loads, m) = measured_loads(true, slow, Duration::ZERO);
        assert_eq!(loads, 2, "the load from the engine cache is the load time");
        let build = m.engine_build_ms.expect("the engine build is reported");
        assert!(build + m.load_ms >= 100.0 - 1e-6, "{build} + {}", m.load_ms);
        // A quick build, a 100 ms load from the cache: the load time is the
        // cached load's, which a load time taken from the building load misses.
        let (_, m) = measured_loads(true, Duration::ZERO, slow);
        assert!(m.load_ms >= 100.0, "{m:?}");
        // Without a build: one load, no build time.
        let (loads, m) = measured_loads(false, Duration::ZERO, Duration::ZERO);
        assert_eq!((loads, m.engine_build_ms), (1, None));
    }

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
    fn runs_are_sorted_and_use_the_population_deviation() {
        // Mean 5, population standard deviation exactly 2.
        let m = Measurement::of_runs(vec![9.0, 2.0, 4.0, 5.0, 4.0, 7.0, 4.0, 5.0]);
        assert_eq!(m.runs, 8);
        assert_eq!(m.mean_ms, 5.0);
        assert_eq!(m.stdev_ms, 2.0);
        assert_eq!(m.cv, 0.4);
        assert!(m.noisy);
        assert_eq!((m.p50_ms, m.p90_ms, m.p99_ms), (4.0, 9.0, 9.0));
        assert_eq!(m.samples_ms, [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
    }

    #[test]
    fn noisy_means_a_population_cv_above_a_tenth() {
        // [9, 11]: mean 10, population deviation 1 (the sample deviation,
        // sqrt 2, would make it 0.14 and noisy), cv exactly 0.1: not above.
        let at = Measurement::of_runs(vec![11.0, 9.0]);
        assert_eq!((at.mean_ms, at.stdev_ms, at.cv), (10.0, 1.0, 0.1));
        assert!(!at.noisy, "a cv of exactly {NOISY_CV} is not noisy");
        // [8, 12]: deviation 2, cv 0.2: noisy.
        let above = Measurement::of_runs(vec![8.0, 12.0]);
        assert_eq!((above.stdev_ms, above.cv), (2.0, 0.2));
        assert!(above.noisy);
        // [20, 20, 20, 24]: mean 21, deviation sqrt(3) = 1.732, cv 0.0825.
        let quiet = Measurement::of_runs(vec![20.0, 24.0, 20.0, 20.0]);
        assert!((quiet.cv - 3f64.sqrt() / 21.0).abs() < 1e-12, "{quiet:?}");
        assert!(!quiet.noisy);
    }

    #[test]
    fn pooled_measurements_hold_both_runs() {
        let first = Measurement {
            load_ms: 5.0,
            peak_mb: 10.0,
            ..Measurement::of_runs(vec![1.0, 1.0, 1.0, 1.0, 1.0])
        };
        let again = Measurement {
            load_ms: 7.0,
            peak_mb: 12.0,
            ..Measurement::of_runs(vec![1.0, 1.0, 1.0, 9.0, 9.0])
        };
        let both = first.pooled(&again);
        assert_eq!(both.runs, 10);
        // 8 of 10 runs at 1 ms: p50 1, p90 9 (the burst), mean 2.6.
        assert_eq!((both.p50_ms, both.p90_ms), (1.0, 9.0));
        assert!((both.mean_ms - 2.6).abs() < 1e-12, "{both:?}");
        assert!(both.noisy);
        assert_eq!((both.load_ms, both.peak_mb), (5.0, 12.0));
    }

    #[test]
    fn upper_rank_matches_the_binomial_tail() {
        // P(Bin(30, 0.9) <= 27) = 0.589, <= 28 = 0.816: the 29th of 30.
        assert_eq!(upper_rank(30, 0.9, 0.8), Some(29));
        // Ten runs cannot bound p90 at 80%: P(all ten below) = 0.9^10 = 0.349.
        assert_eq!(upper_rank(10, 0.9, 0.8), None);
        // The median of 11 at 80%: P(Bin(11, 0.5) <= 6) = 0.726, <= 7 = 0.887.
        assert_eq!(upper_rank(11, 0.5, 0.8), Some(8));
        assert_eq!(upper_rank(0, 0.5, 0.8), None);
    }

    #[test]
    fn spread_is_the_upper_bound_over_the_percentile() {
        let m = Measurement::of_runs((1..=30).map(f64::from).rev().collect());
        assert_eq!(m.p90_ms, 27.0);
        assert_eq!(m.upper_ms(Percentile::P90), 29.0);
        assert!((m.spread(Percentile::P90) - 2.0 / 27.0).abs() < 1e-12);
        // p99 of 30 runs has no 80% order statistic: the slowest run.
        assert_eq!(m.upper_ms(Percentile::P99), 30.0);
        let cached = Measurement {
            samples_ms: Vec::new(),
            ..m
        };
        assert_eq!(cached.upper_ms(Percentile::P90), 27.0);
    }

    #[test]
    fn status_fields_are_read_in_kb_from_their_own_line() {
        // As proc(5) shows /proc/self/status: tab after the name, padded
        // values, the unit last. Each field has its own value, so reading
        // the wrong line, or keeping the unit, gives another answer.
        let status = "Name:\truntime\n\
                      VmPeak:\t  131168 kB\n\
                      VmHWM:\t   20480 kB\n\
                      VmRSS:\t   13484 kB\n\
                      RssAnon:\t   10264 kB\n\
                      Threads:\t1\n";
        assert_eq!(kb_field(status, "VmRSS:"), Some(13484));
        assert_eq!(kb_field(status, "VmHWM:"), Some(20480));
        assert_eq!(kb_field(status, "RssAnon:"), Some(10264));
        // A count is not a size; an absent field is not zero.
        assert_eq!(kb_field(status, "Threads:"), None);
        assert_eq!(kb_field(status, "VmSwap:"), None);
    }
}
