//! Start-up selection on this device: the driver that steps the
//! [`policy`](crate::policy) with real measurements, caches the decision and
//! hands back a loaded session of the winner.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array4;
use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, BundleError};
use crate::cache::{Cache, CacheKey, Lookup};
use crate::engine::{self, EngineError, EngineKind, EngineOptions, Session};
use crate::policy::{self, BundleSelector, Candidate, Observation, PolicyError, Shortfall, Step};
use crate::probe::{self, DeviceInfo};
use crate::profile::{self, MeasureOptions, Measurement};

pub use crate::profile::Percentile;

/// A memory limit: absolute, or a share of what the device has available.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MemoryLimit {
    Bytes(u64),
    /// A fraction in (0, 1] of the usable memory the probe reports.
    FractionOfAvailable(f64),
}

/// What the user allows: `Limits::latency_ms(25.0).memory_mb(900)`, as
/// written (a memory fraction stays a fraction, so it can key the cache).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub latency_ms: f64,
    pub percentile: Percentile,
    pub batch: u32,
    pub memory: MemoryLimit,
    pub min_quality: Option<f32>,
}

impl Limits {
    /// A latency limit at p90 for batch 1, with half the available memory.
    pub fn latency_ms(ms: impl Into<f64>) -> Limits {
        Limits {
            latency_ms: ms.into(),
            percentile: Percentile::P90,
            batch: 1,
            memory: MemoryLimit::FractionOfAvailable(0.5),
            min_quality: None,
        }
    }

    pub fn memory_mb(self, mb: impl Into<f64>) -> Limits {
        Limits {
            memory: MemoryLimit::Bytes((mb.into() * 1024.0 * 1024.0) as u64),
            ..self
        }
    }

    pub fn memory_fraction(self, fraction: f64) -> Limits {
        Limits {
            memory: MemoryLimit::FractionOfAvailable(fraction),
            ..self
        }
    }

    pub fn percentile(self, percentile: Percentile) -> Limits {
        Limits { percentile, ..self }
    }

    pub fn batch(self, batch: u32) -> Limits {
        Limits { batch, ..self }
    }

    pub fn min_quality(self, q: f32) -> Limits {
        Limits {
            min_quality: Some(q),
            ..self
        }
    }

    /// The policy's limits on this device.
    fn resolve(&self, device: &DeviceInfo) -> Result<policy::Limits, SelectError> {
        let memory_bytes = match self.memory {
            MemoryLimit::Bytes(b) => b,
            MemoryLimit::FractionOfAvailable(f) if f > 0.0 && f <= 1.0 => {
                let usable = device
                    .usable_memory_bytes()
                    .ok_or(SelectError::UnknownMemory)?;
                (usable as f64 * f) as u64
            }
            MemoryLimit::FractionOfAvailable(f) => {
                return Err(SelectError::Limits(format!(
                    "memory fraction {f} is not in (0, 1]"
                )))
            }
        };
        let limits = policy::Limits {
            latency_ms: self.latency_ms as f32,
            memory_bytes,
            min_quality: self.min_quality,
            batch: self.batch,
        };
        // The policy validates too; checking here names the user's words.
        if !(self.latency_ms.is_finite() && self.latency_ms > 0.0) {
            return Err(SelectError::Limits(format!(
                "latency limit {} ms must be positive",
                self.latency_ms
            )));
        }
        if memory_bytes == 0 {
            return Err(SelectError::Limits("memory limit must be positive".into()));
        }
        if self.batch == 0 {
            return Err(SelectError::Limits("batch must be at least 1".into()));
        }
        Ok(limits)
    }
}

/// Why no sub-network could be selected.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("invalid limits: {0}")]
    Limits(String),
    #[error("cannot tell how much memory is available here: give the memory limit in MB")]
    UnknownMemory,
    #[error("selection policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("no sub-network fits: {0}")]
    NothingFits(String),
    #[error("loading the chosen sub-network {id}")]
    Load { id: String, source: EngineError },
}

/// Whether the decision came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheOutcome {
    Hit,
    Miss,
    Disabled,
}

/// What was measured of one candidate during selection.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub id: String,
    pub predicted_ms: Option<f64>,
    /// `None` when the candidate failed to load or run.
    pub measured: Option<Measurement>,
    /// Why it failed, or why it was rejected.
    pub note: Option<String>,
    pub fits: bool,
}

/// The decision that is cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decision {
    id: String,
    measured: Measurement,
    candidates_measured: u32,
}

