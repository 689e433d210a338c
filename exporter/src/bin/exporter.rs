//! `exporter`: slice a POA teacher checkpoint into a bundle of per-budget
//! ONNX graphs, or show what a bundle holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tailor_calibration::head::{transfer_heads, HeadOptions, HeadSource, Heads, Ridge, Route};
use tailor_calibration::plot::measured::{read_latencies, read_selection};
use tailor_calibration::plot::{pareto_front, pareto_svg, pareto_table, Chart, Cost, Point};
use tailor_calibration::ranges::Scope;
use tailor_calibration::{record, Dataset, LoadOptions, Options, Progress};
use tailor_exporter::bundle::{self, WriteOptions};
use tailor_exporter::config::{GridRange, Overrides};
use tailor_exporter::family::SubnetSpec;
use tailor_exporter::onnx::head::graphs_with_heads;
use tailor_exporter::pack::{self, Fate, PackOptions};
use tailor_exporter::plan::{Plan, Request, Selection};
use tailor_runtime::bundle::Bundle;
use tailor_runtime::engine::{EngineKind, EngineOptions};
use tailor_runtime::{outln, stdout};
use tailor_targets::board::find as find_board;
use tailor_targets::{Board, BOARDS};

/// Slice a POA elastic teacher into standalone per-budget ONNX graphs.
///
/// Reads the checkpoint as POA training wrote it (`teacher_checkpoint.pth`,
/// or a plain state dict, .pth or .safetensors; fp32/fp16/bf16), finds its
/// `config.yaml` from POA's output layout, and writes a bundle: one ONNX
/// graph per sub-network, each width's weights stored once and shared by
/// all its depths, and a manifest with every sub-network's size,
/// cost and hashes.
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:
  exporter --all-subnets work_dirs/vit/eval/training_276799/teacher_checkpoint.pth -o bundle/
  exporter --subnets 384x12,768x12,1024x24 teacher.safetensors --config config.yaml -o bundle/
  exporter --all-subnets teacher.pth --max-params 30M --max-macs 6G -o bundle/
  exporter --all-subnets teacher.pth --dry-run
  exporter inspect bundle/
  exporter calibrate bundle/ --data images/
  exporter pack bundle/ --target jetson-orin-nano --latency-ms 25 -o tailor-orin.tar.gz"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    export: ExportArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what a bundle holds (and optionally verify every file's sha256).
    Inspect {
        /// The bundle directory.
        bundle: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
        /// Check every graph and weight file against the manifest's sha256.
        #[arg(long)]
        verify: bool,
    },
    /// Pack a bundle for a board: one archive holding the runtime built for
    /// it, the bundle filtered to what fits the board's memory, the
    /// service's config and systemd unit, a README and an installer.
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
    Pack(PackArgs),
    /// Score every sub-network on your data and write the scores into the
    /// bundle's manifest, so the runtime picks the best one that fits
    /// rather than the largest.
    #[command(after_help = "Examples:
  exporter calibrate bundle/ --data images/            # images/CLASS/*.png|jpg: k-NN accuracy on a seeded 80/20 split
  exporter calibrate bundle/ --data split/             # split/train/CLASS/*, split/val/CLASS/*: your split
  exporter calibrate bundle/ --data mnist-calib.npz    # images uint8 [N,H,W] or [N,H,W,3], labels int [N]
  exporter calibrate bundle/ --data photos/ --no-labels   # label-free: CKA fidelity to the largest
  exporter calibrate bundle/ --data mnist-calib.npz --plot pareto.svg   # and draw quality against MACs
  runtime profile bundle/ --all --json > profile.json
  runtime select bundle/ --latency-ms 25 --json > chosen.json
  exporter calibrate bundle/ --data mnist-calib.npz --plot pareto.svg --latency profile.json --selection chosen.json
  runtime select bundle/ --latency-ms 25 --min-quality 90

