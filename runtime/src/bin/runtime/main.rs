//! `runtime`: pick the best sub-network of a bundle that fits this device,
//! measure candidates, run inference, or show what the device is.

mod cache_export;
mod config;
mod logger;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use tailor_runtime::engine::{EngineOptions, ExecutionProvider};
use tailor_runtime::profile::{MeasureOptions, Measurement};
use tailor_runtime::select::{
    render_selection, Chosen, EngineChoice, Limits, Percentile, Precisions, Runtime,
    RuntimeOptions, SelectError, Verify,
};
use tailor_runtime::trial::{self, Isolation};
use tailor_runtime::{cache, outln, probe, stdout};

use config::Config;

/// Exit status when no sub-network fits the limits.
const EXIT_NOTHING_FITS: u8 = 3;
/// Exit status of a usage error (clap's own).
const EXIT_USAGE: u8 = 2;

/// A setting neither a flag nor the config file gave.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// Select and serve the best sub-network of a tailor bundle on this device.
///
/// At start-up the runtime measures a few candidates (not all of them, each
/// in a child process of its own), fits a latency model of this device,
/// confirms the winner with a longer measurement, and picks the best
/// sub-network that meets the latency limit at the chosen percentile and the
/// memory limit. The decision is cached (keyed by device, clocks, power
/// mode, engine and its version, bundle, the limits as written and the
/// measuring options), so the next boot skips the measurements.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:
  runtime select bundle/ --latency-ms 25 --memory-mb 900
  runtime select bundle/ --latency-ms 25 --percentile 99 --memory-fraction 0.3 --json
  runtime profile bundle/ --all --csv
  runtime run bundle/ --latency-ms 25 --input image.png
  runtime serve bundle/ --latency-ms 25 --listen unix:/run/tailor/sock
  runtime serve --config /etc/tailor/runtime.toml
  runtime probe --json

