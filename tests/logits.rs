//! A task head appended to exported graphs (`exporter::onnx::head`): the
//! graphs pass onnx's full check, keep their shared weight file, and compute
//! `logits = cls_token·Aᵀ + c` in tract and ONNX Runtime (python's
//! onnxruntime), while the runtime's engines still load them unchanged.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::assert_close;
use ndarray::{Array1, Array2, Array4, ArrayD, Ix2};
use protobuf::Message;
use tailor::calibration::head::Affine;
use tailor::exporter::onnx::head::{add_logits, HeadGraphError, LOGITS};
use tailor::runtime::engine::{self, EngineKind, EngineOptions};
use tailor::runtime::fs::sha256_file;
use tract_onnx::prelude::*;

const IDS: [&str; 3] = ["w32-d2", "w32-d3", "w32-d4"];
const CLASSES: usize = 5;

fn fixture_graphs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime/tests/fixtures/bundle-tiny/graphs")
}

/// The tiny bundle's graphs and weight file, copied to a temporary directory.
fn copy_graphs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let graphs = dir.path().join("graphs");
    fs::create_dir_all(graphs.join("weights")).unwrap();
    for id in IDS {
        let name = format!("{id}.onnx");
        fs::copy(fixture_graphs().join(&name), graphs.join(&name)).unwrap();
    }
    fs::copy(
        fixture_graphs().join("weights/w32.bin"),
        graphs.join("weights/w32.bin"),
    )
    .unwrap();
    (dir, graphs)
}

/// A head `[CLASSES, w]` with distinct, sign-mixed values.
fn head(w: usize, seed: f64) -> Affine {
    let weight = Array2::from_shape_fn((CLASSES, w), |(i, j)| {
        ((i * w + j) as f64 * 0.7 + seed).sin()
    });
    let bias = Array1::from_shape_fn(CLASSES, |i| i as f64 - 2.0 + seed);
    Affine::new(weight, bias).unwrap()
}

fn pixels(batch: usize) -> Array4<f32> {
    Array4::from_shape_fn((batch, 3, 32, 32), |(b, c, y, x)| {
        (((b * 3 + c) * 1024 + y * 32 + x) as f32 * 0.013).sin()
    })
}

/// `cls_token·Aᵀ + c` in f64, as f32.
fn expected_logits(cls: &ArrayD<f32>, head: &Affine) -> ArrayD<f32> {
    let cls = cls.clone().into_dimensionality::<Ix2>().unwrap();
    head.apply(cls.view())
        .unwrap()
        .mapv(|v| v as f32)
        .into_dyn()
}

