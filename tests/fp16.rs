//! FP16 variants (`tailor_exporter::quant::fp16_width`): one float16 weight
//! file per width shared by its depths, graphs whose products compute in
//! float16 while LayerNorm, Softmax and the normalisations' statistics stay
//! float32, run in tract and ONNX Runtime close to their fp32 graph.
//!
//! The tolerance on outputs. Float16 keeps 11 significant bits: each
//! rounding (a weight stored, a product's output) moves a value by at most
//! 2⁻¹¹ ≈ 4.9e-4 relative, rms about 2.8e-4. A graph rounds at each of
//! its L ≈ 20..60 float16 operators; independent roundings add in
//! quadrature, so the outputs' rms error against fp32 is about
//! 2.8e-4 · √L ≤ 2.2e-3 with a conditioning factor of a few:
//! rms(fp16 − fp32) ≤ 1e-2 · rms(fp32). A node left float16 where it
//! overflows gives infinities or NaN; the wrong weights, errors of order 1.
//! At least 1e-5 (the engines' own fp32 differences are ~1e-6): the graph
//! really computes in float16.

mod common;
mod variants;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{export, fixture, request, subnets};
use onnx_protobuf::ModelProto;
use protobuf::Message;
use serde_json::Value;
use tailor::exporter::plan::Request;
use tailor::exporter::quant::{self, QuantError};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::EngineKind;
use variants::{
    assert_onnx_checker_passes, by_weight_file, cls_token, digits, places, rms, vit_s16,
    write_width, Written,
};

const VIT: &str = "examples/poa-vit-tiny/eval/training_799/teacher_checkpoint.pth";
const SWIN: &str = "tests/fixtures/swin-tiny/output/eval/training_49/teacher_checkpoint.pth";
const RESNET: &str = "tests/fixtures/resnet-tiny/output/eval/training_49/teacher_checkpoint.pth";
const SDR: &str = "examples/sdr-tiny/sdr.safetensors";
/// The derived bound above.
const TOLERANCE: f64 = 1e-2;

/// Every width of the bundle at `dir` in fp16, written beside the fp32
/// graphs as `<id>.fp16.onnx` with the width's fp16 weight file.
fn fp16_bundle(dir: &Path) -> Result<Vec<Written>, QuantError> {
    let bundle = Bundle::open(dir).unwrap();
    let manifest = bundle.manifest();
    let graphs = dir.join("graphs");
    let mut widths = Vec::new();
    for (file, ids) in by_weight_file(&manifest) {
        let models: Vec<ModelProto> = ids
            .iter()
            .map(|id| {
                let bytes = fs::read(graphs.join(format!("{id}.onnx"))).unwrap();
                ModelProto::parse_from_bytes(&bytes).unwrap()
            })
            .collect();
        let subnets: Vec<(&str, &ModelProto)> = ids.iter().copied().zip(&models).collect();
        let location = file.strip_prefix("graphs/").unwrap();
        let fp32 = fs::read(dir.join(file)).unwrap();
        let width = quant::fp16_width(&fp32, location, &subnets)?;
        assert_eq!(width.location, quant::fp16_location(location));
        widths.push(write_width(&graphs, &ids, fp32.len(), &width, "fp16"));
    }
    Ok(widths)
}

