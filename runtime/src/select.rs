//! Start-up selection on this device: the driver that steps the
//! [`policy`](crate::policy) with real measurements, caches the decision and
//! hands back a loaded session of the winner.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, BundleError};
use crate::cache::{self, Cache, CacheKey, Lookup};
use crate::engine::{
    self, EngineError, EngineInfo, EngineKind, EngineOptions, ExecutionProvider, Session,
};
use crate::isolate::{self, Failure, Isolation, Job};
use crate::manifest::{Manifest, Subnet};
use crate::policy::{self, BundleSelector, Candidate, Observation, PolicyError, Shortfall, Step};
use crate::probe::{self, DeviceInfo};
use crate::profile::{MeasureOptions, Measurement};

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
    fn resolve(&self, device: &DeviceInfo) -> Result<policy::Bounds, SelectError> {
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
        let limits = policy::Bounds {
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
    /// The engine cannot run here at all: no candidate was tried.
    #[error("the {engine} engine cannot run here")]
    Engine {
        engine: EngineKind,
        #[source]
        source: EngineError,
    },
    /// A failure that would hit every candidate, or hit two in a row.
    #[error("stopped the search: {0}")]
    Stopped(String),
    #[error("measuring {id}")]
    Measure {
        id: String,
        #[source]
        failure: Failure,
    },
    #[error("loading the chosen sub-network {id}")]
    Load { id: String, source: EngineError },
}

/// What became of the decision cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheOutcome {
    /// The decision came from the cache.
    Hit,
    /// Selected afresh and cached.
    Miss,
    /// No cache was used.
    Disabled,
    /// Selected afresh; the cache could not be written (see the notes).
    Unwritable,
}

/// Which part of the search a trial belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// A first measurement, to find the boundary.
    Search,
    /// A longer, fresh measurement of a would-be winner (and its rival).
    Confirm,
}

/// What was measured of one candidate during selection.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub id: String,
    /// The engine that measured it.
    pub engine: EngineKind,
    pub stage: Stage,
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
    /// The engine that measured it, and serves it.
    engine: EngineKind,
    /// The confirmation's measurement, without its samples.
    measured: Measurement,
    candidates_measured: u32,
    noisy: bool,
}

/// Which bundle files to hash before a candidate is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Files not verified before, or changed since (size, mtime, inode).
    #[default]
    Changed,
    /// Every file a candidate reads, whatever was recorded.
    Always,
}

/// A confirmation is this many times longer than a search measurement.
pub const CONFIRM_FACTOR: u32 = 3;
/// A noisy confirmation is repeated this many times, each twice as long.
pub const NOISY_REPEATS: u32 = 1;

/// Which engine measures and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// ONNX Runtime when its library loads here and it runs the first
    /// candidate faster than tract; else tract. A provider other than the
    /// CPU's asks for ONNX Runtime, which must then be available.
    #[default]
    Auto,
    /// This engine only: an error if it cannot run here.
    Only(EngineKind),
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    /// `auto`, or an engine's name.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(EngineChoice::Auto);
        }
        s.parse()
            .map(EngineChoice::Only)
            .map_err(|e: engine::UnknownName| format!("{e}, or auto"))
    }
}

/// One engine's measurement of the first candidate, when `auto` compared
/// engines.
#[derive(Debug, Clone, Serialize)]
pub struct EngineTrial {
    /// As keyed in the cache, e.g. `ort 1.31.1 cpu`.
    pub engine: String,
    pub id: String,
    pub measured: Option<Measurement>,
    /// Why it failed, if it did.
    pub note: Option<String>,
}

/// How the runtime loads and measures.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub engine: EngineChoice,
    pub engine_options: EngineOptions,
    pub measure: MeasureOptions,
    /// Root of the files the probe reads (`/` on a device).
    pub sysroot: PathBuf,
    /// The decision cache file; `None` disables the cache.
    pub cache: Option<PathBuf>,
    pub isolation: Isolation,
    pub verify: Verify,
}

impl Default for RuntimeOptions {
    /// The faster engine available, the default measuring rules, the real
    /// `/`, the cache where [`cache::default_path`] says, candidates
    /// measured in this process.
    fn default() -> Self {
        RuntimeOptions {
            engine: EngineChoice::Auto,
            engine_options: EngineOptions::default(),
            measure: MeasureOptions::default(),
            sysroot: PathBuf::from("/"),
            cache: cache::default_path(),
            isolation: Isolation::InProcess,
            verify: Verify::Changed,
        }
    }
}

/// A bundle opened on this device.
pub struct Runtime {
    bundle: Bundle,
    options: RuntimeOptions,
    device: DeviceInfo,
}

