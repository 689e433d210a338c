//! `exporter route`: every path of an SDR bundle scored on a task's labelled
//! data, the scores written into the manifest and the ranking printed.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tailor_calibration::route::{self, histogram};
use tailor_calibration::{record, Dataset, LoadOptions};
use tailor_runtime::bundle::Bundle;
use tailor_runtime::engine::segment::Engine;
use tailor_runtime::engine::{EngineKind, ExecutionProvider};
use tailor_runtime::outln;

use crate::output::{dataset_json, progress_bar};

/// Route a task to an SDR bundle: score every path by k-NN on your
/// labelled data (the paths' shared prefixes computed once), write the
/// scores into the manifest with the task's name, and print the
/// ranking, so the runtime picks the best-routed path that fits.
#[derive(Debug, Args)]
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
pub struct RouteArgs {
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
    batch: NonZeroUsize,
    /// Workers, each running whole batches on one thread, with either
    /// engine (ONNX Runtime gets one intra-op thread per worker) [default:
    /// one per core].
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,
    /// The engine that runs the blocks: tract, or ort (ONNX Runtime: needs a
    /// build with the `ort` feature and ORT_DYLIB_PATH naming
    /// libonnxruntime.so).
    #[arg(long, default_value = "tract", value_name = "ENGINE")]
    engine: EngineKind,
    /// ONNX Runtime's execution provider (--engine ort) [default: cpu]; a
    /// provider that would leave a block to the CPU is an error.
    #[arg(long, value_name = "PROVIDER")]
    provider: Option<ExecutionProvider>,
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

pub fn run(args: RouteArgs) -> Result<()> {
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
    let bar = progress_bar(
        args.quiet || args.json,
        None,
        "{spinner} routing {pos}/{len} images [{bar:30}] eta {eta}",
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
