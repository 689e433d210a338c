//! `exporter TEACHER -o BUNDLE` (no subcommand): the export, or with
//! `--dry-run` the grid it would write.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tailor_exporter::bundle::{self, WriteOptions};
use tailor_exporter::config::{GridRange, Overrides};
use tailor_exporter::family::SubnetSpec;
use tailor_exporter::plan::{Plan, Request, Selection};
use tailor_runtime::outln;

use crate::output::{human_bytes, progress_bar, subnet_row, table_header};

#[derive(Debug, Args)]
pub struct ExportArgs {
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

pub fn run(args: ExportArgs) -> Result<()> {
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
    let progress = progress_bar(
        args.quiet || args.json,
        Some(total),
        "{spinner} writing {bytes}/{total_bytes} [{bar:30}] {binary_bytes_per_sec} eta {eta}",
    );
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
    outln!("{}", table_header())?;
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