With labels, quality is the weighted k-NN top-1 accuracy in percent of
each sub-network's cls_token (DINO's protocol: k=20, T=0.07; the train
images are the memory, the val images are classified). Without labels (a
folder of images without class folders, an .npz without `labels`, or
--no-labels), quality is the linear CKA of cls_token with the largest
sub-network's, in [0, 1]. Both are in the manifest (`quality`, `fidelity`),
with the metric's name and the dataset's sha256; activation ranges (of the
graph's input and outputs, or with --ranges inner of every MatMul, Gemm
and Conv activation too) go to calibration/ranges-*.json.
docs/calibration.md has the details.")]
    Calibrate(CalibrateArgs),
    /// Route a task to an SDR bundle: score every path by k-NN on your
    /// labelled data (the paths' shared prefixes computed once), write the
    /// scores into the manifest with the task's name, and print the
    /// ranking, so the runtime picks the best-routed path that fits.
    #[command(after_help = "Examples:
  exporter route bundle/ --data images/                  # images/CLASS/*.png|jpg, seeded 80/20 split
  exporter route bundle/ --data mnist-calib.npz --task digits --plot routes.svg
  exporter route bundle/ --data images/ --json > ranking.json  # best first, with each path's route
  runtime select bundle/ --latency-ms 5 --memory-mb 512

Quality is the weighted k-NN top-1 accuracy in percent of each path's
cls_token (DINO's protocol: k=20, T=0.07), exactly as `exporter calibrate`
scores it, but every path's graph is cut at its blocks and a block that
several paths share with the same choices before it runs once per batch
(--threads workers share the batches, each on one thread, with tract or
--engine ort). docs/sdr.md has the details.")]
    Route(RouteArgs),
}

#[derive(Debug, Args)]
struct RouteArgs {
    /// The SDR bundle directory (its manifest is rewritten in place).
    bundle: PathBuf,
    /// An image folder (CLASS/ sub-folders, optionally under train/ and
    /// val/) or an .npz with `images` and `labels`.
    #[arg(long, value_name = "DATA")]
    data: PathBuf,
    /// The task's name in the manifest [default: DATA's file name].
    #[arg(long)]
    task: Option<String>,
    /// Seed of the 80/20 split when DATA has no train/ and val/.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Route on the first N images only (array order, or sorted paths).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Images per run of each block.
    #[arg(long, default_value = "32", value_name = "N")]
    batch: std::num::NonZeroUsize,
    /// Workers, each running whole batches on one thread, with either
    /// engine (ONNX Runtime gets one intra-op thread per worker) [default:
    /// one per core].
    #[arg(long, value_name = "N")]
    threads: Option<std::num::NonZeroUsize>,
    /// The engine that runs the blocks: tract, or ort (ONNX Runtime: needs a
    /// build with the `ort` feature and ORT_DYLIB_PATH naming
    /// libonnxruntime.so).
    #[arg(long, default_value = "tract", value_name = "ENGINE")]
    engine: EngineKind,
    /// ONNX Runtime's execution provider (--engine ort) [default: cpu]; a
    /// provider that would leave a block to the CPU is an error.
    #[arg(long, value_name = "PROVIDER")]
    provider: Option<tailor_runtime::engine::ExecutionProvider>,
    /// Also draw the histogram of path accuracies to FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Also write every path's cls_token, the labels and the split to
    /// FILE.npz (to check the scores with tools/knn_reference.py).
    #[arg(long, value_name = "FILE.npz")]
    dump_features: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// Print the ranking as JSON (each path's route, k-NN top-1 and
    /// fidelity, best first) instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CalibrateArgs {
    /// The bundle directory (its manifest is rewritten in place).
    bundle: PathBuf,
    /// An image folder (CLASS/ sub-folders, optionally under train/ and
    /// val/) or an .npz with `images` and `labels`.
    #[arg(long, value_name = "DATA")]
    data: PathBuf,
    /// Ignore labels: rank by fidelity to the largest sub-network.
    #[arg(long)]
    no_labels: bool,
    /// Seed of the 80/20 split when DATA has no train/ and val/.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Score only the first N images (array order, or sorted paths).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Images per inference run.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch: usize,
    /// The engine that computes the features: tract, or ort (needs a build
    /// with the `ort` feature and ORT_DYLIB_PATH).
    #[arg(long, default_value = "tract", value_name = "ENGINE")]
    engine: EngineKind,
    /// Intra-op threads [default: the engine's].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Also write every sub-network's cls_token, the labels and the split
    /// to FILE.npz (to check the metrics with tools/knn_reference.py).
    #[arg(long, value_name = "FILE.npz")]
    dump_features: Option<PathBuf>,
    /// Also draw quality against MACs to FILE.svg, the Pareto front
    /// highlighted (sub-networks no other beats on both).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Give every sub-network this task head, trained on the teacher's
    /// features: a linear layer in an .npz or .safetensors (`weight`
    /// [classes, D] and `bias`, or `W` and `b`). Each graph gets a third
    /// output, `logits`, through a map from its cls_token to the teacher's
    /// features fitted in closed form on the train images; the head is
    /// scored on the held-out images.
    #[arg(long, value_name = "HEAD", conflicts_with = "fit_head")]
    head: Option<PathBuf>,
    /// As --head, with the teacher's head fitted first by ridge regression
    /// on the labelled train images.
    #[arg(long)]
    fit_head: bool,
    /// How --head's map is fitted: plain (ridge least squares onto the
    /// teacher's features) or ln-kdep (onto LayerNorm-whitened features cut
    /// to the top principal directions; docs/calibration.md compares them).
    #[arg(long, default_value = "plain", value_name = "ROUTE")]
    transfer: Route,
    /// Plot against measured latency instead of MACs: the p50 of each
    /// sub-network in FILE, the output of `runtime profile BUNDLE --all
    /// --json` (sub-networks it did not measure are left out).
    #[arg(long, value_name = "PROFILE.json", requires = "plot")]
    latency: Option<PathBuf>,
    /// Mark this sub-network on the plot as the chosen one.
    #[arg(
        long,
        value_name = "ID",
        requires = "plot",
        conflicts_with = "selection"
    )]
    chosen: Option<String>,
    /// Mark the sub-network the runtime chose: FILE holds the output of
    /// `runtime select BUNDLE ... --json`.
    #[arg(long, value_name = "FILE.json", requires = "plot")]
    selection: Option<PathBuf>,
    /// Which activation ranges to record for a later INT8 export: the
    /// graph's input and outputs, or also every MatMul, Gemm and Conv
    /// activation inside (tract only).
    #[arg(long, default_value = "interface", value_name = "SCOPE", value_parser = scope_parser())]
    ranges: Scope,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// Print the scores as JSON.
    #[arg(long)]
    json: bool,
}

