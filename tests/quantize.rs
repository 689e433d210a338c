//! INT8 QDQ variants (`tailor_exporter::quant`) against ONNX Runtime's own
//! quantiser: tools/quant_reference.py ran `quantize_static` (QDQ, weights
//! symmetric int8 per channel, activations per tensor, MinMax over the first
//! 64 images of examples/mnist-calib.npz) on the trained example's w48-d3
//! and wrote its scales, its weights' hashes and its `cls_token` on the last
//! 8 digits (tests/fixtures/quant-golden.json). Here the same graph is
//! quantised from the ranges `calibrate --ranges inner` records (tract, same
//! images) and run on the same digits in tract and ONNX Runtime.
//!
//! Which reference output each engine is held to. ONNX Runtime fuses each
//! DQ → Gemm/Conv → Q group into an integer kernel (QGemm, QLinearConv)
//! whose arithmetic is its own: the float bias rounded to int32 at the
//! product's scale, the requantisation in its fixed form. That moves a
//! requantised value by up to half a step of the bias's scale, and flips
//! its rounding where it lies that close to a boundary: on this graph the
//! fused outputs differ from the graph's written meaning (every Q, DQ and
//! float product as written, ONNX Runtime with its optimisations off) by
//! 0.19 (u8) to 0.24 (s8) of the int8 error itself. Both are in the golden
//! file: our graph in ONNX Runtime is held to the reference as ONNX Runtime
//! runs it (`cls_token`, the same fusions of the same graph form), in
//! tract, which runs QDQ as written, to the reference run as written
//! (`cls_token_unfused`).
//!
//! The tolerance on outputs. Both quantisers compute the same scales
//! (checked first, to 1e-5: the ranges differ only by each engine's fp32
//! rounding), so their graphs differ only where a value lies within that
//! rounding of a quantisation boundary and the two round it to neighbouring
//! integers: a 1-LSB difference in a fraction f of some tensor's elements.
//! Quantisation itself moves every element by a uniform error of rms
//! s/√12; a 1-LSB flip moves one element by s. Propagated through the same
//! network, the difference between the two int8 graphs is then about
//! √(12 f) times the int8 graph's own error against fp32. A flip needs a
//! value within the engines' relative fp32 difference (~1e-6) of a boundary:
//! f ≈ 2e-6 · |x|/s ≤ 2e-6 · 255 ≈ 5e-4. With f ≤ 1e-3 the bound is
//! rms(ours − reference) ≤ 0.11 · rms(reference − fp32) (measured: ~1e-5).
//! A wrong axis, zero point or scale, or a tensor left unquantised, adds an
//! error of the order of one tensor's quantisation error: beyond the bound.

mod common;
mod variants;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{export, fixture, request, subnets};
use ndarray::Array2;
use onnx_protobuf::ModelProto;
use protobuf::Message;
use serde_json::Value;
use tailor::calibration::dataset::{Dataset, LoadOptions};
use tailor::calibration::features::extract;
use tailor::calibration::ranges::inner::inner_tensors;
use tailor::calibration::ranges::{Range, Scope};
use tailor::calibration::{self, Options};
use tailor::exporter::plan::Request;
use tailor::exporter::quant::{self, Calibrator, Encoding, QuantError, Subnet};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::{EngineKind, EngineOptions};
use tailor::runtime::fs::sha256_file;
use tract_onnx::prelude::Framework;
use variants::{
    assert_onnx_checker_passes, by_weight_file, cls_token, digits, places, rms, write_width,
    Written, DATA,
};

const TEACHER: &str = "examples/poa-vit-tiny/eval/training_799/teacher_checkpoint.pth";
const GOLDEN: &str = "tests/fixtures/quant-golden.json";
const ID: &str = "w48-d3";
const FP32: &str = "weights/w48.bin";
/// The derived bound above.
const FLIP_BOUND: f64 = 0.11;

