//! The whole job on the embedded example teacher: export it into a bundle,
//! calibrate it on held-out MNIST images (quality per size), show what the
//! bundle holds, select the best sub-network that fits this machine under a
//! default budget, and run one inference with it.
//!
//!     cargo run --release --example quickstart [-- LATENCY_MS [MEMORY_MB]]

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ndarray::Array4;
use tailor::calibration::{self, record, Dataset, LoadOptions, Options};
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::plan::{Plan, Request, Selection};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::EngineOptions;
use tailor::runtime::isolate::{self, Isolation};
use tailor::runtime::select::{render_selection, Limits, Runtime, RuntimeOptions};

/// Default budget: a latency a mid-range CPU core meets with the middle of
/// the example's grid, and a small board's memory share.
const DEFAULT_LATENCY_MS: f64 = 4.0;
const DEFAULT_MEMORY_MB: f64 = 512.0;
/// Held-out MNIST images with labels (written by tools/train_tiny_poa.py).
const CALIBRATION_DATA: &str = "examples/mnist-calib.npz";

fn main() -> ExitCode {
    // Candidates are measured in children: this program re-executed.
    if let Some(code) = isolate::child_main() {
        return code;
    }
    match quickstart() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn quickstart() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let latency_ms = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("LATENCY_MS")?
        .unwrap_or(DEFAULT_LATENCY_MS);
    let memory_mb = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("MEMORY_MB")?
        .unwrap_or(DEFAULT_MEMORY_MB);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let teacher = root.join("examples/poa-vit-tiny/eval/training_799/teacher_checkpoint.pth");
    let out = root.join("target/quickstart-bundle");

    // 1. Export every sub-network of the example teacher.
    let request = Request {
        teacher,
        config: None, // found from POA's layout: examples/poa-vit-tiny/config.yaml
        overrides: Default::default(),
        selection: Selection::All,
        max_params: None,
        max_macs: None,
    };
    let plan = Plan::new(&request)?;
    let options = WriteOptions {
        force: true,
        jobs: 2,
    };
    let summary = bundle::write(&plan, &out, &options, &|_| {})?;
    println!(
        "exported {} sub-networks of {} into {} ({} files, {:.1} MiB)\n",
        summary.subnets,
        plan.teacher().display(),
        out.display(),
        summary.files,
        summary.bytes as f64 / (1024.0 * 1024.0)
    );

    // 2. Quality per size on held-out images: k-NN accuracy of each
    // sub-network's cls_token, written into the manifest so selection ranks
    // by it.
    let data = root.join(CALIBRATION_DATA);
    if data.exists() {
        calibrate(&out, &data)?;
    } else {
        println!("no {CALIBRATION_DATA}: selection ranks by size, not quality\n");
    }

    // 3. What the bundle holds.
    let options = RuntimeOptions {
        cache: None, // a fresh decision every time the quickstart runs
        isolation: Isolation::current_exe()?,
        ..RuntimeOptions::default()
    };
    let rt = Runtime::with_options(&out, options)?;
    let manifest = rt.bundle().manifest();
    let metric = manifest
        .calibration
        .as_ref()
        .map_or("quality", |c| c.quality_metric.name());
    println!(
        "{:<10} {:>6} {:>6} {:>10} {:>10} {:>12} {:>9}",
        "id", "width", "depth", "params", "MMACs", metric, "fidelity"
    );
    let score = |v: Option<f32>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for s in &manifest.subnets {
        println!(
            "{:<10} {:>6} {:>6} {:>10} {:>10.1} {:>12} {:>9}",
            s.id,
            s.width,
            s.depth,
            s.params,
            s.macs as f64 / 1e6,
            score(s.quality),
            score(s.fidelity)
        );
    }

    // 4. Start-up selection on this machine.
    println!("\nselecting on {}:", rt.device().summary());
    let limits = Limits::latency_ms(latency_ms).memory_mb(memory_mb);
    let mut chosen = rt.select(&limits)?;
    print!("{}", render_selection(&manifest, &chosen));

    // 5. One inference with the chosen sub-network.
    let [b, c, h, w] = rt.input_shape(1);
    let pixels = Array4::from_shape_fn((b, c, h, w), |(_, c, y, x)| {
        ((x + y + c) as f32 / 32.0).sin()
    });
    let out = chosen.session().run(pixels.view())?;
    println!(
        "inference: cls_token {:?}, patch_tokens {:?}, first values {:?}",
        out.cls_token.shape(),
        out.patch_tokens.shape(),
        &out.cls_token.as_slice().unwrap()[..4]
    );
    Ok(())
}

/// Scores every sub-network of `bundle` on `data` and writes the scores in.
fn calibrate(bundle: &Path, data: &Path) -> Result<()> {
    let load = LoadOptions {
        labels: true,
        seed: 0,
        limit: None,
    };
    let dataset = Dataset::load(data, load)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let options = Options {
        engine_options: EngineOptions {
            batch: 32,
            threads: Some(threads),
            ..EngineOptions::default()
        },
        ..Options::default()
    };
    let opened = Bundle::open(bundle)?;
    let calibrated = calibration::score(&opened, &dataset, &options, &mut |_| {})?;
    record::write(&opened, &dataset, &calibrated)?;
    println!(
        "calibrated on {} images of {}: {} ({} memory, {} classified)\n",
        dataset.images.len(),
        data.display(),
        calibrated.metric.name(),
        dataset.labels.as_ref().map_or(0, |l| l.train.len()),
        dataset.labels.as_ref().map_or(0, |l| l.val.len()),
    );
    Ok(())
}