/// `--ranges interface|inner`.
fn scope_parser() -> impl TypedValueParser<Value = Scope> {
    PossibleValuesParser::new(["interface", "inner"]).map(|s| match s.as_str() {
        "inner" => Scope::Inner,
        _ => Scope::Interface,
    })
}

#[derive(Debug, Args)]
struct PackArgs {
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

#[derive(Debug, Args)]
struct ExportArgs {
    /// Teacher checkpoint (.pth zip archive or .safetensors).
    #[arg(required = true)]
    teacher: Option<PathBuf>,
    /// Bundle directory to create.
    #[arg(
        short,
        long,
        value_name = "BUNDLE",
        required_unless_present = "dry_run"
    )]
    output: Option<PathBuf>,
    /// Export every sub-network of the grid.
    #[arg(long, conflicts_with = "subnets", required_unless_present = "subnets")]
    all_subnets: bool,
    /// Export these sub-networks only, comma separated: WIDTHxDEPTH (ViT,
    /// e.g. 384x12) or WIDTHxD1.D2.D3.D4 (Swin, ResNet); ids work too.
    #[arg(long, value_delimiter = ',', value_name = "WxD,...")]
    subnets: Vec<SubnetSpec>,
    /// POA training config.yaml (default: found from POA's output layout).
    #[arg(long, value_name = "YAML")]
    config: Option<PathBuf>,
    /// Widths to export as START:END[:STEP] (step defaults to head_dim).
    #[arg(long, value_name = "RANGE")]
    widths: Option<GridRange>,
    /// Depths to export as START:END[:STEP].
    #[arg(long, value_name = "RANGE")]
    depths: Option<GridRange>,
    /// Channels per attention head (default: the config's head_dim).
    #[arg(long, value_name = "N")]
    head_dim: Option<u32>,
    /// Input image side in pixels (default: crops.global_crops_size).
    #[arg(long, value_name = "PIXELS")]
    image_size: Option<u32>,
    /// Keep only sub-networks with at most this many parameters (e.g. 30M).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    max_params: Option<u64>,
    /// Keep only sub-networks with at most this many MACs per image (e.g. 6G).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    max_macs: Option<u64>,
    /// Print the grid that would be exported; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace BUNDLE if it exists.
    #[arg(long)]
    force: bool,
    /// Widths written in parallel (default: the number of cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// Print the result (the plan with --dry-run) as JSON.
    #[arg(long)]
    json: bool,
}