/// How the runtime loads and measures.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub engine: EngineKind,
    pub engine_options: EngineOptions,
    pub measure: MeasureOptions,
    /// Root of the files the probe reads (`/` on a device).
    pub sysroot: PathBuf,
    /// Where decisions are cached; `None` disables the cache.
    pub cache: Option<PathBuf>,
}

impl RuntimeOptions {
    /// tract, the default measuring rules, the real `/`, the cache at
    /// [`cache::default_path`](crate::cache::default_path) (never in the bundle).
    pub fn for_bundle(_dir: &Path) -> RuntimeOptions {
        RuntimeOptions {
            engine: EngineKind::Tract,
            engine_options: EngineOptions::default(),
            measure: MeasureOptions::default(),
            sysroot: PathBuf::from("/"),
            cache: crate::cache::default_path(),
        }
    }
}

/// A bundle opened on this device.
pub struct Runtime {
    bundle: Bundle,
    options: RuntimeOptions,
    device: DeviceInfo,
}

/// The selected sub-network, loaded and ready to serve.
pub struct Chosen {
    pub id: String,
    pub width: u32,
    pub depth: u32,
    pub measured: Measurement,
    pub limits: policy::Limits,
    pub percentile: Percentile,
    pub cache: CacheOutcome,
    /// Every candidate measured, in order (empty on a cache hit).
    pub trials: Vec<Trial>,
    pub selection_ms: f64,
    session: Box<dyn Session>,
}

impl Chosen {
    /// The loaded session of the winner.
    pub fn session(&mut self) -> &mut dyn Session {
        self.session.as_mut()
    }

    /// Candidates actually measured for this decision (0 on a cache hit).
    pub fn candidates_measured(&self) -> usize {
        self.trials.len()
    }
}