/// The reference's variants this test reproduces.
const VARIANTS: [(&str, Encoding); 2] = [("minmax-s8", Encoding::S8), ("minmax-u8", Encoding::U8)];

fn golden() -> Value {
    serde_json::from_slice(&fs::read(fixture(GOLDEN)).unwrap()).unwrap()
}

/// The example's w48-d3 exported, checked to be the graph the script
/// quantised; returns the temporary directory and the graphs directory.
fn exported(golden: &Value) -> (tempfile::TempDir, PathBuf) {
    let (dir, bundle) = export(&Request {
        selection: subnets(&["48x3"]),
        ..request(TEACHER)
    });
    let graphs = bundle.join("graphs");
    let mut files = vec![(&golden["graph_sha256"], graphs.join(format!("{ID}.onnx")))];
    files.push((&golden["weights_sha256"][FP32], graphs.join(FP32)));
    for (want, path) in files {
        assert_eq!(
            want.as_str(),
            Some(sha256_file(&path).unwrap().to_string().as_str()),
            "the exporter writes another {}: regenerate {GOLDEN} (tools/quant_reference.py)",
            path.display()
        );
    }
    (dir, graphs)
}

/// The ranges `calibrate --ranges inner` records over the script's
/// calibration images (the dataset's first ones).
fn ranges(graph: &Path, images: usize) -> BTreeMap<String, Range> {
    let options = LoadOptions {
        labels: false,
        seed: 0,
        limit: Some(images),
    };
    let dataset = Dataset::load(&fixture(DATA), options).unwrap();
    let opts = EngineOptions {
        batch: 8,
        ..EngineOptions::default()
    };
    let features = extract(
        graph,
        &dataset,
        EngineKind::Tract,
        &opts,
        Scope::Inner,
        &mut |_| {},
    );
    features.unwrap().ranges.unwrap()
}

fn matrix(value: &Value) -> Array2<f32> {
    let rows: Vec<Vec<f32>> = serde_json::from_value(value.clone()).unwrap();
    Array2::from_shape_vec((rows.len(), rows[0].len()), rows.concat()).unwrap()
}

/// Our int8 graphs of w48-d3, one per reference variant, written beside
/// the fp32 one with the width's int8 weight file.
struct Quantized {
    _dir: tempfile::TempDir,
    graphs: PathBuf,
    /// Variant name, graph path.
    variants: Vec<(&'static str, PathBuf)>,
}

fn quantized(golden: &Value) -> Quantized {
    let (dir, graphs) = exported(golden);
    let fp32_graph = graphs.join(format!("{ID}.onnx"));
    let images = golden["calibration_images"].as_u64().unwrap() as usize;
    let ranges = ranges(&fp32_graph, images);
    let model = ModelProto::parse_from_bytes(&fs::read(&fp32_graph).unwrap()).unwrap();
    let fp32 = fs::read(graphs.join(FP32)).unwrap();
    let subnet = Subnet {
        id: ID,
        model: &model,
        ranges: &ranges,
        samples: None,
    };
    let mut variants = Vec::new();
    let mut int8_file = None;
    for (name, encoding) in VARIANTS {
        let width =
            quant::quantize_width(&fp32, FP32, &[subnet], Calibrator::MinMax, encoding).unwrap();
        // The weights do not depend on the activations' encoding.
        assert_eq!(
            *int8_file.get_or_insert_with(|| width.bytes.clone()),
            width.bytes
        );
        fs::write(graphs.join(&width.location), &width.bytes).unwrap();
        let path = graphs.join(format!("{ID}.{name}.onnx"));
        fs::write(&path, width.graphs[0].write_to_bytes().unwrap()).unwrap();
        variants.push((name, path));
    }
    Quantized {
        _dir: dir,
        graphs,
        variants,
    }
}

/// Initializer `name` of `model`: its inline floats, or its external bytes.
fn initializer<'m>(model: &'m ModelProto, name: &str) -> &'m onnx_protobuf::TensorProto {
    let graph = model.graph.as_ref().unwrap();
    graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no initializer `{name}`"))
}