/// Parses counts like `30M`, `6G`, `1.5G`, `250k` or plain integers.
fn parse_count(s: &str) -> Result<u64, String> {
    let (digits, scale) = match s.trim().chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        Some('t' | 'T') => (&s[..s.len() - 1], 1e12),
        _ => (s, 1.0),
    };
    match digits.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok((v * scale).round() as u64),
        _ => Err(format!(
            "`{s}` is not a count: expected e.g. 30M, 6G or 1500000"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Inspect {
            bundle,
            json,
            verify,
        }) => inspect(&bundle, json, verify),
        Some(Command::Pack(args)) => pack(args),
        Some(Command::Calibrate(args)) => calibrate(args),
        Some(Command::Route(args)) => route(args),
        None => export(cli.export),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `exporter inspect B | head`: the reader has what it wanted.
        Err(e) if stdout::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn export(args: ExportArgs) -> Result<()> {
    let teacher = args.teacher.expect("clap requires TEACHER");
    let request = Request {
        teacher,
        config: args.config,
        overrides: Overrides {
            widths: args.widths,
            depths: args.depths,
            head_dim: args.head_dim,
            image_size: args.image_size,
        },
        selection: if args.all_subnets {
            Selection::All
        } else {
            Selection::List(args.subnets)
        },
        max_params: args.max_params,
        max_macs: args.max_macs,
    };
    let plan = Plan::new(&request)?;
    report_plan(&plan);
    if args.dry_run {
        print_grid(&plan, args.json)?;
        return Ok(());
    }
    let out = args
        .output
        .expect("clap requires --output without --dry-run");
    if out.exists() && !args.force {
        bail!(
            "{} already exists (pass --force to replace it)",
            out.display()
        );
    }
    let total = bundle::planned_bytes(&plan);
    let progress = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} writing {bytes}/{total_bytes} [{bar:30}] {binary_bytes_per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = WriteOptions {
        force: args.force,
        jobs,
    };
    let summary =
        bundle::write(&plan, &out, &options, &|bytes| progress.inc(bytes)).with_context(|| {
            format!(
                "exporting {} to {}",
                plan.teacher().display(),
                out.display()
            )
        })?;
    progress.finish_and_clear();
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "bundle": out, "subnets": summary.subnets, "files": summary.files, "bytes": summary.bytes,
            })
        )?;
    } else {
        eprintln!(
            "wrote {} sub-networks to {} ({} files, {})",
            summary.subnets,
            out.display(),
            summary.files,
            human_bytes(summary.bytes)
        );
    }
    Ok(())
}

/// Tells where the geometry came from, what was assumed, and warnings.
fn report_plan(plan: &Plan) {
    eprintln!(
        "teacher {}: {}{}",
        plan.teacher().display(),
        plan.family.summary(),
        plan.config
            .as_ref()
            .map(|c| format!(" (config {})", c.display()))
            .unwrap_or_default()
    );
    for a in &plan.assumptions {
        eprintln!("assumed: {a}");
    }
    for t in &plan.non_finite {
        eprintln!("warning: tensor {t} holds NaN or Inf");
    }
}

