//! `exporter`: slice a POA teacher checkpoint into a bundle of per-budget
//! ONNX graphs, or show what a bundle holds.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tailor_exporter::bundle::{self, WriteOptions};
use tailor_exporter::config::{GridRange, Overrides};
use tailor_exporter::family::SubnetSpec;
use tailor_exporter::plan::{Plan, Request, Selection};
use tailor_runtime::bundle::Bundle;
use tailor_runtime::{outln, stdout};

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
  exporter inspect bundle/"
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
        progress: progress.clone(),
    };
    let summary = bundle::write(&plan, &out, &options).with_context(|| {
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

fn inspect(dir: &Path, json: bool, verify: bool) -> Result<()> {
    let bundle = Bundle::open(dir)?;
    let m = bundle.manifest();
    if verify {
        for s in &m.subnets {
            bundle.verify(s)?;
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&m)?)?;
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
    outln!(
        "{}  graph",
        table_row(
            ["id", "width", "depth", "params", "MACs", "weights", "act(b=1)"].map(String::from)
        )
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
        outln!("{row}  {}", s.onnx)?;
    }
    if verify {
        outln!("verified: every graph and weight file matches its sha256")?;
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
