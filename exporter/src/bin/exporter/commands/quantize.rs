//! `exporter quantize`: int8 and fp16 variants of every fp32 sub-network,
//! written into the bundle as sub-networks of their own.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use tailor_calibration::ranges::{RangesFile, Scope};
use tailor_calibration::{Dataset, LoadOptions, Options};
use tailor_exporter::quant::variants::{
    check_bundle, write_variants, Int8Options, Variant, RANGES_COMMAND,
};
use tailor_runtime::bundle::Bundle;
use tailor_runtime::engine::{EngineKind, EngineOptions};
use tailor_runtime::manifest::{ActivationCalibrator, ActivationEncoding};
use tailor_runtime::outln;

use crate::output::human_bytes;

/// Add int8 variants (explicit QuantizeLinear/DequantizeLinear graphs) or
/// fp16 ones of every fp32 sub-network to the bundle, for the runtime to
/// choose among alongside the fp32 ones.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  exporter calibrate bundle/ --data mnist-calib.npz --ranges inner   # record the ranges first
  exporter quantize bundle/ --precision int8                         # u8 activations, percentile clipping
  exporter quantize bundle/ --precision int8 --encoding s8           # for TensorRT: symmetric activations
  exporter quantize bundle/ --precision int8 --data mnist-calib.npz  # record the ranges on the way
  exporter quantize bundle/ --precision fp16                         # needs no ranges
  exporter quantize bundle/ --precision int8,fp16                    # both at once
  exporter calibrate bundle/ --data mnist-calib.npz                  # score the variants like any sub-network
  runtime select bundle/ --latency-ms 25