impl Runtime {
    /// Opens `dir` with the default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Runtime, SelectError> {
        let options = RuntimeOptions::for_bundle(dir.as_ref());
        Runtime::with_options(dir, options)
    }

    pub fn with_options(
        dir: impl AsRef<Path>,
        options: RuntimeOptions,
    ) -> Result<Runtime, SelectError> {
        let bundle = Bundle::open(dir)?;
        let device = probe::probe(&options.sysroot);
        Ok(Runtime {
            bundle,
            options,
            device,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// Picks the best sub-network within `limits`, from the cache when this
    /// device, engine, bundle and limits were seen before.
    pub fn select(&self, limits: &Limits) -> Result<Chosen, SelectError> {
        let start = Instant::now();
        let resolved = limits.resolve(&self.device)?;
        let key = self.cache_key(limits);
        let cache = self.options.cache.as_ref().map(Cache::at);
        if let Some(cache) = &cache {
            if let Lookup::Hit(decision) = cache.load::<Decision>(&key) {
                let subnet = self.bundle.subnet(&decision.id)?;
                self.bundle.verify(&subnet)?;
                let session = self
                    .load(&self.bundle.graph_path(&subnet), resolved.batch)
                    .map_err(|source| SelectError::Load {
                        id: decision.id.clone(),
                        source,
                    })?;
                return Ok(Chosen {
                    id: decision.id.clone(),
                    width: subnet.width,
                    depth: subnet.depth,
                    measured: decision.measured,
                    limits: resolved,
                    percentile: limits.percentile,
                    cache: CacheOutcome::Hit,
                    trials: Vec::new(),
                    selection_ms: start.elapsed().as_secs_f64() * 1e3,
                    session,
                });
            }
        }
        let (index, trials) = self.search(&resolved, limits.percentile)?;
        let manifest = self.bundle.manifest();
        let subnet = &manifest.subnets[index];
        let measured = trials
            .iter()
            .rfind(|t| t.id == subnet.id)
            .and_then(|t| t.measured.clone())
            .expect("winners are measured");
        let session = self
            .load(&self.bundle.graph_path(subnet), resolved.batch)
            .map_err(|source| SelectError::Load {
                id: subnet.id.to_owned(),
                source,
            })?;
        if let Some(cache) = &cache {
            let decision = Decision {
                id: subnet.id.to_owned(),
                measured: measured.clone(),
                candidates_measured: trials.len() as u32,
            };
            // A cache that cannot be written costs the next boot a search, nothing more.
            let _ = cache.store(&key, &decision);
        }
        Ok(Chosen {
            id: subnet.id.to_owned(),
            width: subnet.width,
            depth: subnet.depth,
            measured,
            limits: resolved,
            percentile: limits.percentile,
            cache: if cache.is_some() {
                CacheOutcome::Miss
            } else {
                CacheOutcome::Disabled
            },
            trials,
            selection_ms: start.elapsed().as_secs_f64() * 1e3,
            session,
        })
    }

    /// Measures one sub-network (integrity checked first).
    pub fn profile(&self, id: &str, batch: u32) -> Result<Measurement, SelectError> {
        let subnet = self.bundle.subnet(id)?;
        self.measure(&subnet, batch)
            .map_err(|source| SelectError::Load {
                id: id.to_owned(),
                source,
            })
    }

    fn search(
        &self,
        limits: &policy::Limits,
        percentile: Percentile,
    ) -> Result<(usize, Vec<Trial>), SelectError> {
        let manifest = self.bundle.manifest();
        let candidates: Vec<Candidate> = manifest.subnets.iter().map(Candidate::from).collect();
        let mut selector = BundleSelector::new(&candidates, *limits)?;
        let mut trials = Vec::new();
        loop {
            match selector.next() {
                Step::Measure(i) => {
                    let (obs, trial) = self.try_candidate(&selector, i, limits, percentile);
                    trials.push(trial);
                    selector.record(i, obs)?;
                }
                // Measured again with the same options until the driver confirms properly.
                Step::Confirm { index, rival } => {
                    for i in std::iter::once(index).chain(rival) {
                        let (obs, trial) = self.try_candidate(&selector, i, limits, percentile);
                        trials.push(trial);
                        selector.record_confirmation(i, obs)?;
                    }
                }
                Step::Chosen { index, .. } => return Ok((index, trials)),
                Step::NothingFits(shortfall) => {
                    return Err(SelectError::NothingFits(
                        self.explain(shortfall, limits, percentile),
                    ))
                }
            }
        }
    }

    /// Verifies and measures candidate `i`: what the selector is told, and
    /// what the report shows.
    fn try_candidate(
        &self,
        selector: &BundleSelector,
        i: usize,
        limits: &policy::Limits,
        percentile: Percentile,
    ) -> (Observation, Trial) {
        let subnet = &self.bundle.manifest().subnets[i];
        let predicted_ms = selector.predicted_latency_ms(i).map(f64::from);
        match self
            .bundle
            .verify(subnet)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                self.measure(subnet, limits.batch)
                    .map_err(|e| format!("{e:#}"))
            }) {
            Ok(m) => {
                let point = policy::Measurement {
                    latency_ms: m.percentile_ms(percentile) as f32,
                    memory_bytes: (m.peak_mb * 1024.0 * 1024.0) as u64,
                    spread: 0.0,
                };
                let fits = limits.admit(&point);
                let trial = Trial {
                    id: subnet.id.to_owned(),
                    predicted_ms,
                    measured: Some(m),
                    note: None,
                    fits,
                };
                (Observation::Measured(point), trial)
            }
            Err(e) => {
                let note = Some(format!("failed, falling back: {e}"));
                (
                    Observation::Failed,
                    Trial {
                        id: subnet.id.to_owned(),
                        predicted_ms,
                        measured: None,
                        note,
                        fits: false,
                    },
                )
            }
        }
    }

    fn explain(
        &self,
        shortfall: Shortfall,
        limits: &policy::Limits,
        percentile: Percentile,
    ) -> String {
        let manifest = self.bundle.manifest();
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        match shortfall {
            Shortfall::Quality => "no sub-network reaches the minimum quality".into(),
            Shortfall::Memory { smallest, predicted_bytes } => format!(
                "the smallest, {}, is predicted to need {:.0} MB, over the {:.0} MB limit",
                manifest.subnets[smallest].id,
                mb(predicted_bytes),
                mb(limits.memory_bytes)
            ),
            Shortfall::Missed { smallest, measurement } => format!(
                "the smallest, {}, measured {:.2} ms (p{}) and {:.0} MB against limits of {:.2} ms and {:.0} MB",
                manifest.subnets[smallest].id,
                measurement.latency_ms,
                percentile.value(),
                mb(measurement.memory_bytes),
                limits.latency_ms,
                mb(limits.memory_bytes)
            ),
            Shortfall::OverMemory { first, second } => format!(
                "the two smallest, {} and {}, measured {:.0} MB and {:.0} MB, over the {:.0} MB limit",
                manifest.subnets[first.0].id,
                manifest.subnets[second.0].id,
                mb(first.1),
                mb(second.1),
                mb(limits.memory_bytes)
            ),
            Shortfall::Unconfirmed { closest, measurement } => format!(
                "{} winners missed the limits when measured again; the closest, {}, measured {:.2} ms (p{}) against {:.2} ms",
                policy::MAX_CONFIRMATIONS,
                manifest.subnets[closest].id,
                measurement.latency_ms,
                percentile.value(),
                limits.latency_ms
            ),
            Shortfall::Failed => "every candidate failed to load or run".into(),
        }
    }

    fn measure(
        &self,
        subnet: &crate::manifest::Subnet<'_>,
        batch: u32,
    ) -> Result<Measurement, EngineError> {
        let graph = self.bundle.graph_path(subnet);
        let input = Array4::<f32>::zeros(self.input_shape(batch));
        let (_, m) = profile::measure(
            || self.load(&graph, batch),
            input.view(),
            &self.options.measure,
        )?;
        Ok(m)
    }

    fn load(&self, graph: &Path, batch: u32) -> Result<Box<dyn Session>, EngineError> {
        let opts = EngineOptions {
            batch: batch as usize,
            ..self.options.engine_options.clone()
        };
        engine::load(self.options.engine, graph, &opts)
    }

    /// `[batch, 3, H, W]` for this bundle.
    pub fn input_shape(&self, batch: u32) -> [usize; 4] {
        let side = self.bundle.manifest().teacher.config.image_size as usize;
        [batch as usize, 3, side, side]
    }

    fn cache_key(&self, limits: &Limits) -> CacheKey {
        let engine = match self.options.engine {
            EngineKind::Tract => "tract".to_owned(),
            other => format!("{other}:{}", self.options.engine_options.provider),
        };
        CacheKey {
            device: self.device.fingerprint(),
            power_mode: self.device.power_mode().map(str::to_owned),
            clocks: None,
            engine,
            tailor: env!("CARGO_PKG_VERSION").to_owned(),
            bundle: self.bundle.identity(),
            limits: *limits,
            threads: self.options.engine_options.threads.unwrap_or(0) as u32,
            measuring: self.options.measure.clone(),
        }
    }
}