--config FILE reads the bundle, limits, engine, provider, threads,
listen address, cache and re-selection timer from a TOML file (docs/runtime.md, \"Config
file\"); flags given as well override it.

Decisions are cached in --cache FILE, else $TAILOR_CACHE_DIR, else
$CACHE_DIRECTORY (systemd's CacheDirectory=), else $XDG_CACHE_HOME/tailor,
else ~/.cache/tailor; never inside the bundle, which may be read-only.

Exit status: 0 success, 1 error, 2 usage error, 3 nothing fits the limits."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Choose the best sub-network within the limits, and say why.
    Select {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        limits: LimitArgs,
        /// Print one JSON object (a stable contract, see docs/runtime.md).
        #[arg(long)]
        json: bool,
    },
    /// Measure sub-networks: load time, first run, latency percentiles, memory.
    Profile {
        #[command(flatten)]
        common: Common,
        /// Sub-networks to measure (ids, comma separated).
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with = "all",
            required_unless_present = "all"
        )]
        subnets: Vec<String>,
        /// Measure every sub-network.
        #[arg(long)]
        all: bool,
        /// Images per run.
        #[arg(long, default_value_t = 1)]
        batch: u32,
        /// Print `{"results": [...]}`.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// Select, then run one inference on an image.
    Run {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        limits: LimitArgs,
        /// A PNG image (resized to the model's input and ImageNet-normalised).
        #[arg(long)]
        input: PathBuf,
        /// Print the choice and the outputs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Select, then serve inference over local HTTP until stopped.
    #[cfg(feature = "serve")]
    Serve {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// The decision cache: `cache export --to FILE` writes this board's
    /// decisions for the packs of identical boards.
    #[command(subcommand)]
    Cache(cache_export::CacheCommand),
    /// Show what the runtime sees of this device.
    Probe {
        /// Read the device's files under this root instead of `/`.
        #[arg(long, value_name = "DIR", default_value = "/")]
        sysroot: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// The bundle directory written by `exporter` (or `bundle` in --config).
    bundle: Option<PathBuf>,
    /// A TOML file of settings (`/etc/tailor/runtime.toml` in a pack);
    /// flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Inference engine: auto (ONNX Runtime when its library loads and it
    /// runs the first candidate faster, else tract), tract or ort
    /// [default: auto].
    #[arg(long)]
    engine: Option<EngineChoice>,
    /// ONNX Runtime execution provider (cpu, cuda, tensorrt, ...) [default: cpu].
    #[arg(long)]
    provider: Option<ExecutionProvider>,
    /// Engine threads [default: selected with the sub-network among 1,
    /// half and all the CPUs this process may use; `runtime profile` uses
    /// all of them].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Number formats to choose among, e.g. `fp32,int8` [default: every one
    /// the bundle has (`exporter quantize` adds int8 and fp16 variants);
    /// int8 only with `--provider qnn`].
    #[arg(long, value_name = "LIST")]
    precision: Option<Precisions>,
    /// libonnxruntime.so for `--engine ort` (default: $ORT_DYLIB_PATH).
    #[arg(long, value_name = "PATH")]
    ort_library: Option<PathBuf>,
    /// Read the device's files under this root instead of `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    sysroot: PathBuf,
    /// Decision cache file (default: see below).
    #[arg(long, value_name = "FILE")]
    cache: Option<PathBuf>,
    /// Which bundle files to hash before loading: `chosen` hashes the served
    /// sub-network's files in full at every start and skips the other
    /// candidates' files whose size, mtime and inode match an earlier
    /// verification; `changed` skips those for the served one too (faster
    /// boots, but bit-rot that keeps size and mtime goes unseen); `always`
    /// hashes every file a candidate reads.
    #[arg(long, value_enum, default_value = "chosen")]
    verify: VerifyArg,
    /// Let TensorRT build fp16 engines (`--provider tensorrt` only).
    #[arg(long)]
    fp16: bool,
    /// Measure candidates in this process instead of a child process each
    /// (for debugging: memory figures then include earlier candidates).
    #[arg(long)]
    in_process: bool,
    /// Ignore and do not write the cache: decide afresh.
    #[arg(long)]
    no_cache: bool,
    /// Decisions shipped in the pack (`runtime cache export` on a reference
    /// board): on a cache miss, one made under this board's key has its
    /// winner measured alone.
    #[arg(long, value_name = "FILE")]
    shipped: Option<PathBuf>,
    /// Minimum timed runs per candidate.
    #[arg(long, value_name = "N")]
    min_runs: Option<u32>,
    /// Minimum timed seconds per candidate.
    #[arg(long, value_name = "SECONDS")]
    min_time: Option<f64>,
}

#[derive(Debug, Args)]
struct LimitArgs {
    /// Latency limit in milliseconds, at --percentile, for one batch
    /// (required, here or as `latency_ms` in --config).
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    latency_ms: Option<f64>,
    /// Latency percentile the limit applies to: 50, 90 or 99 [default: 90].
    #[arg(long, value_parser = parse_percentile)]
    percentile: Option<Percentile>,
    /// Images per inference.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Memory limit in MB (peak resident memory while running).
    #[arg(long, value_name = "MB", conflicts_with = "memory_fraction")]
    memory_mb: Option<f64>,
    /// Memory limit as a fraction of the memory available now (default 0.5).
    #[arg(long, value_name = "F")]
    memory_fraction: Option<f64>,
    /// Lowest acceptable quality score (needs a calibrated bundle).
    #[arg(long, value_name = "Q")]
    min_quality: Option<f32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VerifyArg {
    Chosen,
    Changed,
    Always,
}

#[cfg(feature = "serve")]
#[derive(Debug, Args)]
struct ServeArgs {
    /// `host:port` or `unix:PATH` [default: 127.0.0.1:8470].
    #[arg(long, value_name = "ADDR")]
    listen: Option<tailor_runtime::serve::Listen>,
    /// Largest request body accepted, in MiB (413 beyond) [default: 32, or
    /// `max_body_mb` in --config's `[serve]`].
    #[arg(long, value_name = "MB")]
    max_body_mb: Option<u64>,
    /// Seconds between reads of the power mode (Jetson's nvpmodel status).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    power_poll: f64,
}

fn parse_percentile(s: &str) -> Result<Percentile, String> {
    let p: u8 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a percentile"))?;
    Percentile::try_from(p)
}

impl LimitArgs {
    /// The limits the flags set, the rest from `config`.
    fn limits(&self, config: &Config) -> Result<Limits> {
        let latency_ms = self.latency_ms.or(config.latency_ms).ok_or_else(|| {
            Usage("no latency limit: pass --latency-ms MS or set latency_ms in --config".into())
        })?;
        let mut l = Limits::latency_ms(latency_ms)
            .percentile(
                self.percentile
                    .or(config.percentile)
                    .unwrap_or(Percentile::P90),
            )
            .batch(self.batch);
        // A memory flag replaces the file's limit, whichever form either has.
        let (mb, fraction) = if self.memory_mb.is_some() || self.memory_fraction.is_some() {
            (self.memory_mb, self.memory_fraction)
        } else {
            (config.memory_mb, config.memory_fraction)
        };
        if let Some(mb) = mb {
            l = l.memory_mb(mb);
        }
        if let Some(f) = fraction {
            l = l.memory_fraction(f);
        }
        if let Some(q) = self.min_quality {
            l = l.min_quality(q);
        }
        Ok(l)
    }
}

impl Common {
    /// The config file's settings; none without --config.
    fn config(&self) -> Result<Config> {
        self.config
            .as_deref()
            .map(Config::read)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn open(&self, config: &Config) -> Result<Runtime> {
        let bundle = self
            .bundle
            .clone()
            .or_else(|| config.bundle.clone())
            .ok_or_else(|| Usage("no bundle: name one, or set bundle in --config".into()))?;
        let mut measure = MeasureOptions::default();
        if let Some(n) = self.min_runs {
            measure.min_runs = n;
        }
        if let Some(s) = self.min_time {
            measure.min_time = std::time::Duration::try_from_secs_f64(s).map_err(|_| {
                Usage(format!(
                    "--min-time {s:?}: not a number of seconds a measurement can take"
                ))
            })?;
        }
        let cache = match (self.cache.as_ref().or(config.cache.as_ref()), self.no_cache) {
            (_, true) => None,
            (Some(path), false) => Some(path.clone()),
            (None, false) => cache::default_path(),
        };
        let isolation = if self.in_process {
            Isolation::InProcess
        } else {
            Isolation::current_exe().context("finding this executable to measure in children")?
        };
        let options = RuntimeOptions {
            engine: self.engine.or(config.engine).unwrap_or_default(),
            engine_options: EngineOptions {
                // Unset: selected among 1, half and all the usable CPUs.
                threads: self.threads.or(config.threads),
                batch: 1,
                provider: self.provider.or(config.provider).unwrap_or_default(),
                ort_library: self
                    .ort_library
                    .clone()
                    .or_else(|| config.ort_library.clone()),
                // TensorRT's engine and timing caches live beside the decisions.
                cache_dir: cache
                    .as_ref()
                    .and_then(|c| c.parent())
                    .map(|dir| dir.join("tensorrt")),
                fp16: self.fp16,
            },
            measure,
            sysroot: self.sysroot.clone(),
            cache,
            shipped: self.shipped.clone().or_else(|| config.shipped.clone()),
            isolation,
            precisions: self.precision.clone().or_else(|| config.precision.clone()),
            verify: match self.verify {
                VerifyArg::Chosen => Verify::Chosen,
                VerifyArg::Changed => Verify::Changed,
                VerifyArg::Always => Verify::Always,
            },
        };
        Runtime::with_options(&bundle, options)
            .with_context(|| format!("opening bundle {}", bundle.display()))
    }
}

fn main() -> ExitCode {
    logger::install();
    if let Some(code) = trial::child_main() {
        return code;
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if stdout::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let nothing_fits = e
                .chain()
                .any(|c| matches!(c.downcast_ref(), Some(SelectError::NothingFits(_))));
            ExitCode::from(if nothing_fits {
                EXIT_NOTHING_FITS
            } else if e.is::<Usage>() {
                EXIT_USAGE
            } else {
                1
            })
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Select {
            common,
            limits,
            json,
        } => {
            let config = common.config()?;
            let rt = common.open(&config)?;
            let chosen = rt.select(&limits.limits(&config)?)?;
            warn(&chosen);
            if json {
                outln!("{:#}", selection_json(&chosen))?;
            } else {
                outln!(@no_newline "{}", render_selection(&rt.bundle().manifest(), &chosen))?;
            }
            Ok(())
        }
        Command::Profile {
            common,
            subnets,
            all,
            batch,
            json,
            csv,
        } => {
            let rt = common.open(&common.config()?)?;
            let ids: Vec<String> = if all {
                rt.bundle()
                    .manifest()
                    .subnets
                    .iter()
                    .map(|s| s.id.to_owned())
                    .collect()
            } else {
                subnets
            };
            let mut results = Vec::new();
            if !json && !csv {
                outln!(
                    "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
                    "id",
                    "load_ms",
                    "first_ms",
                    "p50_ms",
                    "p90_ms",
                    "p99_ms",
                    "mean_ms",
                    "rss_mb",
                    "peak_mb"
                )?;
            } else if csv {
                outln!("id,load_ms,first_ms,p50_ms,p90_ms,p99_ms,mean_ms,stdev_ms,rss_mb,peak_mb,noisy,engine_build_ms")?;
            }
            for id in &ids {
                let m = rt.profile(id, batch)?;
                if csv {
                    outln!(
                        "{id},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.1},{:.1},{},{}",
                        m.load_ms,
                        m.first_ms,
                        m.p50_ms,
                        m.p90_ms,
                        m.p99_ms,
                        m.mean_ms,
                        m.stdev_ms,
                        m.rss_mb,
                        m.peak_mb,
                        m.noisy,
                        m.engine_build_ms
                            .map_or(String::new(), |ms| format!("{ms:.1}"))
                    )?;
                } else if !json {
                    outln!(
                        "{id:<12} {:>9.2} {:>9.2} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8.1} {:>8.1}{}{}",
                        m.load_ms, m.first_ms, m.p50_ms, m.p90_ms, m.p99_ms, m.mean_ms, m.rss_mb, m.peak_mb,
                        if m.noisy { "  (noisy)" } else { "" },
                        m.engine_build_ms.map_or(String::new(), |ms| format!("  (engine built in {ms:.0} ms)"))
                    )?;
                }
                results.push(profile_json(id, &m));
            }
            if json {
                outln!("{:#}", json!({ "results": results }))?;
            }
            Ok(())
        }
        Command::Run {
            common,
            limits,
            input,
            json,
        } => {
            let config = common.config()?;
            let rt = common.open(&config)?;
            let limits = limits.limits(&config)?;
            let mut chosen = rt.select(&limits)?;
            warn(&chosen);
            let [_, _, side, _] = rt.input_shape(1);
            let image = tailor_runtime::image::load_png(&input, side)?;
            let batch =
                ndarray::concatenate(ndarray::Axis(0), &vec![image.view(); limits.batch as usize])?;
            let out = chosen.session().run(batch.view())?;
            let cls = out.cls_token.row(0);
            let norm = cls.iter().map(|v| v * v).sum::<f32>().sqrt();
            if json {
                let mut obj = selection_json(&chosen);
                obj["output"] = json!({
                    "cls_token": cls.to_vec(),
                    "patch_tokens_shape": out.patch_tokens.shape(),
                });
                if let Some(logits) = &out.logits {
                    obj["output"]["logits"] = json!(logits.row(0).to_vec());
                    obj["output"]["class"] = json!(out.top_class(0));
                }
                outln!("{obj:#}")?;
            } else {
                outln!(@no_newline "{}", render_selection(&rt.bundle().manifest(), &chosen))?;
                outln!(
                    "ran {} on {}: cls_token [{}] (L2 norm {norm:.4}), patch_tokens {:?}",
                    chosen.id,
                    input.display(),
                    cls.iter()
                        .take(4)
                        .map(|v| format!("{v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + ", ...",
                    out.patch_tokens.shape()
                )?;
                if let Some(class) = out.top_class(0) {
                    outln!("task head: class {class}")?;
                }
            }
            Ok(())
        }
        #[cfg(feature = "serve")]
        Command::Serve {
            common,
            limits,
            serve,
        } => {
            use tailor_runtime::serve::{self as server, Selection, ServeOptions};
            let config = common.config()?;
            limits.limits(&config)?;
            let mut server_limits = config.serve.clone();
            server_limits.max_body_mb = serve.max_body_mb.unwrap_or(server_limits.max_body_mb);
            let options = ServeOptions {
                limits: server_limits,
                socket_group: config.socket_group.clone(),
                power_mode_file: Some(common.sysroot.join(probe::NVPMODEL_STATUS)),
                power_poll: std::time::Duration::try_from_secs_f64(serve.power_poll)
                    .context("--power-poll must be a non-negative number of seconds")?,
                reselect_after_boot: config.reselect_after_boot,
            };
            let listen = serve
                .listen
                .or(config.listen)
                .unwrap_or(server::Listen::Tcp {
                    host: "127.0.0.1".into(),
                    port: 8470,
                });
            // Each selection reads the config file again (an edit followed
            // by SIGHUP applies it) and re-probes the device (a new power
            // mode keys the cache).
            server::serve(&listen, options, move |reuse| {
                let config = common.config()?;
                let rt = common.open(&config)?;
                let chosen = rt.select_with(&limits.limits(&config)?, reuse)?;
                // The journal's account of each selection: what was
                // measured, or that the decision came from the cache.
                eprint!("{}", render_selection(&rt.bundle().manifest(), &chosen));
                warn(&chosen);
                Ok(Selection {
                    report: selection_json(&chosen),
                    chosen,
                })
            })
        }
        Command::Cache(command) => cache_export::run(command),
        Command::Probe { sysroot, json } => {
            let info = probe::probe(&sysroot);
            if json {
                outln!("{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                outln!("{info}")?;
                outln!("fingerprint: {}", info.fingerprint())?;
            }
            Ok(())
        }
    }
}

/// What the user should know about a selection, on stderr.
fn warn(chosen: &Chosen) {
    for note in &chosen.notes {
        eprintln!("warning: {note}");
    }
}

fn measured_json(m: &Measurement) -> serde_json::Value {
    json!({
        "p50_ms": m.p50_ms, "p90_ms": m.p90_ms, "p99_ms": m.p99_ms, "mean_ms": m.mean_ms,
        "stdev_ms": m.stdev_ms, "cv": m.cv, "noisy": m.noisy, "runs": m.runs,
        "rss_mb": m.rss_mb, "peak_mb": m.peak_mb,
    })
}

fn profile_json(id: &str, m: &Measurement) -> serde_json::Value {
    let mut v = measured_json(m);
    v["id"] = json!(id);
    v["load_ms"] = json!(m.load_ms);
    v["engine_build_ms"] = json!(m.engine_build_ms);
    v["first_ms"] = json!(m.first_ms);
    v["runs"] = json!(m.runs);
    v
}

/// The `runtime select --json` contract (docs/runtime.md).
fn selection_json(c: &Chosen) -> serde_json::Value {
    json!({
        "subnet": { "id": c.id, "width": c.width, "depth": c.depth, "precision": c.precision },
        "measured": measured_json(&c.measured),
        "limits": {
            "latency_ms": c.limits.latency_ms, "percentile": c.percentile.value(), "batch": c.limits.batch,
            "memory_mb": c.limits.memory_bytes as f64 / (1024.0 * 1024.0), "min_quality": c.limits.min_quality,
        },
        "engine": c.engine,
        "threads": c.threads,
        "engine_trials": c.engine_trials.iter().map(|t| json!({
            "engine": t.engine, "id": t.id, "note": t.note,
            "measured": t.measured.as_ref().map(measured_json),
        })).collect::<Vec<_>>(),
        "candidates_measured": c.candidates_measured(),
        "selection_ms": c.selection_ms,
        "cache": c.cache,
        "confirmed": c.confirmed,
        "noisy": c.noisy,
        "load": c.load,
        "notes": c.notes,
        "trials": c.trials.iter().map(|t| json!({
            "id": t.id, "engine": t.engine.to_string(), "threads": t.threads, "stage": t.stage, "predicted_ms": t.predicted_ms, "jobs": t.jobs, "fits": t.fits, "note": t.note,
            "measured": t.measured.as_ref().map(|m| {
                let mut v = measured_json(m);
                v["upper_ms"] = json!(m.upper_ms(c.percentile));
                v
            }),
        })).collect::<Vec<_>>(),
    })
}