/// Every output of `graph` on `input`, by name, run by tract.
fn run_tract(graph: &Path, input: &Array4<f32>) -> Vec<(String, ArrayD<f32>)> {
    let model = tract_onnx::onnx()
        .model_for_path(graph)
        .unwrap()
        .with_input_fact(0, f32::fact(input.shape()).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let names: Vec<String> = model
        .model()
        .outputs
        .iter()
        .map(|o| {
            model
                .model()
                .outlet_label(*o)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let outputs = model
        .run(tvec!(input.clone().into_tensor().into()))
        .unwrap();
    names
        .into_iter()
        .zip(outputs)
        .map(|(n, t)| (n, t.to_plain_array_view::<f32>().unwrap().to_owned()))
        .collect()
}

fn output<'a>(outputs: &'a [(String, ArrayD<f32>)], name: &str) -> &'a ArrayD<f32> {
    &outputs.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn tract_computes_the_head_on_cls_token_and_leaves_the_other_outputs() {
    let (_dir, graphs) = copy_graphs();
    let input = pixels(2);
    let head = head(32, 0.0);
    for id in IDS {
        let path = graphs.join(format!("{id}.onnx"));
        let sha = add_logits(&path, &head).unwrap();
        assert_eq!(sha, sha256_file(&path).unwrap(), "{id}: returned hash");

        let before = run_tract(&fixture_graphs().join(format!("{id}.onnx")), &input);
        let after = run_tract(&path, &input);
        let names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["cls_token", "patch_tokens", LOGITS], "{id}");
        for name in ["cls_token", "patch_tokens"] {
            assert_eq!(output(&after, name), output(&before, name), "{id} {name}");
        }
        let logits = output(&after, LOGITS);
        assert_eq!(logits.shape(), [2, CLASSES]);
        let expected = expected_logits(output(&after, "cls_token"), &head);
        assert_close(logits, &expected, &format!("tract {id} logits"));
    }
}

#[test]
fn graphs_with_a_head_pass_the_checker_and_run_in_onnx_runtime() {
    let (_dir, graphs) = copy_graphs();
    let head = head(32, 0.5);
    for id in IDS {
        add_logits(&graphs.join(format!("{id}.onnx")), &head).unwrap();
    }
    // Python's onnxruntime runs each graph on its own input and prints the
    // outputs; the logits are checked here against its cls_token.
    let script = "import glob, json, sys, numpy as np, onnx, onnxruntime as ort\n\
                  out = {}\n\
                  x = np.sin(np.arange(2 * 3 * 32 * 32, dtype=np.float32) * 0.029).reshape(2, 3, 32, 32)\n\
                  for p in sorted(glob.glob(sys.argv[1] + '/*.onnx')):\n    \
                      onnx.checker.check_model(p, full_check=True)\n    \
                      s = ort.InferenceSession(p, providers=['CPUExecutionProvider'])\n    \
                      cls, logits = s.run(['cls_token', 'logits'], {'pixel_values': x})\n    \
                      out[p] = {'cls_token': cls.tolist(), 'logits': logits.tolist()}\n\
                  print(json.dumps(out))";
    let run = Command::new("python3")
        .args(["-c", script, graphs.to_str().unwrap()])
        .output()
        .expect(
            "python3 with onnx and onnxruntime is needed for this test (.ci/run installs them)",
        );
    assert!(
        run.status.success(),
        "checker or onnxruntime failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let graphs_run = json.as_object().unwrap();
    assert_eq!(graphs_run.len(), IDS.len());
    for (path, out) in graphs_run {
        let array = |key: &str| {
            let rows: Vec<Vec<f32>> = serde_json::from_value(out[key].clone()).unwrap();
            let cols = rows[0].len();
            Array2::from_shape_vec((rows.len(), cols), rows.concat())
                .unwrap()
                .into_dyn()
        };
        let logits = array("logits");
        assert_eq!(logits.shape(), [2, CLASSES], "{path}");
        let expected = expected_logits(&array("cls_token"), &head);
        assert_close(&logits, &expected, &format!("onnxruntime {path} logits"));
    }
}

#[test]
fn the_weight_file_stays_shared_and_the_runtime_still_loads_the_graphs() {
    let (_dir, graphs) = copy_graphs();
    let weights = fs::read(graphs.join("weights/w32.bin")).unwrap();
    let input = pixels(1);
    let mut engines = vec![EngineKind::Tract];
    if cfg!(feature = "ort") {
        engines.push(EngineKind::Ort);
    }
    for id in IDS {
        let path = graphs.join(format!("{id}.onnx"));
        let original =
            onnx_protobuf::ModelProto::parse_from_bytes(&fs::read(&path).unwrap()).unwrap();
        add_logits(&path, &head(32, 1.0)).unwrap();
        let model = onnx_protobuf::ModelProto::parse_from_bytes(&fs::read(&path).unwrap()).unwrap();
        // Every original initializer is still there, byte for byte, external
        // references included; the head's two are inline.
        let graph = model.graph.as_ref().unwrap();
        assert_eq!(
            graph.initializer[..original.graph.initializer.len()],
            original.graph.initializer[..],
            "{id}"
        );
        let added: Vec<_> = graph.initializer[original.graph.initializer.len()..]
            .iter()
            .map(|t| (t.name.as_str(), t.external_data.is_empty()))
            .collect();
        assert_eq!(added, [("logits.weight", true), ("logits.bias", true)]);

        let mut logits = Vec::new();
        for &kind in &engines {
            let mut session = engine::load(kind, &path, &EngineOptions::default()).unwrap();
            let mut reference = engine::load(
                kind,
                &fixture_graphs().join(format!("{id}.onnx")),
                &EngineOptions::default(),
            )
            .unwrap();
            let ours = session.run(input.view()).unwrap();
            let theirs = reference.run(input.view()).unwrap();
            assert_eq!(ours.cls_token, theirs.cls_token, "{kind} {id}");
            assert_eq!(ours.patch_tokens, theirs.patch_tokens, "{kind} {id}");
            assert_eq!(theirs.logits, None, "{kind} {id}: a graph without a head");
            let ours_logits = ours.logits.clone().expect("the head's output").into_dyn();
            let expected = expected_logits(&ours.cls_token.clone().into_dyn(), &head(32, 1.0));
            assert_close(&ours_logits, &expected, &format!("{kind} {id} logits"));
            logits.push(ours_logits);
        }
        // Both engines give the same logits.
        if let [tract, ort] = &logits[..] {
            assert_close(ort, tract, &format!("{id}: ort against tract"));
        }
    }
    assert_eq!(fs::read(graphs.join("weights/w32.bin")).unwrap(), weights);
}

#[test]
fn a_second_head_replaces_the_first() {
    let (_dir, graphs) = copy_graphs();
    let path = graphs.join("w32-d2.onnx");
    add_logits(&path, &head(32, 0.0)).unwrap();
    let second = head(32, 2.0);
    add_logits(&path, &second).unwrap();
    let model = onnx_protobuf::ModelProto::parse_from_bytes(&fs::read(&path).unwrap()).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let count = |names: Vec<&str>| names.iter().filter(|n| n.starts_with(LOGITS)).count();
    assert_eq!(
        count(graph.output.iter().map(|o| o.name.as_str()).collect()),
        1
    );
    assert_eq!(
        count(graph.node.iter().map(|n| n.name.as_str()).collect()),
        1
    );
    assert_eq!(
        count(graph.initializer.iter().map(|t| t.name.as_str()).collect()),
        2
    );
    let out = run_tract(&path, &pixels(1));
    let expected = expected_logits(output(&out, "cls_token"), &second);
    assert_close(output(&out, LOGITS), &expected, "second head");
}

#[test]
fn a_head_of_another_width_is_refused_and_the_graph_left_alone() {
    let (_dir, graphs) = copy_graphs();
    let path = graphs.join("w32-d3.onnx");
    let before = fs::read(&path).unwrap();
    let err = add_logits(&path, &head(48, 0.0)).unwrap_err();
    assert!(matches!(err, HeadGraphError::Interface { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("w32-d3.onnx") && message.contains("32 wide") && message.contains("48"),
        "{message}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);
    let not_onnx = graphs.join("weights/w32.bin");
    assert!(matches!(
        add_logits(&not_onnx, &head(32, 0.0)),
        Err(HeadGraphError::Decode { .. } | HeadGraphError::Interface { .. })
    ));
}