/// The human report of a selection: the limits, every candidate measured
/// with its prediction and verdict, and the choice.
pub fn render_selection(m: &crate::manifest::Manifest<'_>, c: &Chosen) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let p = c.percentile.value();
    let _ = writeln!(
        out,
        "limits: p{p} latency <= {:.2} ms at batch {}, memory <= {:.0} MB",
        c.limits.latency_ms,
        c.limits.batch,
        c.limits.memory_bytes as f64 / (1024.0 * 1024.0)
    );
    if c.trials.is_empty() {
        let _ = writeln!(out, "decision from the cache (same device, power mode, engine, bundle and limits): nothing measured");
    } else {
        let _ = writeln!(
            out,
            "measured {} of {} candidates:",
            c.trials.len(),
            m.subnets.len()
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>12} {:>12} {:>9}  verdict",
            "id",
            "predicted",
            format!("p{p} ms"),
            "peak MB"
        );
        for t in &c.trials {
            let predicted = t.predicted_ms.map_or("-".into(), |v| format!("{v:.3}"));
            let (lat, mem) = t.measured.as_ref().map_or(("-".into(), "-".into()), |m| {
                (
                    format!("{:.3}", m.percentile_ms(c.percentile)),
                    format!("{:.1}", m.peak_mb),
                )
            });
            let verdict = match (&t.note, t.fits) {
                (Some(note), _) => note.clone(),
                (None, true) => "fits".into(),
                (None, false) => "over the limits".into(),
            };
            let _ = writeln!(
                out,
                "  {:<12} {predicted:>12} {lat:>12} {mem:>9}  {verdict}",
                t.id
            );
        }
    }
    let _ = writeln!(
        out,
        "chosen: {} (width {}, depth {}): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, peak {:.1} MB; selection took {:.0} ms ({})",
        c.id,
        c.width,
        c.depth,
        c.measured.p50_ms,
        c.measured.p90_ms,
        c.measured.p99_ms,
        c.measured.peak_mb,
        c.selection_ms,
        match c.cache {
            CacheOutcome::Hit => "cache hit",
            CacheOutcome::Miss => "cache miss, decision cached",
            CacheOutcome::Disabled => "cache disabled",
        }
    );
    out
}