fn external_bytes(graphs: &Path, t: &onnx_protobuf::TensorProto) -> Vec<u8> {
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.clone())
            .unwrap()
    };
    let file = fs::read(graphs.join(entry("location"))).unwrap();
    let offset: usize = entry("offset").parse().unwrap();
    let length: usize = entry("length").parse().unwrap();
    file[offset..offset + length].to_vec()
}

#[test]
fn scales_and_weights_are_onnx_runtimes() {
    let golden = golden();
    let q = quantized(&golden);
    let digest_dir = tempfile::tempdir().unwrap();
    for (name, path) in &q.variants {
        let model = ModelProto::parse_from_bytes(&fs::read(path).unwrap()).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let ours: BTreeMap<&str, &onnx_protobuf::NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear")
            .map(|n| (n.input[0].as_str(), n))
            .collect();
        let theirs = golden["variants"][name]["activations"].as_object().unwrap();
        // The same activations quantised: every MatMul/Gemm/Conv input.
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>(),
            "{name}"
        );
        for (tensor, node) in &ours {
            let scale = initializer(&model, &node.input[1]).float_data[0];
            let zero_point = initializer(&model, &node.input[2]).int32_data[0];
            let want = &theirs[*tensor];
            let want_scale = want["scale"].as_f64().unwrap();
            assert!(
                (f64::from(scale) / want_scale - 1.0).abs() < 1e-5,
                "{name} {tensor}: scale {scale} against onnxruntime's {want_scale}"
            );
            assert_eq!(
                i64::from(zero_point),
                want["zero_point"].as_i64().unwrap(),
                "{name} {tensor}"
            );
        }
        // Weights: the same int8 values and scales, bit for bit.
        for (weight, want) in golden["weights"].as_object().unwrap() {
            for (suffix, key) in [("quantized", "sha256"), ("scale", "scales_sha256")] {
                let t = initializer(&model, &format!("{weight}.{suffix}"));
                let file = digest_dir.path().join(suffix);
                fs::write(&file, external_bytes(&q.graphs, t)).unwrap();
                assert_eq!(
                    Some(sha256_file(&file).unwrap().to_string().as_str()),
                    want[key].as_str(),
                    "{name} {weight}.{suffix}"
                );
            }
        }
    }
}

/// Our int8 graph's `cls_token` in `kind` against the reference's as
/// that engine's arithmetic computes it (the module's comment): `output`
/// is the golden file's `cls_token` or `cls_token_unfused`.
fn outputs_match_the_reference(kind: EngineKind, output: &str) {
    let golden = golden();
    let q = quantized(&golden);
    let indices: Vec<usize> = serde_json::from_value(golden["digits"].clone()).unwrap();
    let pixels = digits(&indices, 32);
    let fp32 = matrix(&golden["fp32"]);
    // The same digits, prepared alike: the fp32 graph agrees with the script's run.
    let ours_fp32 = cls_token(kind, &q.graphs.join(format!("{ID}.onnx")), &pixels);
    assert!(
        rms(&(&ours_fp32 - &fp32)) < 1e-4 * rms(&fp32),
        "{kind}: fp32 outputs differ"
    );
    for (name, path) in &q.variants {
        let reference = matrix(&golden["variants"][name][output]);
        let ours = cls_token(kind, path, &pixels);
        let noise = rms(&(&reference - &fp32));
        let difference = rms(&(&ours - &reference));
        eprintln!(
            "{kind} {name}: |ours - reference| {difference:.3e}, |reference - fp32| {noise:.3e}"
        );
        assert!(
            noise > 1e-3 * rms(&fp32),
            "{name}: the reference is not quantised"
        );
        assert!(
            difference <= FLIP_BOUND * noise,
            "{kind} {name}: rms(ours - reference) {difference:.3e} > {FLIP_BOUND} x rms(reference - fp32) {noise:.3e}"
        );
    }
}

