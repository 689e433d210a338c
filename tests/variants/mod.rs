//! Helpers shared by the int8 and fp16 variant tests: the digits they run,
//! their outputs in either engine, `onnx.checker`, and a ViT-S/16-shaped
//! bundle.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{Array2, Array4};
use onnx_protobuf::ModelProto;
use protobuf::Message;
use tailor::calibration::dataset::{Dataset, LoadOptions};
use tailor::exporter::bundle::{self as writer, WriteOptions};
use tailor::exporter::plan::{Plan, Request};
use tailor::exporter::quant;
use tailor::exporter::synthetic;
use tailor::runtime::engine::{self, EngineKind, EngineOptions};
use tailor::runtime::manifest::Manifest;

use crate::common::{fixture, subnets};

pub const DATA: &str = "examples/mnist-calib.npz";

/// Digits of the example's dataset, prepared as the runtime prepares them.
pub fn digits(indices: &[usize], side: usize) -> Array4<f32> {
    let options = LoadOptions {
        labels: false,
        seed: 0,
        limit: None,
    };
    let dataset = Dataset::load(&fixture(DATA), options).unwrap();
    let mut pixels = Array4::zeros((indices.len(), 3, side, side));
    for (&i, out) in indices.iter().zip(pixels.outer_iter_mut()) {
        dataset.images[i].preprocess_into(out);
    }
    pixels
}

pub fn cls_token(kind: EngineKind, graph: &Path, pixels: &Array4<f32>) -> Array2<f32> {
    let opts = EngineOptions {
        batch: pixels.dim().0,
        ..EngineOptions::default()
    };
    let mut session = engine::load(kind, graph, &opts)
        .unwrap_or_else(|e| panic!("{kind} loading {}: {e:#}", graph.display()));
    session.run(pixels.view()).unwrap().cls_token
}

pub fn rms(a: &Array2<f32>) -> f64 {
    (a.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

/// `onnx.checker`'s full check of every graph in `paths`.
pub fn assert_onnx_checker_passes<'p>(paths: impl ExactSizeIterator<Item = &'p PathBuf>) {
    let count = paths.len();
    let check = Command::new("python3")
        .arg(fixture("tools/quant_reference.py"))
        .arg("check")
        .args(paths)
        .output()
        .expect("python3 with the onnx package is needed for this test (.ci/run installs it)");
    assert!(
        check.status.success(),
        "onnx.checker failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("checked {count}")
    );
}

/// A bundle of `ids` of a random ViT-S/16-shaped teacher (D = 384, 12
/// blocks, head_dim 64, 224²): the temporary directory and the bundle.
pub fn vit_s16(ids: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("vit-s16.safetensors");
    synthetic::write_vit_teacher(&teacher, &synthetic::VIT_S16, 0).unwrap();
    let request = Request {
        selection: subnets(ids),
        ..Request::all(&teacher)
    };
    let out = dir.path().join("bundle");
    let options = WriteOptions {
        force: false,
        jobs: 1,
    };
    writer::write(&Plan::new(&request).unwrap(), &out, &options, &|_| {}).unwrap();
    (dir, out)
}

/// The manifest's sub-networks by the weight file they read (relative to
/// the bundle): the widths, whose depths share one variant file.
pub fn by_weight_file<'m>(manifest: &'m Manifest<'_>) -> BTreeMap<&'m str, Vec<&'m str>> {
    let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in &manifest.subnets {
        assert_eq!(s.weights.len(), 1, "{}: one weight file per graph", s.id);
        by_file.entry(s.weights[0].path).or_default().push(s.id);
    }
    by_file
}

/// One width's variants, written beside the fp32 graphs.
#[derive(Debug)]
pub struct Written {
    pub fp32_bytes: u64,
    pub variant_bytes: u64,
    /// Each sub-network's fp32 and variant graph.
    pub graphs: Vec<(PathBuf, PathBuf)>,
}

/// Writes `width` (the variants of `ids`, whose fp32 file holds
/// `fp32_bytes`) into `graphs`: its weight file, and `<id>.<suffix>.onnx`.
pub fn write_width(
    graphs: &Path,
    ids: &[&str],
    fp32_bytes: usize,
    width: &quant::Width,
    suffix: &str,
) -> Written {
    fs::write(graphs.join(&width.location), &width.bytes).unwrap();
    let mut paths = Vec::new();
    for (id, model) in ids.iter().zip(&width.graphs) {
        let path = graphs.join(format!("{id}.{suffix}.onnx"));
        fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
        paths.push((graphs.join(format!("{id}.onnx")), path));
    }
    Written {
        fp32_bytes: fp32_bytes as u64,
        variant_bytes: width.bytes.len() as u64,
        graphs: paths,
    }
}

/// The external tensors `graph` reads: name → "location offset length".
pub fn places(graph: &Path) -> BTreeMap<String, String> {
    let model = ModelProto::parse_from_bytes(&fs::read(graph).unwrap()).unwrap();
    model
        .graph
        .initializer
        .iter()
        .filter(|t| !t.external_data.is_empty())
        .map(|t| {
            let place: Vec<&str> = t.external_data.iter().map(|e| e.value.as_str()).collect();
            (t.name.clone(), place.join(" "))
        })
        .collect()
}