/// The winner's confirmation, and its rival's when one was close.
#[derive(Debug, Clone, Serialize)]
pub struct Confirmed {
    pub id: String,
    pub runs: u32,
    /// The limit's percentile, from the confirmation alone.
    pub latency_ms: f64,
    /// Its upper confidence bound ([`profile::UPPER_CONFIDENCE`]).
    pub upper_ms: f64,
    pub cv: f64,
    /// Measurements made for confirmations, the winner's and others'.
    pub confirmations: u32,
    /// The close rival measured interleaved with the winner, if any.
    pub rival: Option<RivalMeasured>,
}

/// A rival's interleaved confirmation.
#[derive(Debug, Clone, Serialize)]
pub struct RivalMeasured {
    pub id: String,
    pub latency_ms: f64,
    pub fits: bool,
}

/// The selected sub-network, loaded and ready to serve.
pub struct Chosen {
    pub id: String,
    pub width: u32,
    pub depth: u32,
    pub measured: Measurement,
    pub limits: policy::Bounds,
    pub percentile: Percentile,
    pub cache: CacheOutcome,
    /// The engine that measured and serves it, e.g. `tract 0.23.9`.
    pub engine: String,
    /// With `auto` and two engines available: both engines' measurements of
    /// the first candidate (empty on a cache hit).
    pub engine_trials: Vec<EngineTrial>,
    /// Every candidate measured, in order (empty on a cache hit).
    pub trials: Vec<Trial>,
    /// `None` on a cache hit (the cached decision was confirmed when made).
    pub confirmed: Option<Confirmed>,
    /// The winner's measurement stayed noisy after repeats: it holds less.
    pub noisy: bool,
    /// What the user should know: a stale cache, an unwritable cache, a
    /// cached winner that broke.
    pub notes: Vec<String>,
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
        let mut ids: Vec<&str> = self.trials.iter().map(|t| t.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

/// The search's result.
struct Found {
    index: usize,
    engine: EngineInfo,
    engine_trials: Vec<EngineTrial>,
    measured: Measurement,
    trials: Vec<Trial>,
    confirmed: Confirmed,
    noisy: bool,
    /// What the user should know about how it was found.
    notes: Vec<String>,
}

/// How one engine's search ended.
enum Ended {
    /// `index` (in the manifest) won; `better` are the candidates ranked
    /// above it.
    Chosen { index: usize, better: Vec<usize> },
    /// Nothing fits, and why.
    NothingFits(String),
    /// The search stopped: the same failure twice in a row, one that would
    /// hit every candidate, or two candidates over memory.
    Stopped(SelectError),
}

/// Why `min_quality` excludes everything: the best score and its metric, or
/// that the bundle was never calibrated.
fn quality_shortfall(manifest: &Manifest<'_>, min_quality: Option<f32>) -> String {
    let min = min_quality.map_or(String::new(), |q| format!(" {q}"));
    let best = manifest
        .subnets
        .iter()
        .filter_map(|s| s.quality.map(|q| (q, s.id)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match (&manifest.calibration, best) {
        (Some(c), Some((q, id))) => format!(
            "no sub-network reaches the minimum quality{min} ({}; the best is {id} at {q})",
            c.quality_metric.name()
        ),
        _ => format!(
            "no sub-network reaches the minimum quality{min}: the bundle is not calibrated (exporter calibrate BUNDLE --data DATA)"
        ),
    }
}

impl Runtime {
    /// Opens `dir` with the default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Runtime, SelectError> {
        Runtime::with_options(dir, RuntimeOptions::default())
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
        let engines = self.engines(resolved.batch)?;
        let key = self.cache_key(limits, &engines);
        let mut notes = Vec::new();
        let cache = self.options.cache.as_ref().map(Cache::at);
        // Held until the decision is stored: a second runtime starting at
        // once waits, then finds this one's decision.
        let lock = cache.as_ref().map(Cache::lock);
        if let Some(Err(e)) = &lock {
            notes.push(format!("{e}: selecting without the cache's lock"));
        }
        if let Some(cache) = &cache {
            if self.options.verify == Verify::Changed {
                self.bundle.trust(&cache.verified());
            }
            match cache.load::<Decision>(&key) {
                Lookup::Hit(decision) => match self.reuse(&decision, &resolved, &engines) {
                    Ok((subnet, engine, session)) => {
                        return Ok(Chosen {
                            id: decision.id,
                            width: subnet.width,
                            depth: subnet.depth,
                            measured: decision.measured,
                            limits: resolved,
                            percentile: limits.percentile,
                            cache: CacheOutcome::Hit,
                            engine: engine.to_string(),
                            engine_trials: Vec::new(),
                            trials: Vec::new(),
                            confirmed: None,
                            noisy: decision.noisy,
                            notes,
                            selection_ms: ms(start.elapsed()),
                            session,
                        })
                    }
                    Err(why) => notes.push(format!(
                        "the cached choice {} cannot be used ({why}): selecting afresh",
                        decision.id
                    )),
                },
                Lookup::Miss(_) => {}
            }
        }

        let mut found = self.search(&resolved, limits.percentile, &engines)?;
        notes.append(&mut found.notes);
        let manifest = self.bundle.manifest();
        let subnet = &manifest.subnets[found.index];
        let session = self
            .load(
                &self.bundle.graph_path(subnet),
                resolved.batch,
                found.engine.kind,
            )
            .map_err(|source| SelectError::Load {
                id: subnet.id.to_owned(),
                source,
            })?;
        if found.noisy {
            notes.push(format!(
                "{} measured noisy (cv {:.2}) even after repeating: the device was busy or throttling; \
                 the decision is cached marked noisy, select again on a quiet device with --no-cache",
                subnet.id, found.measured.cv
            ));
        }
        let outcome = match &cache {
            None => CacheOutcome::Disabled,
            Some(cache) => {
                let decision = Decision {
                    id: subnet.id.to_owned(),
                    engine: found.engine.kind,
                    measured: Measurement {
                        samples_ms: Vec::new(),
                        ..found.measured.clone()
                    },
                    candidates_measured: found.trials.len() as u32,
                    noisy: found.noisy,
                };
                let stored = cache
                    .store(&key, &decision)
                    .and_then(|()| cache.record_verified(&self.bundle.stamps()));
                match stored {
                    Ok(()) => CacheOutcome::Miss,
                    Err(e) => {
                        notes.push(format!("decision not cached: {e}"));
                        CacheOutcome::Unwritable
                    }
                }
            }
        };
        drop(lock);
        Ok(Chosen {
            id: subnet.id.to_owned(),
            width: subnet.width,
            depth: subnet.depth,
            measured: found.measured,
            limits: resolved,
            percentile: limits.percentile,
            cache: outcome,
            engine: found.engine.to_string(),
            engine_trials: found.engine_trials,
            trials: found.trials,
            confirmed: Some(found.confirmed),
            noisy: found.noisy,
            notes,
            selection_ms: ms(start.elapsed()),
            session,
        })
    }

    /// The engines to measure with, the default first; `auto` compares
    /// them on the first candidate.
    fn engines(&self, batch: u32) -> Result<Vec<EngineInfo>, SelectError> {
        let options = self.engine_options(batch);
        let check = |kind| {
            engine::check(kind, &options).map_err(|source| SelectError::Engine {
                engine: kind,
                source,
            })
        };
        Ok(match self.options.engine {
            EngineChoice::Only(kind) => vec![check(kind)?],
            EngineChoice::Auto if options.provider != ExecutionProvider::Cpu => {
                vec![check(EngineKind::Ort)?]
            }
            EngineChoice::Auto => std::iter::once(check(EngineKind::Tract)?)
                .chain(check(EngineKind::Ort).ok())
                .collect(),
        })
    }

    /// The cached winner, verified and loaded with its engine, if it still
    /// fits the memory resolved now; else why not.
    fn reuse<'e>(
        &self,
        decision: &Decision,
        limits: &policy::Bounds,
        engines: &'e [EngineInfo],
    ) -> Result<(Subnet<'_>, &'e EngineInfo, Box<dyn Session>), String> {
        let engine = engines
            .iter()
            .find(|e| e.kind == decision.engine)
            .ok_or_else(|| format!("its engine, {}, is not in use", decision.engine))?;
        let subnet = self
            .bundle
            .subnet(&decision.id)
            .map_err(|e| e.to_string())?;
        let peak = (decision.measured.peak_mb * MB) as u64;
        if peak > limits.memory_bytes {
            return Err(format!(
                "it peaked at {:.0} MB, over the {:.0} MB allowed now",
                decision.measured.peak_mb,
                limits.memory_bytes as f64 / MB
            ));
        }
        self.bundle.verify(&subnet).map_err(|e| e.to_string())?;
        let session = self
            .load(&self.bundle.graph_path(&subnet), limits.batch, engine.kind)
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
        Ok((subnet, engine, session))
    }

    /// Measures one sub-network, its files verified first.
    pub fn profile(&self, id: &str, batch: u32) -> Result<Measurement, SelectError> {
        let subnet = self.bundle.subnet(id)?;
        self.bundle.verify(&subnet)?;
        let engine = self.engines(batch)?.remove(0);
        let mut measured = self
            .measure(&[&subnet], batch, &self.options.measure, engine.kind)
            .map_err(|failure| SelectError::Measure {
                id: id.to_owned(),
                failure,
            })?;
        Ok(measured.remove(0))
    }

    /// Searches with the first engine (racing the others on the first
    /// candidate). With `auto`, the engine that lost the race then looks
    /// among the candidates ranked above the choice, or among all when
    /// nothing fit or the search stopped: one race on the cheapest candidate
    /// does not decide which engine fits the most at every limit.
    fn search(
        &self,
        limits: &policy::Bounds,
        percentile: Percentile,
        engines: &[EngineInfo],
    ) -> Result<Found, SelectError> {
        let everyone: Vec<usize> = (0..self.bundle.manifest().subnets.len()).collect();
        let mut search = Search::new(self, limits, percentile, engines);
        let ended = search.run(&everyone)?;
        let other = engines.iter().find(|e| e.kind != search.engine.kind);
        let (pool, other) = match (&ended, other) {
            (_, None) => return search.end(ended),
            // Nothing measured: what excluded everything excludes it for any engine.
            _ if search.trials.is_empty() => return search.end(ended),
            (Ended::Chosen { better, .. }, _) if better.is_empty() => return search.end(ended),
            (Ended::Chosen { better, .. }, Some(other)) => (better.clone(), other),
            (Ended::NothingFits(_) | Ended::Stopped(_), Some(other)) => (everyone, other),
        };
        let mut second = Search::new(self, limits, percentile, std::slice::from_ref(other));
        let looked = second.run(&pool);
        let manifest = self.bundle.manifest();
        let beaten = match &ended {
            Ended::Chosen { index, .. } => format!(
                "ranked above {}'s choice, {}",
                search.engine, manifest.subnets[*index].id
            ),
            Ended::NothingFits(_) => format!("where nothing fit with {}", search.engine),
            Ended::Stopped(e) => format!("where the search with {} ended: {e}", search.engine),
        };
        let why = match looked {
            Ok(Ended::Chosen { index, .. }) => {
                let note = format!(
                    "{} fits with {}, {beaten}",
                    manifest.subnets[index].id, second.engine
                );
                second
                    .trials
                    .splice(0..0, std::mem::take(&mut search.trials));
                second.engine_trials = std::mem::take(&mut search.engine_trials);
                second.confirmations += search.confirmations;
                let mut found = second.end(Ended::Chosen {
                    index,
                    better: Vec::new(),
                })?;
                found.notes.push(note);
                return Ok(found);
            }
            Ok(Ended::NothingFits(why)) => why,
            Ok(Ended::Stopped(e)) | Err(e) => format!("{:#}", anyhow::Error::from(e)),
        };
        let note = format!("{} found nothing better: {why}", second.engine);
        match search.end(ended) {
            Ok(mut found) => {
                found.trials.append(&mut second.trials);
                found.confirmed.confirmations += second.confirmations;
                found.notes.push(note);
                Ok(found)
            }
            Err(SelectError::NothingFits(first)) => {
                Err(SelectError::NothingFits(format!("{first}; {note}")))
            }
            Err(SelectError::Stopped(first)) => {
                Err(SelectError::Stopped(format!("{first}; {note}")))
            }
            Err(e) => Err(e),
        }
    }

    /// Why nothing fits, in words; the shortfall's indices are into `pool`.
    fn explain(
        &self,
        shortfall: Shortfall,
        pool: &[usize],
        limits: &policy::Bounds,
        percentile: Percentile,
    ) -> String {
        let manifest = self.bundle.manifest();
        let mb = |b: u64| b as f64 / MB;
        let id = |i: usize| manifest.subnets[pool[i]].id;
        let against = |m: &policy::Reading| {
            format!(
                "{:.2} ms (p{}) and {:.0} MB against limits of {:.2} ms and {:.0} MB",
                m.latency_ms,
                percentile.value(),
                mb(m.memory_bytes),
                limits.latency_ms,
                mb(limits.memory_bytes)
            )
        };
        match shortfall {
            Shortfall::Quality => quality_shortfall(&manifest, limits.min_quality),
            Shortfall::Memory { smallest, predicted_bytes } => format!(
                "the smallest, {}, is predicted to need {:.0} MB, over the {:.0} MB limit",
                id(smallest),
                mb(predicted_bytes),
                mb(limits.memory_bytes)
            ),
            Shortfall::OverMemory { first, second } => format!(
                "the two cheapest candidates measured over the {:.0} MB memory limit: {} peaked at {:.0} MB, {} at {:.0} MB",
                mb(limits.memory_bytes),
                id(first.0),
                mb(first.1),
                id(second.0),
                mb(second.1)
            ),
            Shortfall::Missed { smallest, measurement } => format!(
                "the smallest, {}, measured {}",
                id(smallest),
                against(&measurement)
            ),
            Shortfall::Unconfirmed { closest, measurement } => format!(
                "{} winners missed the limits when measured again; the closest, {}, measured {}",
                policy::MAX_CONFIRMATIONS,
                id(closest),
                against(&measurement)
            ),
            Shortfall::Failed => "every candidate failed to load or run".into(),
        }
    }

    /// Measures `subnets` in one job (round-robin when there are several).
    fn measure(
        &self,
        subnets: &[&Subnet<'_>],
        batch: u32,
        measure: &MeasureOptions,
        engine: EngineKind,
    ) -> Result<Vec<Measurement>, Failure> {
        let job = Job {
            graphs: subnets.iter().map(|s| self.bundle.graph_path(s)).collect(),
            engine,
            options: self.engine_options(batch),
            measure: measure.clone(),
            input_shape: self.input_shape(batch),
        };
        isolate::measure(&self.options.isolation, &job)
    }

    fn load(
        &self,
        graph: &Path,
        batch: u32,
        engine: EngineKind,
    ) -> Result<Box<dyn Session>, EngineError> {
        engine::load(engine, graph, &self.engine_options(batch))
    }

    fn engine_options(&self, batch: u32) -> EngineOptions {
        EngineOptions {
            batch: batch as usize,
            ..self.options.engine_options.clone()
        }
    }

    /// `[batch, 3, H, W]` for this bundle.
    pub fn input_shape(&self, batch: u32) -> [usize; 4] {
        let side = self.bundle.manifest().teacher.config.image_size() as usize;
        [batch as usize, 3, side, side]
    }

    /// `engines` keyed by name and version: `auto` is keyed by the engines
    /// it could choose from, so installing ONNX Runtime selects again.
    fn cache_key(&self, limits: &Limits, engines: &[EngineInfo]) -> CacheKey {
        let names: Vec<String> = engines.iter().map(EngineInfo::to_string).collect();
        let engine = match self.options.engine {
            EngineChoice::Auto => format!("auto: {}", names.join(" | ")),
            EngineChoice::Only(_) => names.join(""),
        };
        CacheKey {
            device: self.device.fingerprint(),
            power_mode: self.device.power_mode().map(str::to_owned),
            clocks: self.device.clock_state(),
            engine,
            tailor: env!("CARGO_PKG_VERSION").to_owned(),
            bundle: self.bundle.identity(),
            limits: *limits,
            threads: self.options.engine_options.threads.unwrap_or(0) as u32,
            measuring: self.options.measure.clone(),
        }
    }
}

/// The state of one search: its trials and the failure streak.
struct Search<'r> {
    runtime: &'r Runtime,
    limits: &'r policy::Bounds,
    percentile: Percentile,
    /// The engine measuring the candidates.
    engine: EngineInfo,
    /// Engines still to compare with it on the first candidate.
    contenders: Vec<EngineInfo>,
    engine_trials: Vec<EngineTrial>,
    trials: Vec<Trial>,
    /// The previous trial's failure kind and candidate, if it failed.
    last_failure: Option<(String, String)>,
    confirmations: u32,
}

impl<'r> Search<'r> {
    /// A search measuring with `engines[0]`, racing the rest on the first
    /// candidate.
    fn new(
        runtime: &'r Runtime,
        limits: &'r policy::Bounds,
        percentile: Percentile,
        engines: &[EngineInfo],
    ) -> Self {
        Search {
            runtime,
            limits,
            percentile,
            engine: engines[0].clone(),
            contenders: engines[1..].to_vec(),
            engine_trials: Vec::new(),
            trials: Vec::new(),
            last_failure: None,
            confirmations: 0,
        }
    }

    /// Steps a selector over the `pool`'s candidates (manifest indices)
    /// until it chooses one or nothing fits.
    fn run(&mut self, pool: &[usize]) -> Result<Ended, SelectError> {
        let runtime = self.runtime;
        let manifest = runtime.bundle.manifest();
        let candidates: Vec<Candidate> = pool
            .iter()
            .map(|&i| Candidate::from(&manifest.subnets[i]))
            .collect();
        let mut selector = BundleSelector::new(&candidates, *self.limits)?;
        loop {
            match selector.next() {
                Step::Measure(i) => {
                    let predicted_ms = selector.predicted_latency_ms(i).map(f64::from);
                    let obs = match self.measure(pool[i], predicted_ms) {
                        Ok(obs) => obs,
                        Err(e) => return stopped(e),
                    };
                    selector.record(i, obs)?;
                }
                Step::Confirm { index, rival } => {
                    let confirmed = match self.confirm(pool[index], rival.map(|r| pool[r])) {
                        Ok(confirmed) => confirmed,
                        Err(e) => return stopped(e),
                    };
                    for (i, obs) in std::iter::once(index).chain(rival).zip(confirmed) {
                        selector.record_confirmation(i, obs)?;
                    }
                }
                Step::Chosen { index, .. } => {
                    return Ok(Ended::Chosen {
                        index: pool[index],
                        better: selector.ranked_above(index).map(|i| pool[i]).collect(),
                    })
                }
                Step::NothingFits(shortfall) => {
                    let mut why = runtime.explain(shortfall, pool, self.limits, self.percentile);
                    if let Some(note) = self.trials.iter().rev().find_map(|t| t.note.as_ref()) {
                        why.push_str(&format!("; the last failure: {note}"));
                    }
                    return Ok(Ended::NothingFits(why));
                }
            }
        }
    }

    /// A first measurement of candidate `i`.
    fn measure(&mut self, i: usize, predicted_ms: Option<f64>) -> Result<Observation, SelectError> {
        let runtime = self.runtime;
        let manifest = runtime.bundle.manifest();
        let subnet = &manifest.subnets[i];
        let measured = self.verified(subnet).and_then(|()| {
            let measured = runtime.measure(
                &[subnet],
                self.limits.batch,
                &runtime.options.measure,
                self.engine.kind,
            );
            let measured = self.race(subnet, measured);
            measured
                .map(|mut m| m.remove(0))
                .map_err(|f| self.failed(subnet.id, f))
        });
        match measured {
            Ok(m) => {
                self.last_failure = None;
                let point = self.point(&m);
                let fits = self.limits.admit(&point);
                self.trials.push(Trial {
                    id: subnet.id.to_owned(),
                    engine: self.engine.kind,
                    stage: Stage::Search,
                    predicted_ms,
                    measured: Some(m),
                    note: None,
                    fits,
                });
                Ok(Observation::Measured(point))
            }
            Err(Stop::Search(e)) => Err(e),
            Err(Stop::Candidate(note)) => {
                self.trials.push(Trial {
                    id: subnet.id.to_owned(),
                    engine: self.engine.kind,
                    stage: Stage::Search,
                    predicted_ms,
                    measured: None,
                    note: Some(note),
                    fits: false,
                });
                Ok(Observation::Failed)
            }
        }
    }

    /// With engines still to compare: measures `subnet` with each, and
    /// continues with the fastest at the limit's percentile (of those within
    /// the memory limit, if any is). `measured` is
    /// the current engine's measurement; its failure keeps the others out
    /// (the search's failure rules judge it), theirs are notes.
    fn race(
        &mut self,
        subnet: &Subnet<'_>,
        measured: Result<Vec<Measurement>, Failure>,
    ) -> Result<Vec<Measurement>, Failure> {
        let contenders = std::mem::take(&mut self.contenders);
        let Ok(current) = &measured else {
            return measured;
        };
        if contenders.is_empty() {
            return measured;
        }
        let runtime = self.runtime;
        let trial =
            |engine: &EngineInfo, outcome: &Result<Vec<Measurement>, Failure>| EngineTrial {
                engine: engine.to_string(),
                id: subnet.id.to_owned(),
                measured: outcome.as_ref().ok().map(|m| m[0].clone()),
                note: outcome.as_ref().err().map(Failure::to_string),
            };
        // Within memory first, then faster.
        let rank = |m: &Measurement| {
            let over = (m.peak_mb * MB) as u64 > self.limits.memory_bytes;
            (over, m.percentile_ms(self.percentile))
        };
        self.engine_trials.push(trial(&self.engine, &measured));
        let mut best = (self.engine.clone(), rank(&current[0]), measured);
        for engine in contenders {
            let outcome = runtime.measure(
                &[subnet],
                self.limits.batch,
                &runtime.options.measure,
                engine.kind,
            );
            self.engine_trials.push(trial(&engine, &outcome));
            if let Ok(m) = &outcome {
                let rank = rank(&m[0]);
                if rank < best.1 {
                    best = (engine, rank, outcome);
                }
            }
        }
        self.engine = best.0;
        best.2
    }

    /// Fresh, longer measurements of a would-be winner and its rival,
    /// interleaved; repeated longer while noisy. The observations come in
    /// that order.
    fn confirm(
        &mut self,
        index: usize,
        rival: Option<usize>,
    ) -> Result<Vec<Observation>, SelectError> {
        let runtime = self.runtime;
        let manifest = runtime.bundle.manifest();
        let indices: Vec<usize> = std::iter::once(index).chain(rival).collect();
        let subnets: Vec<&Subnet<'_>> = indices.iter().map(|&i| &manifest.subnets[i]).collect();
        let base = &runtime.options.measure;
        let mut factor = CONFIRM_FACTOR;
        let mut measured = Err(Stop::Candidate(String::new()));
        for attempt in 0..=NOISY_REPEATS {
            let opts = MeasureOptions {
                min_runs: base.min_runs.saturating_mul(factor),
                min_time: base.min_time * factor,
                max_runs: base.max_runs.saturating_mul(factor),
                ..base.clone()
            };
            self.confirmations += 1;
            measured = subnets
                .iter()
                .try_for_each(|s| self.verified(s))
                .and_then(|()| {
                    runtime
                        .measure(&subnets, self.limits.batch, &opts, self.engine.kind)
                        .map_err(|f| self.failed(subnets[0].id, f))
                });
            let noisy = matches!(&measured, Ok(m) if m[0].noisy);
            if !noisy || attempt == NOISY_REPEATS {
                break;
            }
            factor *= 2;
        }
        match measured {
            Ok(ms) => {
                self.last_failure = None;
                Ok(indices
                    .iter()
                    .zip(ms)
                    .map(|(&i, mut m)| {
                        // Interleaved sessions share one process: each keeps
                        // the memory of its search measurement, made alone.
                        if let Some(alone) = self.searched(i).filter(|_| indices.len() > 1) {
                            (m.rss_mb, m.peak_mb) = (alone.rss_mb, alone.peak_mb);
                        }
                        let point = self.point(&m);
                        let fits = self.limits.admit(&point);
                        self.trials.push(Trial {
                            id: manifest.subnets[i].id.to_owned(),
                            engine: self.engine.kind,
                            stage: Stage::Confirm,
                            predicted_ms: None,
                            measured: Some(m),
                            note: None,
                            fits,
                        });
                        Observation::Measured(point)
                    })
                    .collect())
            }
            Err(Stop::Search(e)) => Err(e),
            Err(Stop::Candidate(note)) => {
                self.trials.push(Trial {
                    id: manifest.subnets[index].id.to_owned(),
                    engine: self.engine.kind,
                    stage: Stage::Confirm,
                    predicted_ms: None,
                    measured: None,
                    note: Some(note),
                    fits: false,
                });
                Ok(vec![Observation::Failed; indices.len()])
            }
        }
    }

    /// The search's result: the winner's confirmation, or why nothing fits.
    fn end(self, ended: Ended) -> Result<Found, SelectError> {
        let index = match ended {
            Ended::Chosen { index, .. } => index,
            Ended::NothingFits(why) => return Err(SelectError::NothingFits(why)),
            Ended::Stopped(e) => return Err(e),
        };
        let runtime = self.runtime;
        let manifest = runtime.bundle.manifest();
        let id = manifest.subnets[index].id;
        let confirmed_trial = |id: &str| {
            self.trials
                .iter()
                .rev()
                .find(|t| t.id == id && t.stage == Stage::Confirm && t.measured.is_some())
        };
        let winner = confirmed_trial(id)
            .and_then(|t| t.measured.clone())
            .expect("the policy chooses only confirmed candidates");
        // The rival measured in the same job as the winner's last confirmation.
        let last = self
            .trials
            .iter()
            .rposition(|t| t.id == id && t.stage == Stage::Confirm);
        let rival = last
            .and_then(|at| self.trials.get(at + 1))
            .filter(|t| t.stage == Stage::Confirm && t.id != id)
            .and_then(|t| {
                let m = t.measured.as_ref()?;
                Some(RivalMeasured {
                    id: t.id.clone(),
                    latency_ms: m.percentile_ms(self.percentile),
                    fits: t.fits,
                })
            });
        let confirmed = Confirmed {
            id: id.to_owned(),
            runs: winner.runs,
            latency_ms: winner.percentile_ms(self.percentile),
            upper_ms: winner.upper_ms(self.percentile),
            cv: winner.cv,
            confirmations: self.confirmations,
            rival,
        };
        Ok(Found {
            index,
            engine: self.engine,
            engine_trials: self.engine_trials,
            noisy: winner.noisy,
            measured: winner,
            trials: self.trials,
            confirmed,
            notes: Vec::new(),
        })
    }

    /// The policy's view of a measurement.
    fn point(&self, m: &Measurement) -> policy::Reading {
        policy::Reading {
            latency_ms: m.percentile_ms(self.percentile) as f32,
            memory_bytes: (m.peak_mb * MB) as u64,
            spread: m.spread(self.percentile) as f32,
        }
    }

    /// Candidate `i`'s search measurement.
    fn searched(&self, i: usize) -> Option<&Measurement> {
        let id = self.runtime.bundle.manifest().subnets[i].id;
        self.trials
            .iter()
            .find(|t| t.id == id && t.stage == Stage::Search)
            .and_then(|t| t.measured.as_ref())
    }

    /// Checks the files of `subnet`; a corrupted file is that candidate's problem.
    fn verified(&self, subnet: &Subnet<'_>) -> Result<(), Stop> {
        self.runtime
            .bundle
            .verify(subnet)
            .map_err(|e| Stop::Candidate(format!("failed, falling back: {e}")))
    }

    /// What a failure means for the search: a systematic failure, or the
    /// same failure as the previous candidate's, ends it; out of memory
    /// twice in a row means nothing fits.
    fn failed(&mut self, id: &str, failure: Failure) -> Stop {
        if failure.is_systematic() {
            return Stop::Search(SelectError::Stopped(format!(
                "{id}: {failure} (every candidate would fail the same way)"
            )));
        }
        let kind = failure.kind().to_owned();
        if let Some((previous_kind, previous)) = self.last_failure.take() {
            if previous_kind == kind {
                let why =
                    format!("{previous} and {id} both failed the same way; the last: {failure}");
                return Stop::Search(match failure {
                    Failure::ExceedsMemory(_) => SelectError::NothingFits(why),
                    _ => SelectError::Stopped(why),
                });
            }
        }
        self.last_failure = Some((kind, id.to_owned()));
        Stop::Candidate(format!("failed, falling back: {failure}"))
    }
}

/// A search the failure rules ended, as such; other errors as they are.
fn stopped(e: SelectError) -> Result<Ended, SelectError> {
    match e {
        SelectError::Stopped(_) | SelectError::NothingFits(_) => Ok(Ended::Stopped(e)),
        e => Err(e),
    }
}

/// How a failed measurement ends.
enum Stop {
    /// The search is over.
    Search(SelectError),
    /// This candidate is out; the note says why.
    Candidate(String),
}

const MB: f64 = 1024.0 * 1024.0;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The human report of a selection: the limits, every candidate measured
/// with its prediction and verdict, the confirmation and the choice.
pub fn render_selection(m: &crate::manifest::Manifest<'_>, c: &Chosen) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let p = c.percentile.value();
    let _ = writeln!(
        out,
        "limits: p{p} latency <= {:.2} ms at batch {}, memory <= {:.0} MB; engine {}",
        c.limits.latency_ms,
        c.limits.batch,
        c.limits.memory_bytes as f64 / MB,
        c.engine
    );
    if c.cache == CacheOutcome::Hit {
        let _ = writeln!(out, "decision from the cache (same device, clocks, engine, bundle, limits and options): nothing measured");
    } else {
        for t in &c.engine_trials {
            let result = match (&t.measured, &t.note) {
                (Some(m), _) => format!("p{p} {:.3} ms", m.percentile_ms(c.percentile)),
                (None, note) => note.clone().unwrap_or_default(),
            };
            let _ = writeln!(out, "engine {} on {}: {result}", t.engine, t.id);
        }
        let _ = writeln!(
            out,
            "measured {} of {} candidates:",
            c.candidates_measured(),
            m.subnets.len()
        );
        let _ = writeln!(
            out,
            "  {:<12} {:<8} {:<6} {:>10} {:>10} {:>10} {:>9}  verdict",
            "id",
            "stage",
            "engine",
            "predicted",
            format!("p{p} ms"),
            "upper ms",
            "peak MB"
        );
        for t in &c.trials {
            let predicted = t.predicted_ms.map_or("-".into(), |v| format!("{v:.3}"));
            let (lat, upper, mem) =
                t.measured
                    .as_ref()
                    .map_or(("-".into(), "-".into(), "-".into()), |m| {
                        (
                            format!("{:.3}", m.percentile_ms(c.percentile)),
                            format!("{:.3}", m.upper_ms(c.percentile)),
                            format!("{:.1}", m.peak_mb),
                        )
                    });
            let verdict = match (&t.note, t.fits) {
                (Some(note), _) => note.clone(),
                (None, true) => "fits".into(),
                (None, false) => "over the limits".into(),
            };
            let stage = match t.stage {
                Stage::Search => "search",
                Stage::Confirm => "confirm",
            };
            let _ = writeln!(
                out,
                "  {:<12} {stage:<8} {:<6} {predicted:>10} {lat:>10} {upper:>10} {mem:>9}  {verdict}",
                t.id,
                t.engine.to_string()
            );
        }
    }
    let _ = writeln!(
        out,
        "chosen: {} (width {}, depth {}): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, peak {:.1} MB{}; selection took {:.0} ms ({})",
        c.id,
        c.width,
        c.depth,
        c.measured.p50_ms,
        c.measured.p90_ms,
        c.measured.p99_ms,
        c.measured.peak_mb,
        if c.noisy { " (noisy)" } else { "" },
        c.selection_ms,
        match c.cache {
            CacheOutcome::Hit => "cache hit",
            CacheOutcome::Miss => "cache miss, decision cached",
            CacheOutcome::Disabled => "cache disabled",
            CacheOutcome::Unwritable => "cache miss, cache not writable",
        }
    );
    out
}