/// Each node's op and its inputs' types, as ONNX's shape inference sees them.
fn types(graph: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .arg(fixture("tools/quant_reference.py"))
        .arg("types")
        .arg(graph)
        .output()
        .expect("python3 with the onnx package is needed for this test (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// LayerNorm, Softmax and reductions read float32; products and
/// activations float16; the graph's inputs and outputs stay float32.
fn assert_forms(graph: &Path) {
    let nodes = types(graph);
    let (mut single, mut half) = (0, 0);
    for n in &nodes {
        let op = n["op"].as_str().unwrap();
        let first = &n["inputs"][0];
        match op {
            "LayerNormalization" | "Softmax" | "ReduceMean" => {
                assert_eq!(first, "FLOAT", "{}: {n}", graph.display());
                single += 1;
            }
            "Gemm" | "MatMul" | "Conv" | "Erf" | "Relu" => {
                assert_eq!(first, "FLOAT16", "{}: {n}", graph.display());
                half += 1;
            }
            _ => {}
        }
    }
    assert!(single > 0 && half > 0, "{}: {nodes:?}", graph.display());
    let model = ModelProto::parse_from_bytes(&fs::read(graph).unwrap()).unwrap();
    for v in model.graph.input.iter().chain(&model.graph.output) {
        let elem = v.type_.tensor_type().elem_type;
        assert_eq!(elem, 1, "{}: {} is not float32", graph.display(), v.name);
    }
}

/// Two depths of one width: one fp16 file of at most 0.52x the fp32 one,
/// read by both at the same places; the checker passes; the forms are
/// right; outputs within [`TOLERANCE`] of fp32 in `engines`.
fn family_in_fp16(teacher: &str, ids: &[&str], engines: &[EngineKind]) {
    let (_dir, bundle) = export(&Request {
        selection: subnets(ids),
        ..request(teacher)
    });
    let widths = fp16_bundle(&bundle).unwrap();
    assert_eq!(widths.len(), 1, "{teacher}: one width");
    let w = &widths[0];
    let ratio = w.variant_bytes as f64 / w.fp32_bytes as f64;
    // Below 0.5 when the graphs read only part of the fp32 file (SDR paths).
    assert!(
        ratio <= 0.52,
        "{teacher}: fp16 file {ratio:.4}x the fp32 one"
    );
    let (small, large) = (places(&w.graphs[0].1), places(&w.graphs[1].1));
    let shared = small
        .iter()
        .filter(|(name, place)| large.get(*name) == Some(place))
        .count();
    assert!(shared > 0, "{teacher}: no tensor shared");
    for place in small.values().chain(large.values()) {
        assert!(place.contains(".fp16.bin "), "{teacher}: {place}");
    }
    assert_onnx_checker_passes(w.graphs.iter().map(|(_, p)| p));
    let side = Bundle::open(&bundle)
        .unwrap()
        .manifest()
        .teacher
        .config
        .image_size();
    let pixels = digits(&[992, 993, 994, 995], side as usize);
    for (fp32, fp16) in &w.graphs {
        assert_forms(fp16);
        for &kind in engines {
            let reference = cls_token(kind, fp32, &pixels);
            let ours = cls_token(kind, fp16, &pixels);
            assert!(
                ours.iter().all(|v| v.is_finite()),
                "{kind} {}",
                fp16.display()
            );
            let error = rms(&(&ours - &reference)) / rms(&reference);
            eprintln!(
                "{kind} {}: fp16 file {ratio:.4}x, output error {error:.2e}",
                fp16.display()
            );
            assert!(
                (1e-5..=TOLERANCE).contains(&error),
                "{kind} {}: fp16 off fp32 by {error:.3e} (rms, relative)",
                fp16.display()
            );
        }
    }
}

fn engines() -> Vec<EngineKind> {
    let mut engines = vec![EngineKind::Tract];
    if cfg!(feature = "ort") {
        engines.push(EngineKind::Ort);
    }
    engines
}

#[test]
fn vit_runs_in_fp16_close_to_fp32_in_both_engines() {
    family_in_fp16(VIT, &["48x3", "48x6"], &engines());
}

#[test]
fn swin_runs_in_fp16_close_to_fp32_in_both_engines() {
    family_in_fp16(SWIN, &["4x2.2.2.2", "4x2.2.5.2"], &engines());
}

#[test]
fn resnet_runs_in_fp16_with_its_groupnorm_statistics_in_fp32() {
    family_in_fp16(RESNET, &["4x1.1.2.1", "4x2.3.4.1"], &engines());
}

#[test]
fn sdr_paths_run_in_fp16_their_weight_pieces_joined_in_fp16() {
    // Unlike int8, fp16 needs no per-channel weights: the pieces are
    // converted alone and Concat joins them in float16.
    family_in_fp16(SDR, &["r0.0.0.0", "r1.1.1.1"], &engines());
}

/// The size target at a realistic width: ViT-S/16's fp16 file is
/// at most 0.52x its fp32 one.
#[test]
fn a_vit_s16_width_is_at_most_0_52_of_its_fp32_bytes_in_fp16() {
    let (_dir, bundle) = vit_s16(&["384x6", "384x12"]);
    let widths = fp16_bundle(&bundle).unwrap();
    let w = &widths[0];
    let ratio = w.variant_bytes as f64 / w.fp32_bytes as f64;
    eprintln!(
        "ViT-S/16 w384: {} fp16 / {} fp32 bytes = {ratio:.4}",
        w.variant_bytes, w.fp32_bytes
    );
    assert!(ratio <= 0.52, "{ratio:.4}");
    assert_onnx_checker_passes(w.graphs.iter().map(|(_, p)| p));
}
