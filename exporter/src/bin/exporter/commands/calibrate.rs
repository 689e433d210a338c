//! `exporter calibrate`: every sub-network scored on the user's data, the
//! scores and activation ranges written into the bundle, optionally a task
//! head for every graph and the Pareto chart.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use tailor_calibration::head::{transfer_heads, HeadOptions, HeadSource, Heads, Ridge, Route};
use tailor_calibration::plot::measured::ReportError;
use tailor_calibration::plot::{write_svg, Chosen, Reports};
use tailor_calibration::ranges::Scope;
use tailor_calibration::{record, Calibrated, Dataset, LoadOptions, Options, Progress};
use tailor_exporter::onnx::head::graphs_with_heads;
use tailor_runtime::bundle::Bundle;
use tailor_runtime::engine::{EngineKind, EngineOptions};
use tailor_runtime::outln;

use crate::output::{dataset_json, progress_bar};

/// Score every sub-network on your data and write the scores into the
/// bundle's manifest, so the runtime picks the best one that fits
/// rather than the largest.
#[derive(Debug, Args)]
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
pub struct CalibrateArgs {
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

pub fn run(args: CalibrateArgs) -> Result<()> {
    let bundle = Bundle::open(&args.bundle)?;
    // Read before any image runs: a bad report fails at once.
    let plot = args
        .plot
        .as_ref()
        .map(|path| Ok::<_, anyhow::Error>((path, read_reports(&args, &bundle)?)))
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
    let bar = progress_bar(
        args.quiet || args.json,
        None,
        "{spinner} {prefix} {pos}/{len} images [{bar:30}] eta {eta}",
    );
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
    if let Some((path, reports)) = &plot {
        draw(path, reports, &bundle, &calibrated)
            .with_context(|| format!("drawing {}", path.display()))?;
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

/// The reports `--latency`, `--chosen` and `--selection` name, checked
/// against the bundle.
fn read_reports(args: &CalibrateArgs, bundle: &Bundle) -> Result<Reports, ReportError> {
    let chosen = match (&args.chosen, &args.selection) {
        (Some(id), _) => Some(Chosen::Id(id)),
        (None, Some(file)) => Some(Chosen::Selection(file)),
        (None, None) => None,
    };
    Reports::read(bundle, args.latency.as_deref(), chosen)
}

/// Draws `--plot`'s chart: quality against MACs, or against the measured
/// latencies, the chosen sub-network marked.
fn draw(path: &Path, reports: &Reports, bundle: &Bundle, calibrated: &Calibrated) -> Result<()> {
    let plotted = reports.join(&bundle.manifest(), &calibrated.scores);
    if let (Some(file), false) = (reports.latency_file(), plotted.unmeasured.is_empty()) {
        eprintln!(
            "note: not plotted, no latency in {}: {}",
            file.display(),
            plotted.unmeasured.join(", ")
        );
    }
    Ok(write_svg(path, &plotted.chart(calibrated.metric.name()))?)
}