Weights are symmetric int8 per output channel, stored once per width in
graphs/weights/w<W>.int8.bin (all depths share it); each MatMul, Gemm and
Conv input is quantised per tensor from the ranges `calibrate --ranges
inner` recorded; LayerNorm, Softmax, GELU and GroupNorm stay in float.
Each variant is listed as `<id>@int8-<encoding>` with its parent's id, its
own graph, bytes and sha256. The encoding follows the engine: u8 for ONNX
Runtime's CPU on x86 (uint8 activations x int8 weights) and QNN, s8 for
TensorRT. Both can coexist. FP16 variants (`<id>@fp16`) store the
weights once per width in graphs/weights/w<W>.fp16.bin and compute in
float16 between float32 inputs and outputs, LayerNorm, Softmax and the
normalisations' statistics in float32. Every graph is checked before anything is
written, and the bundle is swapped in whole at the end: a failure leaves it
as it was. docs/precision.md has the measurements.")]
pub struct QuantizeArgs {
    /// The bundle directory (rewritten in place, atomically).
    bundle: PathBuf,
    /// The precisions of the variants, comma-separated: int8, fp16.
    #[arg(
        long,
        value_enum,
        value_name = "PRECISION",
        value_delimiter = ',',
        required = true
    )]
    precision: Vec<PrecisionArg>,
    /// How activations are encoded: u8 (ONNX Runtime CPU, QNN) or s8
    /// (TensorRT: zero point 0).
    #[arg(long, value_enum, default_value = "u8", value_name = "ENCODING")]
    encoding: EncodingArg,
    /// How each activation's range is clipped: the whole observed range
    /// (minmax), the recorded 99.99th percentile of |x| (percentile), or
    /// the clip minimising the squared error over the recorded samples (mse).
    #[arg(
        long,
        value_enum,
        default_value = "percentile",
        value_name = "CALIBRATOR"
    )]
    calibrator: CalibratorArg,
    /// Record the ranges on these images first (as `calibrate --ranges
    /// inner` would, without writing scores), instead of the bundle's.
    #[arg(long, value_name = "DATA")]
    data: Option<PathBuf>,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    Int8,
    Fp16,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EncodingArg {
    U8,
    S8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CalibratorArg {
    Minmax,
    Percentile,
    Mse,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let int8 = Int8Options {
        encoding: match args.encoding {
            EncodingArg::U8 => ActivationEncoding::U8,
            EncodingArg::S8 => ActivationEncoding::S8,
        },
        calibrator: match args.calibrator {
            CalibratorArg::Minmax => ActivationCalibrator::MinMax,
            CalibratorArg::Percentile => ActivationCalibrator::Percentile,
            CalibratorArg::Mse => ActivationCalibrator::Mse,
        },
    };
    let mut variants: Vec<Variant> = Vec::new();
    for p in &args.precision {
        let v = match p {
            PrecisionArg::Int8 => Variant::Int8(int8),
            PrecisionArg::Fp16 => Variant::Fp16,
        };
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    let needs_ranges = variants.iter().any(|v| matches!(v, Variant::Int8(_)));
    let bundle = Bundle::open(&args.bundle)?;
    let checked = check_bundle(&bundle, &variants)?;
    let ranges = match (&args.data, needs_ranges) {
        (_, false) => None,
        (Some(data), true) => Some(record_ranges(&bundle, data)?),
        (None, true) => Some(bundle_ranges(&bundle)?),
    };
    let written = write_variants(&bundle, &checked, ranges.as_ref(), &variants)
        .with_context(|| format!("writing variants into {}", args.bundle.display()))?;
    if args.json {
        let variants: Vec<_> = written
            .iter()
            .map(|w| {
                let mut v = serde_json::json!({
                    "id": w.id, "parent": w.parent, "weight_bytes": w.weight_bytes,
                });
                v["precision"] = match w.variant {
                    Variant::Int8(_) => "int8",
                    Variant::Fp16 => "fp16",
                }
                .into();
                v
            })
            .collect();
        let mut summary = serde_json::json!({"bundle": args.bundle, "variants": variants});
        if needs_ranges {
            summary["encoding"] = int8.encoding.name().into();
            summary["calibrator"] = int8.calibrator.name().into();
        }
        outln!("{summary:#}")?;
        return Ok(());
    }
    for w in &written {
        outln!(
            "{:<20} from {:<12} {:>11}",
            w.id,
            w.parent,
            human_bytes(w.weight_bytes)
        )?;
    }
    let detail = if needs_ranges {
        format!(
            " (int8: {} activations, {} clipping)",
            int8.encoding.name(),
            int8.calibrator.name()
        )
    } else {
        String::new()
    };
    eprintln!(
        "wrote {} variants{detail} into {}; score them with `exporter calibrate`",
        written.len(),
        args.bundle.display()
    );
    Ok(())
}

/// The bundle's recorded ranges, or the error naming the command to run.
fn bundle_ranges(bundle: &Bundle) -> Result<RangesFile> {
    let Some(calibration) = &bundle.manifest().calibration else {
        bail!(
            "{} is not calibrated: run `{RANGES_COMMAND}` first, or pass --data DATA",
            bundle.dir().display()
        );
    };
    let path = bundle.dir().join(calibration.ranges.path);
    bundle
        .verify_data(&calibration.ranges)
        .with_context(|| format!("checking {} against the manifest", path.display()))?;
    let ranges: RangesFile = serde_json::from_slice(
        &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a ranges file", path.display()))?;
    if ranges.format != tailor_calibration::ranges::FORMAT {
        bail!(
            "{} is in ranges format {}, this build reads {}: run `{RANGES_COMMAND}` again",
            path.display(),
            ranges.format,
            tailor_calibration::ranges::FORMAT
        );
    }
    if ranges.dataset_sha256 != calibration.dataset_sha256 {
        bail!(
            "{} was recorded on another dataset (sha256 {}) than the bundle's calibration \
             states ({}): run `{RANGES_COMMAND}` with that dataset again, or pass --data DATA",
            path.display(),
            ranges.dataset_sha256.short(),
            calibration.dataset_sha256.short()
        );
    }
    Ok(ranges)
}

/// Ranges of every inner activation over `data`, recorded in tract.
fn record_ranges(bundle: &Bundle, data: &std::path::Path) -> Result<RangesFile> {
    let dataset = Dataset::load(
        data,
        LoadOptions {
            labels: false,
            seed: 0,
            limit: None,
        },
    )
    .with_context(|| format!("reading the dataset {}", data.display()))?;
    let options = Options {
        engine: EngineKind::Tract,
        engine_options: EngineOptions::default(),
        keep_features: false,
        ranges: Scope::Inner,
    };
    let calibrated = tailor_calibration::score(bundle, &dataset, &options, &mut |_| {})
        .with_context(|| format!("recording ranges on {}", data.display()))?;
    calibrated.ranges.context("calibration recorded no ranges")
}
