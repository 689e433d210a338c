//! Start-up selection on this device: the [`Runtime`] facade over a
//! bundle, which resolves the user's [`Limits`], reuses a cached decision or
//! searches afresh, and hands back a loaded session of the winner.
//!
//! Following a latency limit from the CLI to the decision enters each file
//! once: `limits` holds it as written and resolves it to the policy's
//! bounds; [`Runtime::select`] (here) hands them to `reuse`, which serves a
//! cached decision or asks `race` for a fresh one; `race` runs one `search`
//! per [`Setup`] (`setup`: an engine and its thread count) and number
//! format (`precision`) it looks with, each stepping the
//! [`policy`](crate::policy) with trials; `report` renders the result.

mod limits;
mod precision;
mod race;
mod report;
mod reuse;
mod search;
mod setup;
mod shipped;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::bundle::{Bundle, BundleError};
use crate::cache;
use crate::engine::{
    self, EngineError, EngineInfo, EngineKind, EngineOptions, ExecutionProvider, Session,
};
use crate::manifest::{PrecisionKind, Subnet};
use crate::policy::{self, PolicyError};
use crate::probe::{self, DeviceInfo, Load, LoadReading};
use crate::profile::{MeasureOptions, Measurement};
use crate::trial::{self, Failure, Isolation, Job};

pub use crate::profile::Percentile;
pub use limits::{Limits, LimitsError, MemoryLimit};
pub use precision::Precisions;
pub use report::render_selection;
pub use reuse::{CacheKey, CacheOutcome, KeyField};
pub use search::{Confirmed, EngineTrial, RivalMeasured, Stage, Trial, CONFIRM_MEASUREMENTS};
pub use setup::{available_cpus, thread_counts, Setup};
pub use shipped::{ShippedDecisions, ShippedError, TENSORRT_DIR};

/// Why no sub-network could be selected.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("selection policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("no sub-network fits: {0}")]
    NothingFits(String),
    /// `--precision` names no format the bundle has.
    #[error(
        "the bundle has no sub-network in {asked} (it has {has}): \
         widen --precision or add variants with `exporter quantize`"
    )]
    NoPrecision { asked: Precisions, has: String },
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

/// Whether a selection may reuse a cached decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// The decision cached for the same key, if it still holds.
    Cached,
    /// None: a decision made on a busy device is replaced once it is quiet.
    Never,
}

/// Which bundle files to hash before a candidate is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// The chosen sub-network's files, in full, before it is served; the
    /// other candidates' as [`Verify::Changed`].
    #[default]
    Chosen,
    /// Files not verified before, or changed since (size, mtime, inode): a
    /// cached boot hashes nothing, and bit-rot that keeps the size and mtime
    /// goes unseen.
    Changed,
    /// Every file a candidate reads, whatever was recorded.
    Always,
}

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