/// The dry run's grid: a table, or JSON for scripts.
fn print_grid(plan: &Plan, json: bool) -> Result<()> {
    let rows: Vec<_> = plan
        .subnets
        .iter()
        .map(|s| {
            let layout = plan.family.layout(&s.spec);
            serde_json::json!({
                "id": s.spec.id(), "width": s.spec.width, "depth": s.spec.depths.total(),
                "depths": layout.depths, "mid_widths": layout.mid_widths,
                "block_idx": layout.block_idx,
                "params": s.costs.params, "macs": s.costs.macs,
                "weight_bytes": 4 * s.costs.params, "activation_bytes": s.costs.activation_bytes,
            })
        })
        .collect();
    if json {
        let plan_json = serde_json::json!({
            "teacher": plan.teacher(), "config": plan.config, "assumptions": plan.assumptions,
            "non_finite": plan.non_finite, "family": plan.family.name(),
            "geometry": plan.family.config(),
            "bundle_bytes": bundle::planned_bytes(plan), "subnets": rows,
        });
        outln!("{plan_json:#}")?;
        return Ok(());
    }
    outln!(
        "{}",
        table_row(
            ["id", "width", "depth", "params", "MACs", "weights", "act(b=1)"].map(String::from)
        )
    )?;
    for s in &plan.subnets {
        let (c, spec) = (s.costs, s.spec);
        outln!(
            "{}",
            subnet_row(
                &spec.id(),
                spec.width,
                spec.depths.total(),
                c.params,
                c.macs,
                4 * c.params,
                c.activation_bytes
            )
        )?;
    }
    outln!(
        "{} sub-networks; the bundle would hold {} of weights (each width stored once)",
        plan.subnets.len(),
        human_bytes(bundle::planned_bytes(plan))
    )?;
    Ok(())
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn pack(args: PackArgs) -> Result<()> {
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
                "installed_bytes": packed.installed_bytes,
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
        };
        eprintln!(
            "  {why} {}: predicted to need {}",
            v.id,
            human_bytes(v.footprint_bytes)
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

fn calibrate(args: CalibrateArgs) -> Result<()> {
    let bundle = Bundle::open(&args.bundle)?;
    // Read before any image runs: a bad report fails at once.
    let plot = args
        .plot
        .as_ref()
        .map(|path| PlotSpec::read(path, &args, &bundle))
        .transpose()?;
    let load = LoadOptions {
        labels: !args.no_labels,
        seed: args.seed,
        limit: args.limit,
    };
    let dataset = Dataset::load(&args.data, load)
        .with_context(|| format!("reading the dataset {}", args.data.display()))?;
    let head = match (&args.head, args.fit_head) {
        (Some(path), _) => Some(HeadSource::File(path)),
        (None, true) => Some(HeadSource::Fit),
        (None, false) => None,
    };
    if let Some(source) = head {
        source
            .check(&dataset)
            .with_context(|| format!("the task head for {}", args.data.display()))?;
    }
    let options = Options {
        engine: args.engine,
        engine_options: EngineOptions {
            batch: args.batch,
            threads: args.threads,
            ..EngineOptions::default()
        },
        keep_features: args.dump_features.is_some() || head.is_some(),
        ranges: args.ranges,
    };
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} {pos}/{len} images [{bar:30}] eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    };
    let calibrated = tailor_calibration::score(&bundle, &dataset, &options, &mut |p| match p {
        Progress::Subnet { id, index, total } => {
            bar.set_prefix(format!("{id} ({}/{total})", index + 1));
            bar.set_position(0);
        }
        Progress::Images { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })
    .with_context(|| format!("calibrating {}", args.bundle.display()))?;
    bar.finish_and_clear();
    if let Some(path) = &args.dump_features {
        record::write_features(path, &dataset, &calibrated)?;
    }
    // Drawn before the bundle changes, so a plot that fails changes nothing.
    if let Some(plot) = &plot {
        plot.draw(&bundle, &calibrated)
            .with_context(|| format!("drawing {}", plot.path.display()))?;
    }
    let heads = head
        .map(|source| {
            let opts = HeadOptions {
                source,
                route: args.transfer,
                ridge: Ridge::default(),
                seed: args.seed,
            };
            transfer_heads(&calibrated, &dataset, &opts)
                .with_context(|| format!("transferring the task head to {}", args.bundle.display()))
        })
        .transpose()?;
    let graphs = match &heads {
        Some(h) => graphs_with_heads(&bundle, h)?,
        None => Vec::new(),
    };
    let ranges = record::write_with_graphs(&bundle, &dataset, &calibrated, &graphs)
        .with_context(|| format!("writing the scores into {}", args.bundle.display()))?;
    if args.json {
        let scores: Vec<_> = calibrated
            .scores
            .iter()
            .map(|s| serde_json::json!({"id": s.id, "quality": s.quality(), "knn_top1": s.knn_top1, "fidelity": s.fidelity}))
            .collect();
        outln!(
            "{:#}",
            serde_json::json!({
                "bundle": args.bundle, "quality_metric": calibrated.metric.name(),
                "reference": calibrated.reference, "dataset": dataset_json(&args.data, &dataset),
                "ranges": ranges, "subnets": scores,
                "head": heads.as_ref().map(|h| head_json(h, &args)),
            })
        )?;
        return Ok(());
    }
    match &dataset.labels {
        Some(l) => eprintln!(
            "{}: {} images, {} classes, k-NN memory {} / classified {}",
            args.data.display(),
            dataset.images.len(),
            l.names.len(),
            l.train.len(),
            l.val.len()
        ),
        None => eprintln!(
            "{}: {} images, no labels",
            args.data.display(),
            dataset.images.len()
        ),
    }
    outln!("{:<12} {:>9} {:>9}", "id", "k-NN top1", "fidelity")?;
    for s in &calibrated.scores {
        let knn = s.knn_top1.map_or("-".to_owned(), |a| format!("{a:.1}%"));
        outln!("{:<12} {knn:>9} {:>9.3}", s.id, s.fidelity)?;
    }
    eprintln!(
        "wrote quality ({}) into {}; fidelity is to {}; ranges in {}",
        calibrated.metric.name(),
        args.bundle.display(),
        calibrated.reference,
        ranges.display()
    );
    if let Some(h) = &heads {
        print_heads(h, &args)?;
    }
    Ok(())
}

/// Where `--head`/`--fit-head` took the teacher's head from.
fn head_origin(args: &CalibrateArgs) -> String {
    args.head.as_ref().map_or_else(
        || "fitted on the train images".to_owned(),
        |p| p.display().to_string(),
    )
}

fn head_json(heads: &Heads, args: &CalibrateArgs) -> serde_json::Value {
    let subnets: Vec<_> = heads
        .subnets
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id, "agreement": s.transferred.agreement, "accuracy": s.transferred.accuracy,
                "truncated_agreement": s.truncated.agreement, "truncated_accuracy": s.truncated.accuracy,
            })
        })
        .collect();
    serde_json::json!({
        "head": head_origin(args), "transfer": args.transfer.name(), "classes": heads.classes,
        "fitted_on": heads.fitted_on, "scored_on": heads.scored_on,
        "teacher_accuracy": heads.teacher.accuracy, "subnets": subnets,
    })
}

