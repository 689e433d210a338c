//! `exporter pack`: one archive for a board, its runtime, the bundle cut to
//! the board's memory, the service's config and an installer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use tailor_exporter::pack::{self, Fate, PackOptions};
use tailor_runtime::outln;
use tailor_targets::board::find as find_board;
use tailor_targets::{Board, BOARDS};

use crate::output::human_bytes;

/// Pack a bundle for a board: one archive holding the runtime built for
/// it, the bundle filtered to what fits the board's memory, the
/// service's config and systemd unit, a README and an installer.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  targets/cross/build.sh --features ort
  exporter pack bundle/ --target jetson-orin-nano --latency-ms 25 -o tailor-orin.tar.gz
  exporter pack bundle/ --target rpi5 --latency-ms 100 --memory-mb 1500 --deb -o tailor-rpi5.tar.gz
  exporter pack bundle/ --target rk3588 --latency-ms 50 --keep w384-d12 -o rk.tar.gz --json

On the board: tar xzf tailor-orin.tar.gz && sudo tailor-jetson-orin-nano/install.sh
(docs/deploy.md walks through it).

A sub-network is dropped when its predicted footprint (the runtime's:
(weights + activations) x 5/4) exceeds the budget: --memory-mb, else the
board's share of its smallest variant's RAM. The service's memory limit is
--memory-mb, else that share of the memory available at start-up.")]
pub struct PackArgs {
    /// The bundle directory.
    bundle: PathBuf,
    /// The board to pack for (targets/src/board.rs says what each is).
    #[arg(long, value_name = "BOARD", value_parser = board_parser())]
    target: &'static Board,
    /// The pack to write: a .tar.gz.
    #[arg(short, long, value_name = "PACK.tar.gz")]
    output: PathBuf,
    /// Also write a .deb beside the pack (PACK.deb).
    #[arg(long)]
    deb: bool,
    /// The runtime executable built for the board [default:
    /// $CARGO_TARGET_DIR, else target, then TRIPLE/device/runtime].
    #[arg(long, value_name = "PATH")]
    runtime_bin: Option<PathBuf>,
    /// Pack these sub-networks even when over the memory budget (ids, comma separated).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    keep: Vec<String>,
    /// The service's latency limit in milliseconds, at p90: the
    /// application's choice, so there is no default.
    #[arg(long, value_name = "MS")]
    latency_ms: f64,
    /// A fixed memory limit in MiB, for filtering and for the service
    /// [default: the board's share of its RAM].
    #[arg(long, value_name = "MB")]
    memory_mb: Option<f64>,
    /// Ship a reference board's decisions (`runtime cache export --to
    /// FILE` there): boards whose key matches measure only their winner on
    /// the first boot.
    #[arg(long, value_name = "FILE")]
    decisions: Option<PathBuf>,
    /// Ship that board's TensorRT engine and timing caches too (the
    /// `tensorrt` directory beside its decision cache).
    #[arg(long, value_name = "DIR", requires = "decisions")]
    trt_cache: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long)]
    force: bool,
    /// Print what was packed as JSON.
    #[arg(long)]
    json: bool,
}

/// The `--target` names as clap's possible values (listed in --help and in
/// the error for an unknown one), mapped to their boards.
fn board_parser() -> impl TypedValueParser<Value = &'static Board> {
    PossibleValuesParser::new(BOARDS.iter().map(|b| b.name))
        .try_map(|name| find_board(&name).ok_or(format!("no board `{name}`")))
}

pub fn run(args: PackArgs) -> Result<()> {
    let board = args.target;
    let runtime = args.runtime_bin.unwrap_or_else(|| {
        let target_dir = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
        pack::built_runtime(Path::new(&target_dir), board)
    });
    let options = PackOptions {
        board,
        runtime: &runtime,
        keep: &args.keep,
        latency_ms: args.latency_ms,
        memory_mb: args.memory_mb,
        decisions: args.decisions.as_deref(),
        trt_cache: args.trt_cache.as_deref(),
        deb: args.deb,
        force: args.force,
    };
    let packed = pack::pack(&args.bundle, &args.output, &options)
        .with_context(|| format!("packing {} for {}", args.bundle.display(), board.name))?;
    if args.json {
        outln!(
            "{:#}",
            serde_json::json!({
                "archive": packed.archive, "deb": packed.deb, "target": board.name,
                "runtime": runtime, "budget_bytes": packed.budget_bytes,
                "subnets": packed.verdicts, "bundle_files": packed.bundle_files,
                "installed_bytes": packed.installed_bytes, "shipped": packed.shipped,
            })
        )?;
        return Ok(());
    }
    let budget = match args.memory_mb {
        Some(_) => "--memory-mb".to_owned(),
        None => format!("{}% of {} MiB", board.model_percent, board.ram_mb),
    };
    eprintln!(
        "{}: budget {} ({budget})",
        board.name,
        human_bytes(packed.budget_bytes)
    );
    for v in &packed.verdicts {
        let why = match v.fate {
            Fate::Kept => continue,
            Fate::KeptOnRequest => "kept (--keep)",
            Fate::Dropped => "dropped",
            Fate::OtherEncoding => {
                eprintln!(
                    "  dropped {}: int8 activations other than the board's {}",
                    v.id,
                    board.int8_activations.name()
                );
                continue;
            }
            Fate::ParentDropped => {
                eprintln!("  dropped {}: its fp32 parent is not packed", v.id);
                continue;
            }
        };
        eprintln!(
            "  {why} {}: predicted to need {}",
            v.id,
            human_bytes(v.footprint_bytes)
        );
    }
    if let Some(shipped) = &packed.shipped {
        eprintln!(
            "  shipping {} decisions ({} made with another bundle left out) and {} TensorRT cache files",
            shipped.decisions, shipped.dropped, shipped.trt_files
        );
    }
    let packed_subnets = packed.verdicts.iter().filter(|v| v.fate.packed()).count();
    for path in std::iter::once(&packed.archive).chain(&packed.deb) {
        eprintln!(
            "wrote {}: {packed_subnets} of {} sub-networks, {} installed",
            path.display(),
            packed.verdicts.len(),
            human_bytes(packed.installed_bytes)
        );
    }
    Ok(())
}