/// How the runtime loads and measures.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub engine: EngineChoice,
    /// `threads: None` selects the thread count too, among
    /// [`thread_counts`] of the CPUs this process may use; `Some(n)` fixes it.
    pub engine_options: EngineOptions,
    pub measure: MeasureOptions,
    /// Root of the files the probe reads (`/` on a device).
    pub sysroot: PathBuf,
    /// The decision cache file; `None` disables the cache.
    pub cache: Option<PathBuf>,
    /// Decisions shipped in the pack ([`ShippedDecisions`]), tried on a
    /// cache miss; unused when the cache is disabled.
    pub shipped: Option<PathBuf>,
    pub isolation: Isolation,
    pub verify: Verify,
    /// The number formats to choose among; `None`: every one the bundle
    /// has ([`Precisions::default_for`] the provider).
    pub precisions: Option<Precisions>,
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
            shipped: None,
            isolation: Isolation::InProcess,
            verify: Verify::Chosen,
            precisions: None,
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
    /// Its number format (a variant's id also names it, `w384-d12@int8-u8`).
    pub precision: PrecisionKind,
    pub measured: Measurement,
    pub limits: policy::Bounds,
    pub percentile: Percentile,
    pub cache: CacheOutcome,
    /// The engine that measured and serves it, e.g. `tract 0.23.9`.
    pub engine: String,
    /// The engine's intra-op threads it was measured and is served with.
    pub threads: usize,
    /// With `auto` and two engines available: both engines' measurements of
    /// the first candidate of each number format (empty on a cache hit).
    pub engine_trials: Vec<EngineTrial>,
    /// Every candidate measured, in order (empty on a cache hit).
    pub trials: Vec<Trial>,
    /// `None` on a cache hit (the cached decision was confirmed when made).
    pub confirmed: Option<Confirmed>,
    /// The winner's measurement stayed noisy after repeats: it holds less.
    pub noisy: bool,
    /// The load the decision was measured beside (on a hit, when cached).
    pub load: Load,
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

    /// Whether the decision was measured beside other load: it holds less,
    /// and a service selects again once the device is quiet.
    pub fn made_busy(&self) -> bool {
        self.noisy || self.load.is_busy(available_cpus())
    }

    /// Candidates actually measured for this decision (0 on a cache hit).
    pub fn candidates_measured(&self) -> usize {
        let mut ids: Vec<&str> = self.trials.iter().map(|t| t.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
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
        self.select_with(limits, Reuse::Cached)
    }

    /// [`Runtime::select`], or with [`Reuse::Never`] afresh whatever the
    /// cache holds, caching the decision in place of the old one.
    pub fn select_with(&self, limits: &Limits, reuse: Reuse) -> Result<Chosen, SelectError> {
        let start = Instant::now();
        let bounds = limits.resolve(&self.device)?;
        let engines = self.engines(bounds.batch)?;
        let load = LoadReading::now(&self.options.sysroot);
        let mut chosen = self.select_through_cache(limits, &bounds, &engines, reuse, &load)?;
        chosen.selection_ms = ms(start.elapsed());
        Ok(chosen)
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

    /// Measures one sub-network, its files verified first.
    pub fn profile(&self, id: &str, batch: u32) -> Result<Measurement, SelectError> {
        let subnet = self.bundle.subnet(id)?;
        self.bundle.verify(&subnet)?;
        let setup = Setup {
            engine: self.engines(batch)?.remove(0),
            threads: self.thread_counts()[0],
        };
        let mut measured = self
            .measure(&[&subnet], batch, &self.options.measure, &setup, None)
            .map_err(|failure| SelectError::Measure {
                id: id.to_owned(),
                failure,
            })?;
        Ok(measured.remove(0))
    }

    /// The number formats to select among: the user's, or the provider's default.
    fn precisions(&self) -> Precisions {
        let provider = self.options.engine_options.provider;
        (self.options.precisions.clone()).unwrap_or_else(|| Precisions::default_for(provider))
    }

    /// The thread counts to select among: the one the user fixed, or
    /// [`thread_counts`] of the CPUs this process may use, the largest first.
    fn thread_counts(&self) -> Vec<usize> {
        match self.options.engine_options.threads {
            Some(n) => vec![n],
            None => thread_counts(available_cpus()),
        }
    }

    /// Measures `subnets` in one job (round-robin when there are several);
    /// with a latency limit, a child that outlives the job's
    /// [deadline](Job::deadline) at that limit is stopped.
    fn measure(
        &self,
        subnets: &[&Subnet<'_>],
        batch: u32,
        measure: &MeasureOptions,
        setup: &Setup,
        limit_ms: Option<f32>,
    ) -> Result<Vec<Measurement>, Failure> {
        let job = Job {
            graphs: subnets.iter().map(|s| self.bundle.graph_path(s)).collect(),
            engine: setup.engine.kind,
            options: self.setup_options(batch, setup),
            measure: measure.clone(),
            input_shape: self.input_shape(batch),
        };
        let deadline = limit_ms.map(|ms| job.deadline(f64::from(ms)));
        trial::measure_within(&self.options.isolation, &job, deadline)
    }

    fn load(
        &self,
        graph: &Path,
        batch: u32,
        setup: &Setup,
    ) -> Result<Box<dyn Session>, EngineError> {
        engine::load(setup.engine.kind, graph, &self.setup_options(batch, setup))
    }

    /// The engine options of a candidate run with `setup`.
    fn setup_options(&self, batch: u32, setup: &Setup) -> EngineOptions {
        EngineOptions {
            threads: Some(setup.threads),
            ..self.engine_options(batch)
        }
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
}

const MB: f64 = 1024.0 * 1024.0;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