/// The task head per sub-network, beside the truncated head it replaces.
fn print_heads(heads: &Heads, args: &CalibrateArgs) -> Result<()> {
    let percent = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.1}%", 100.0 * v));
    outln!(
        "\nhead {} ({} classes, {} transfer): fitted on {} images, scored on {}",
        head_origin(args),
        heads.classes,
        args.transfer,
        heads.fitted_on,
        heads.scored_on
    )?;
    outln!(
        "{:<12} {:>9} {:>9} {:>15} {:>15}",
        "id",
        "accuracy",
        "agreement",
        "trunc. accuracy",
        "trunc. agreement"
    )?;
    for s in &heads.subnets {
        outln!(
            "{:<12} {:>9} {:>9} {:>15} {:>15}",
            s.id,
            percent(s.transferred.accuracy),
            percent(Some(s.transferred.agreement)),
            percent(s.truncated.accuracy),
            percent(Some(s.truncated.agreement))
        )?;
    }
    eprintln!("every graph now has a `logits` output (agreement: with the teacher head's class)");
    Ok(())
}

fn route(args: RouteArgs) -> Result<()> {
    use tailor_calibration::route::{self, histogram};
    use tailor_runtime::engine::segment::Engine;
    let engine = match (args.engine, args.provider) {
        (EngineKind::Tract, None) => Engine::Tract,
        (EngineKind::Tract, Some(provider)) => {
            bail!("--provider {provider} is an ONNX Runtime setting: add --engine ort")
        }
        (EngineKind::Ort, provider) => Engine::Ort(provider.unwrap_or_default()),
    };
    let bundle = Bundle::open(&args.bundle)?;
    let load = LoadOptions {
        labels: true,
        seed: args.seed,
        limit: args.limit,
    };
    let dataset = Dataset::load(&args.data, load)
        .with_context(|| format!("reading the dataset {}", args.data.display()))?;
    let task = args.task.clone().unwrap_or_else(|| {
        let name = args.data.file_stem().unwrap_or(args.data.as_os_str());
        name.to_string_lossy().into_owned()
    });
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} routing {pos}/{len} images [{bar:30}] eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let pass = route::Pass {
        batch: args.batch,
        threads: args.threads.unwrap_or(route::Pass::default().threads),
        engine,
    };
    let routed = route::route(&bundle, &dataset, &task, pass, &mut |p| match p {
        route::Progress::Planned { cuts, unshared } if !args.quiet && !args.json => eprintln!(
            "{} sub-networks: {cuts} blocks run per image ({unshared} one graph at a time)",
            bundle.manifest().subnets.len()
        ),
        route::Progress::Planned { .. } => {}
        route::Progress::Images { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })
    .with_context(|| format!("routing {}", args.bundle.display()))?;
    bar.finish_and_clear();
    if let Some(path) = &args.dump_features {
        record::write_features(path, &dataset, &routed)?;
    }
    // Drawn before the bundle changes, so a plot that fails changes nothing.
    if let Some(path) = &args.plot {
        histogram::write(path, &routed.scores, &routed.reference, &task)
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    record::write(&bundle, &dataset, &routed)
        .with_context(|| format!("writing the scores into {}", args.bundle.display()))?;
    let ranking = route::ranking(&routed);
    if args.json {
        let manifest = bundle.manifest();
        let paths: Vec<_> = ranking
            .iter()
            .map(|s| {
                let route = manifest.subnet(&s.id).and_then(|m| m.route.clone());
                serde_json::json!({"id": s.id, "route": route, "knn_top1": s.knn_top1, "fidelity": s.fidelity})
            })
            .collect();
        outln!(
            "{:#}",
            serde_json::json!({
                "bundle": args.bundle, "task": task, "quality_metric": routed.metric.name(),
                "reference": routed.reference, "dataset": dataset_json(&args.data, &dataset),
                "ranking": paths,
            })
        )?;
        return Ok(());
    }
    outln!(
        "{:<4} {:<12} {:>9} {:>9}",
        "rank",
        "path",
        "k-NN top1",
        "fidelity"
    )?;
    for (rank, s) in ranking.into_iter().enumerate() {
        outln!(
            "{:<4} {:<12} {:>8.1}% {:>9.3}",
            rank + 1,
            s.id,
            s.quality(),
            s.fidelity
        )?;
    }
    eprintln!(
        "wrote quality (knn_top1 on task `{task}`, dataset sha256 {}) into {}",
        dataset.sha256,
        args.bundle.display()
    );
    Ok(())
}

/// `--json`'s description of the data scored: where, which, how split.
fn dataset_json(path: &Path, dataset: &Dataset) -> serde_json::Value {
    serde_json::json!({
        "path": path, "sha256": dataset.sha256.to_string(), "images": dataset.images.len(),
        "bytes": dataset.bytes,
        "classes": dataset.labels.as_ref().map(|l| l.names.len()),
        "train": dataset.labels.as_ref().map(|l| l.train.len()),
        "val": dataset.labels.as_ref().map(|l| l.val.len()),
    })
}

/// What `--plot` draws: quality against MACs, or against the latencies of
/// a `runtime profile --json` file, with the chosen sub-network marked.
struct PlotSpec {
    path: PathBuf,
    /// The profile and its p50 per sub-network.
    latency: Option<(PathBuf, BTreeMap<String, f64>)>,
    chosen: Option<String>,
}

impl PlotSpec {
    /// Reads the reports the flags name and checks their ids against the
    /// bundle.
    fn read(path: &Path, args: &CalibrateArgs, bundle: &Bundle) -> Result<PlotSpec> {
        let manifest = bundle.manifest();
        let ids: Vec<&str> = manifest.subnets.iter().map(|s| s.id).collect();
        let latency = args
            .latency
            .as_ref()
            .map(|file| Ok::<_, anyhow::Error>((file.clone(), read_latencies(file, &ids)?)))
            .transpose()?;
        let chosen = match (&args.chosen, &args.selection) {
            (Some(id), _) if !ids.contains(&id.as_str()) => bail!(
                "--chosen {id}: no such sub-network in {} (it holds {})",
                args.bundle.display(),
                ids.join(", ")
            ),
            (Some(id), _) => Some(id.clone()),
            (None, Some(file)) => Some(read_selection(file, &ids)?),
            (None, None) => None,
        };
        if let (Some(id), Some((file, latencies))) = (&chosen, &latency) {
            if !latencies.contains_key(id) {
                bail!(
                    "the chosen sub-network {id} has no latency in {}: profile it too",
                    file.display()
                );
            }
        }
        Ok(PlotSpec {
            path: path.to_owned(),
            latency,
            chosen,
        })
    }

    /// Draws the chart, written whole or not at all.
    fn draw(&self, bundle: &Bundle, calibrated: &tailor_calibration::Calibrated) -> Result<()> {
        let manifest = bundle.manifest();
        let scored = manifest.subnets.iter().zip(&calibrated.scores);
        let (points, cost): (Vec<_>, _) = match &self.latency {
            None => (
                scored.map(|(s, q)| point(s.id, s.macs as f64, q)).collect(),
                Cost::Macs,
            ),
            Some((file, latencies)) => {
                let (measured, unmeasured): (Vec<_>, Vec<_>) =
                    scored.partition(|(s, _)| latencies.contains_key(s.id));
                if !unmeasured.is_empty() {
                    let ids: Vec<&str> = unmeasured.iter().map(|(s, _)| s.id).collect();
                    eprintln!(
                        "note: not plotted, no latency in {}: {}",
                        file.display(),
                        ids.join(", ")
                    );
                }
                let points = measured
                    .into_iter()
                    .map(|(s, q)| point(s.id, latencies[s.id], q))
                    .collect();
                (points, Cost::LatencyMs)
            }
        };
        let svg = pareto_svg(&Chart {
            points: &points,
            cost,
            quality: calibrated.metric.name(),
            chosen: self.chosen.as_deref(),
        })?;
        let staged = self.path.with_extension("svg.partial");
        let written =
            std::fs::write(&staged, svg).and_then(|()| std::fs::rename(&staged, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        Ok(written?)
    }
}

fn point(id: &str, cost: f64, scores: &tailor_calibration::Scores) -> Point {
    Point {
        id: id.to_owned(),
        cost,
        quality: scores.quality(),
    }
}

fn inspect(dir: &Path, json: bool, verify: bool) -> Result<()> {
    let bundle = Bundle::open(dir)?;
    let m = bundle.manifest();
    if verify {
        for s in &m.subnets {
            bundle.verify(s)?;
        }
        if let Some(c) = &m.calibration {
            bundle.verify_data(&c.ranges)?;
        }
    }
    // Quality against MACs, once calibration has scored the sub-networks.
    let points: Option<Vec<Point>> = m.calibration.as_ref().map(|_| {
        m.subnets
            .iter()
            .filter_map(|s| {
                Some(Point {
                    id: s.id.to_owned(),
                    cost: s.macs as f64,
                    quality: f64::from(s.quality?),
                })
            })
            .collect()
    });
    if json {
        let mut out = serde_json::to_value(&m)?;
        if let Some(points) = &points {
            // By increasing MACs, as on the chart.
            out["pareto_front"] = pareto_front(points)
                .into_iter()
                .map(|i| points[i].id.as_str())
                .collect();
        }
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(());
    }
    outln!(
        "bundle {}: {} sub-networks of {} {} ({})",
        dir.display(),
        m.subnets.len(),
        m.teacher.family,
        m.teacher.file,
        m.teacher.config
    )?;
    outln!("teacher sha256 {}", m.teacher.sha256)?;
    match &m.calibration {
        Some(c) => outln!(
            "calibrated on {} images (dataset sha256 {}): quality is {}",
            c.dataset_images,
            c.dataset_sha256,
            c.quality_metric.name()
        )?,
        None => outln!("not calibrated: quality unknown (exporter calibrate)")?,
    }
    outln!(
        "{}  {:>8} {:>8}  graph",
        table_row(
            ["id", "width", "depth", "params", "MACs", "weights", "act(b=1)"].map(String::from)
        ),
        "quality",
        "fidelity"
    )?;
    for s in &m.subnets {
        let row = subnet_row(
            s.id,
            s.width,
            s.depth,
            s.params,
            s.macs,
            s.weight_bytes,
            s.activation_bytes,
        );
        let score = |v: Option<f32>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        outln!(
            "{row}  {:>8} {:>8}  {}",
            score(s.quality),
            score(s.fidelity),
            s.onnx
        )?;
    }
    if let (Some(points), Some(c)) = (&points, &m.calibration) {
        let chart = Chart {
            points,
            cost: Cost::Macs,
            quality: c.quality_metric.name(),
            chosen: None,
        };
        outln!(
            "\n{} against MACs (* marks the Pareto front: the sub-networks no other beats on both):",
            c.quality_metric.name()
        )?;
        outln!(@no_newline "{}", pareto_table(&chart))?;
    }
    if verify {
        outln!("verified: every graph, weight and calibration file matches its sha256")?;
    }
    Ok(())
}

/// One line of the sub-network tables (dry run and inspect).
fn subnet_row(
    id: &str,
    width: u32,
    depth: u32,
    params: u64,
    macs: u64,
    weight_bytes: u64,
    act_bytes: u64,
) -> String {
    table_row([
        id.to_owned(),
        width.to_string(),
        depth.to_string(),
        si(params),
        si(macs),
        human_bytes(weight_bytes),
        human_bytes(act_bytes),
    ])
}

fn table_row(cells: [String; 7]) -> String {
    let [id, width, depth, params, macs, weights, act] = cells;
    format!("{id:<12} {width:>6} {depth:>6} {params:>10} {macs:>10} {weights:>11} {act:>10}")
}

/// 1234567 -> 1.23M
fn si(v: u64) -> String {
    match v {
        0..1_000 => v.to_string(),
        1_000..1_000_000 => format!("{:.2}k", v as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}M", v as f64 / 1e6),
        _ => format!("{:.2}G", v as f64 / 1e9),
    }
}
