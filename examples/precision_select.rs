//! Selection among precisions against fp32 alone, on a ViT-S/16-shaped
//! bundle (widths 192..=384 × depths 6, 9, 12 of a random teacher, 224 px)
//! with an int8 variant (uint8 activations, percentile clipping from ranges
//! recorded on 64 MNIST digits) of every sub-network.
//!
//! Per latency limit, the runtime selects twice with its defaults (engine
//! `auto`, thread counts chosen, no cache), once under `--precision fp32`
//! and once among every precision, alternating which goes first so drift
//! hits both alike. The random teacher has no meaningful quality, so both
//! rank by MACs (an int8 variant just below its fp32 parent).
//!
//! Usage: `ORT_DYLIB_PATH=... cargo run --release --features ort --example
//! precision_select [-- LIMIT_MS...]` (default limits: 12, 20, 30, 45 ms).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use tailor::calibration::ranges::Scope;
use tailor::calibration::{self, Dataset, LoadOptions, Options};
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::family::SubnetSpec;
use tailor::exporter::plan::{Plan, Request, Selection};
use tailor::exporter::quant::variants::{check_bundle, write_variants, Int8Options, Variant};
use tailor::exporter::synthetic::{write_vit_teacher, VIT_S16};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::manifest::{ActivationCalibrator, ActivationEncoding};
use tailor::runtime::select::{Chosen, Limits, Runtime, RuntimeOptions};
use tailor::runtime::trial::{self, Isolation};

const DEFAULT_LIMITS_MS: [f64; 4] = [12.0, 20.0, 30.0, 45.0];
const WIDTHS: [u32; 4] = [192, 256, 320, 384];
const DEPTHS: [u32; 3] = [6, 9, 12];
/// Digits the activation ranges are recorded on.
const RANGE_IMAGES: usize = 64;

fn main() -> ExitCode {
    if let Some(code) = trial::child_main() {
        return code;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let limits: Vec<f64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("LIMIT_MS"))
        .collect::<Result<_>>()?;
    let limits = if limits.is_empty() {
        DEFAULT_LIMITS_MS.to_vec()
    } else {
        limits
    };
    let dir = tempfile::tempdir()?;
    let bundle = vit_s16_with_int8(dir.path())?;
    let opened = Bundle::open(&bundle)?;
    let manifest = opened.manifest();
    let mmacs = |id: &str| {
        let subnet = manifest.subnets.iter().find(|s| s.id == id);
        subnet.expect("the pick is the bundle's").macs as f64 / 1e6
    };
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load();
    println!("| limit (ms) | fp32 only: pick | MMACs | p90 (ms) | all precisions: pick | MMACs | p90 (ms) | engine, threads | MACs gained |");
    println!("|---:|---|---:|---:|---|---:|---:|---|---:|");
    for (i, &limit) in limits.iter().enumerate() {
        let mut picks = [None, None];
        // Alternate which selection goes first.
        for k in 0..2 {
            let which = (i + k) % 2;
            let precisions = (which == 0).then(|| "fp32".parse().unwrap());
            picks[which] = Some(select(&bundle, limit, precisions));
        }
        let [fp32, all] = picks.map(Option::unwrap);
        let cell = |c: &Result<Chosen>| match c {
            Ok(c) => {
                let macs = mmacs(&c.id);
                let row = format!("{} | {macs:.0} | {:.1}", c.id, c.measured.p90_ms);
                (row, macs)
            }
            Err(e) => {
                eprintln!("{limit} ms: {e:#}");
                ("nothing fits | - | -".to_owned(), 0.0)
            }
        };
        let ((fp32_row, fp32_macs), (all_row, all_macs)) = (cell(&fp32), cell(&all));
        let setup = all
            .as_ref()
            .map_or("-".into(), |c| format!("{}, {}", c.engine, c.threads));
        let gained = if fp32_macs > 0.0 && all_macs > 0.0 {
            format!("{:.2}x", all_macs / fp32_macs)
        } else {
            "-".to_owned()
        };
        println!("| {limit} | {fp32_row} | {all_row} | {setup} | {gained} |");
    }
    println!(
        "\nload average before: {}; after: {}",
        load_before.trim(),
        load().trim()
    );
    Ok(())
}

/// The default runtime's pick under `limit`, among `precisions` (`None`:
/// every one the bundle has).
fn select(
    bundle: &Path,
    limit: f64,
    precisions: Option<tailor::runtime::select::Precisions>,
) -> Result<Chosen> {
    let options = RuntimeOptions {
        cache: None,
        isolation: Isolation::current_exe()?,
        precisions,
        ..RuntimeOptions::default()
    };
    let start = Instant::now();
    let chosen = Runtime::with_options(bundle, options)?
        .select(&Limits::latency_ms(limit).memory_mb(4096))?;
    eprintln!(
        "{limit} ms, {}: {} in {:.1} s",
        chosen.id,
        if chosen.id.contains('@') {
            "variant"
        } else {
            "fp32"
        },
        start.elapsed().as_secs_f64()
    );
    Ok(chosen)
}

/// The bundle, its fp32 sub-networks exported from a random ViT-S/16 and
/// an int8 variant of each quantised from ranges recorded on digits.
fn vit_s16_with_int8(dir: &Path) -> Result<std::path::PathBuf> {
    let teacher = dir.join("vit-s16.safetensors");
    write_vit_teacher(&teacher, &VIT_S16, 0)?;
    let specs = WIDTHS
        .iter()
        .flat_map(|&w| DEPTHS.map(|d| SubnetSpec::single(w, d)))
        .collect();
    let request = Request {
        selection: Selection::List(specs),
        ..Request::all(&teacher)
    };
    let out = dir.join("bundle");
    let options = WriteOptions {
        force: false,
        jobs: 1,
    };
    bundle::write(&Plan::new(&request)?, &out, &options, &|_| {})?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = LoadOptions {
        labels: false,
        seed: 0,
        limit: Some(RANGE_IMAGES),
    };
    let digits = Dataset::load(&root.join("examples/mnist-calib.npz"), load)?;
    let opened = Bundle::open(&out)?;
    let options = Options {
        ranges: Scope::Inner,
        ..Options::default()
    };
    let ranges = calibration::score(&opened, &digits, &options, &mut |_| {})?
        .ranges
        .context("calibration recorded no ranges")?;
    let int8 = Variant::Int8(Int8Options {
        encoding: ActivationEncoding::U8,
        calibrator: ActivationCalibrator::Percentile,
    });
    let checked = check_bundle(&opened, &[int8])?;
    write_variants(&opened, &checked, Some(&ranges), &[int8])?;
    Ok(out)
}