#[test]
fn outputs_match_the_reference_in_tract() {
    outputs_match_the_reference(EngineKind::Tract, "cls_token_unfused");
}

#[cfg(feature = "ort")]
#[test]
fn outputs_match_the_reference_in_onnx_runtime() {
    outputs_match_the_reference(EngineKind::Ort, "cls_token");
}

#[test]
fn int8_graphs_pass_the_onnx_checker() {
    let q = quantized(&golden());
    assert_onnx_checker_passes(q.variants.iter().map(|(_, p)| p));
}

/// Quantises the bundle at `dir` width by width (the manifest groups the
/// graphs by weight file) from inner ranges recorded on 8 digits, writing
/// each width's int8 file and `<id>.int8.onnx`.
fn quantize_bundle(dir: &Path) -> Result<Vec<Written>, QuantError> {
    let bundle = Bundle::open(dir).unwrap();
    let manifest = bundle.manifest();
    let options = LoadOptions {
        labels: false,
        seed: 0,
        limit: Some(8),
    };
    let dataset = Dataset::load(&fixture(DATA), options).unwrap();
    let mut opts = Options {
        ranges: Scope::Inner,
        ..Options::default()
    };
    opts.engine_options.batch = 8;
    let by_file = by_weight_file(&manifest);
    let graphs = dir.join("graphs");
    let read = |id: &str| {
        let path = graphs.join(format!("{id}.onnx"));
        ModelProto::parse_from_bytes(&fs::read(path).unwrap()).unwrap()
    };
    // Families the rewrite refuses say so before any data runs.
    for s in &manifest.subnets {
        let location = s.weights[0].path.strip_prefix("graphs/").unwrap();
        quant::check(s.id, &read(s.id), location)?;
    }
    let ranges = calibration::score(&bundle, &dataset, &opts, &mut |_| {})
        .unwrap()
        .ranges
        .unwrap()
        .subnets;
    let mut widths = Vec::new();
    for (file, ids) in by_file {
        let models: Vec<_> = ids.iter().map(|id| read(id)).collect();
        let subnets: Vec<_> = ids
            .iter()
            .zip(&models)
            .map(|(id, model)| Subnet {
                id,
                model,
                ranges: &ranges[*id],
                samples: None,
            })
            .collect();
        let location = file.strip_prefix("graphs/").unwrap();
        let fp32 = fs::read(dir.join(file)).unwrap();
        let width =
            quant::quantize_width(&fp32, location, &subnets, Calibrator::MinMax, Encoding::U8)?;
        widths.push(write_width(&graphs, &ids, fp32.len(), &width, "int8"));
    }
    Ok(widths)
}

/// Two depths of one width each: both int8 graphs read one int8 file,
/// pass the checker, and run in tract close to their fp32 graph.
fn family_quantizes(teacher: &str, ids: &[&str]) {
    let (_dir, bundle) = export(&Request {
        selection: subnets(ids),
        ..request(teacher)
    });
    let widths = quantize_bundle(&bundle).unwrap();
    assert_eq!(widths.len(), 1, "{teacher}: one width");
    let Written {
        fp32_bytes,
        variant_bytes: int8_bytes,
        graphs,
    } = &widths[0];
    assert_eq!(graphs.len(), 2);
    // Weights a quarter, plus scales and the float tensors.
    let ratio = *int8_bytes as f64 / *fp32_bytes as f64;
    assert!(
        (0.25..0.40).contains(&ratio),
        "{teacher}: int8 file {ratio:.3}x the fp32 one"
    );
    let (small, large) = (places(&graphs[0].1), places(&graphs[1].1));
    // The deeper graph reads every tensor the shallower one reads by name
    // (the stem, the first blocks, the final norm) at the same place.
    let shared = small
        .iter()
        .filter(|(name, place)| large.get(*name) == Some(place))
        .count();
    assert!(shared > 0, "{teacher}: no tensor shared");
    for place in small.values().chain(large.values()) {
        assert!(place.contains(".int8.bin"), "{teacher}: {place}");
    }
    let side = Bundle::open(&bundle)
        .unwrap()
        .manifest()
        .teacher
        .config
        .image_size();
    let pixels = digits(&[992, 993, 994, 995], side as usize);
    for (fp32, int8) in graphs {
        let reference = cls_token(EngineKind::Tract, fp32, &pixels);
        let ours = cls_token(EngineKind::Tract, int8, &pixels);
        let error = rms(&(&ours - &reference)) / rms(&reference);
        eprintln!(
            "{}: int8 file {ratio:.3}x, output error {error:.4}",
            int8.display()
        );
        assert!(
            error < 0.2,
            "{}: int8 off fp32 by {error:.3} (rms, relative)",
            int8.display()
        );
        assert!(error > 0.0, "{}: not quantised", int8.display());
    }
    assert_onnx_checker_passes(graphs.iter().map(|(_, p)| p));
}

