//! The whole job on the embedded example teacher: export it into a bundle,
//! add an int8 variant of every sub-network, calibrate it on held-out MNIST
//! images (quality per size and precision), show what the bundle holds,
//! select the best sub-network and precision that fit this machine under a
//! default budget, and run one inference with it.
//!
//!     cargo run --release --example quickstart [-- LATENCY_MS [MEMORY_MB]]

use std::path::Path;
use std::process::ExitCode;

mod common;

use anyhow::{Context, Result};
use ndarray::Array4;
use tailor::calibration::ranges::{RangesFile, Scope};
use tailor::calibration::{self, record, Dataset, LoadOptions, Options};
use tailor::exporter::quant::variants::{check_bundle, write_variants, Int8Options, Variant};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::EngineOptions;
use tailor::runtime::manifest::{ActivationCalibrator, ActivationEncoding};
use tailor::runtime::select::{render_selection, Limits, Runtime, RuntimeOptions, SelectError};
use tailor::runtime::trial::Isolation;

/// Default budget: a latency a mid-range CPU core meets with the middle of
/// the example's grid, and a small board's memory share.
const DEFAULT_LATENCY_MS: f64 = 4.0;
const DEFAULT_MEMORY_MB: f64 = 512.0;
/// Held-out MNIST images with labels (written by tools/train_tiny_poa.py).
const CALIBRATION_DATA: &str = "examples/mnist-calib.npz";

fn main() -> ExitCode {
    common::main(quickstart, (DEFAULT_LATENCY_MS, DEFAULT_MEMORY_MB))
}

fn quickstart(limits: Limits) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let teacher = root.join("examples/poa-vit-tiny/eval/training_799/teacher_checkpoint.pth");
    let out = root.join("target/quickstart-bundle");

    // 1. Export every sub-network of the example teacher.
    // Its config is found from POA's layout: examples/poa-vit-tiny/config.yaml.
    common::export(&teacher, &out)?;

    // 2. Quality per size on held-out images: k-NN accuracy of each
    // sub-network's cls_token, written into the manifest so selection ranks
    // by it. The inner activations' ranges recorded on the way quantise an
    // int8 variant of each (`exporter quantize`), scored in turn.
    let data = root.join(CALIBRATION_DATA);
    if data.exists() {
        let ranges = calibrate(&out, &data, Scope::Inner)?;
        quantize(&out, &ranges.context("calibration recorded no ranges")?)?;
        calibrate(&out, &data, Scope::Interface)?;
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
        "{:<16} {:>9} {:>6} {:>6} {:>10} {:>10} {:>10} {:>12} {:>9}",
        "id", "precision", "width", "depth", "params", "MMACs", "weights", metric, "fidelity"
    );
    let score = |v: Option<f32>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    for s in &manifest.subnets {
        println!(
            "{:<16} {:>9} {:>6} {:>6} {:>10} {:>10.1} {:>9}k {:>12} {:>9}",
            s.id,
            s.precision.name(),
            s.width,
            s.depth,
            s.params,
            s.macs as f64 / 1e6,
            s.weight_bytes / 1000,
            score(s.quality),
            score(s.fidelity)
        );
    }

    // 4. Start-up selection on this machine.
    println!("\nselecting on {}:", rt.device().summary());
    let mut chosen = match rt.select(&limits) {
        // The default budget assumes a desktop core: a slower machine gets
        // it loosened once, said aloud; a budget the user gave stands.
        Err(SelectError::NothingFits(why)) if std::env::args().len() == 1 => {
            let looser = Limits {
                latency_ms: 4.0 * DEFAULT_LATENCY_MS,
                ..limits
            };
            println!(
                "nothing fits the default {DEFAULT_LATENCY_MS} ms here ({why}); \
                 selecting again under {} ms (give your own: -- LATENCY_MS)",
                looser.latency_ms
            );
            rt.select(&looser)?
        }
        chosen => chosen?,
    };
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

/// Scores every sub-network of `bundle` on `data` and writes the scores in,
/// recording the activation ranges of `ranges`, which it returns.
fn calibrate(bundle: &Path, data: &Path, ranges: Scope) -> Result<Option<RangesFile>> {
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
        ranges,
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
    Ok(calibrated.ranges)
}

/// Adds an int8 variant of every fp32 sub-network of `bundle`, from the
/// ranges its calibration recorded: uint8 activations (ONNX Runtime's fast
/// CPU encoding) clipped at the recorded percentile.
fn quantize(bundle: &Path, ranges: &RangesFile) -> Result<()> {
    let opened = Bundle::open(bundle)?;
    let int8 = Variant::Int8(Int8Options {
        encoding: ActivationEncoding::U8,
        calibrator: ActivationCalibrator::Percentile,
    });
    let checked = check_bundle(&opened, &[int8])?;
    let written = write_variants(&opened, &checked, Some(ranges), &[int8])?;
    println!(
        "quantised {} int8 variants (uint8 activations)\n",
        written.len()
    );
    Ok(())
}