#[test]
fn vit_widths_quantise_once_for_every_depth() {
    family_quantizes(TEACHER, &["48x3", "48x6"]);
}

#[test]
fn resnet_widths_quantise_once_for_every_depth() {
    family_quantizes(
        "tests/fixtures/resnet-tiny/output/eval/training_49/teacher_checkpoint.pth",
        &["4x1.1.2.1", "4x2.3.4.1"],
    );
}

#[test]
fn swin_widths_quantise_once_for_every_depth() {
    family_quantizes(
        "tests/fixtures/swin-tiny/output/eval/training_49/teacher_checkpoint.pth",
        &["4x2.2.2.2", "4x2.2.5.2"],
    );
}

#[test]
fn sdr_paths_are_refused_naming_the_family() {
    let (_dir, bundle) = export(&request("examples/sdr-tiny/sdr.safetensors"));
    let e = quantize_bundle(&bundle).unwrap_err();
    assert!(matches!(e, QuantError::ComputedWeight { .. }), "{e}");
    assert!(e.to_string().contains("SDR"), "{e}");
}

/// The size target, at a realistic width: ViT-S/16's (D = 384, 12
/// blocks, head_dim 64, 224², random weights) int8 file is at most 0.27×
/// its fp32 one. Per-channel scales weigh 4/fan-in of the int8 weights, so
/// the example's widths (48..96) come out above it (docs/precision.md).
#[test]
fn a_vit_s16_width_is_at_most_0_27_of_its_fp32_bytes() {
    let (_dir, out) = variants::vit_s16(&["384x12"]);
    let graph = out.join("graphs/w384-d12.onnx");
    // Sizes do not depend on the ranges: any will do.
    let proto = tract_onnx::onnx().proto_model_for_path(&graph).unwrap();
    let unit = Range {
        min: -1.0,
        max: 1.0,
        abs_percentile: 1.0,
    };
    let ranges: BTreeMap<String, Range> = inner_tensors(proto.graph.as_ref().unwrap())
        .into_iter()
        .chain(["pixel_values".to_owned()])
        .map(|name| (name, unit))
        .collect();
    let model = ModelProto::parse_from_bytes(&fs::read(&graph).unwrap()).unwrap();
    let fp32 = fs::read(out.join("graphs/weights/w384.bin")).unwrap();
    let subnet = Subnet {
        id: "w384-d12",
        model: &model,
        ranges: &ranges,
        samples: None,
    };
    let int8 = quant::quantize_width(
        &fp32,
        "weights/w384.bin",
        &[subnet],
        Calibrator::MinMax,
        Encoding::S8,
    )
    .unwrap();
    let ratio = int8.bytes.len() as f64 / fp32.len() as f64;
    eprintln!(
        "ViT-S/16 w384: {} int8 bytes / {} fp32 bytes = {ratio:.4}",
        int8.bytes.len(),
        fp32.len()
    );
    assert!(ratio <= 0.27, "{ratio:.4}");
}
