//! Inner activation ranges (`exporter calibrate --ranges inner`) against
//! `tools/ranges_reference.py`: onnxruntime, its optimisations off, runs the
//! same graph with the MatMul/Gemm/Conv activations it found by its own
//! search as outputs, on the same formula images, and computes min, max and
//! the nearest-rank 99.99th percentile of |x| in numpy
//! (tests/fixtures/ranges-golden.json).

mod common;

use std::collections::BTreeMap;

use common::{export, fixture, images, request, subnets};
use ndarray::Array4;
use serde_json::Value;
use tailor::calibration::ranges::inner::InnerSession;
use tailor::calibration::ranges::{GraphRecorder, Scope};
use tailor::calibration::{self, CalibrationError, Options};
use tailor::exporter::plan::Request;
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::{EngineError, EngineKind, EngineOptions};

const TEACHER: &str = "tests/fixtures/vit-tiny/output/eval/training_99/teacher_checkpoint.pth";
const GOLDEN: &str = "tests/fixtures/ranges-golden.json";

/// The script's images: `[n, 3, side, side]`,
/// `2.2 sin(0.7 n + 1.3 c + 0.37 y + 0.23 x + 0.05 x y)` in f64, stored f32.
fn pixels(n: usize, side: usize) -> Array4<f32> {
    Array4::from_shape_fn((n, 3, side, side), |(n, c, y, x)| {
        let (n, c, y, x) = (n as f64, c as f64, y as f64, x as f64);
        (2.2 * (0.7 * n + 1.3 * c + 0.37 * y + 0.23 * x + 0.05 * x * y).sin()) as f32
    })
}

#[test]
fn inner_ranges_match_onnxruntime_on_the_same_graph_and_images() {
    let golden: Value = serde_json::from_slice(&std::fs::read(fixture(GOLDEN)).unwrap()).unwrap();
    let (_dir, dir) = export(&Request {
        selection: subnets(&["32x2"]),
        ..request(TEACHER)
    });
    let bundle = Bundle::open(&dir).unwrap();
    let manifest = bundle.manifest();
    let subnet = manifest.subnet("w32-d2").unwrap();
    // The same graph and weights as the script ran, or the golden is stale.
    let mut files = vec![(&golden["graph_sha256"], subnet.onnx_sha256)];
    for w in &subnet.weights {
        let name = w.path.trim_start_matches("graphs/");
        files.push((&golden["weights_sha256"][name], w.sha256));
    }
    for (want, have) in files {
        assert_eq!(
            want.as_str(),
            Some(have.to_string().as_str()),
            "the exporter writes another bundle now: regenerate {GOLDEN} (tools/ranges_reference.py)"
        );
    }

    let n = golden["images"].as_u64().unwrap() as usize;
    let pixels = pixels(n, 32);
    let opts = EngineOptions {
        batch: n,
        ..EngineOptions::default()
    };
    let mut recorder = GraphRecorder::default();
    let mut session = InnerSession::load(&bundle.graph_path(subnet), &opts, &mut recorder).unwrap();
    let outputs = session.run(pixels.view(), n, &mut recorder).unwrap();
    recorder.observe_interface(pixels.view(), &outputs, n);
    let ranges = recorder.finish().unwrap();

    let expected = golden["tensors"].as_object().unwrap();
    // The same tensors by name: the MatMul/Gemm/Conv activations of both
    // searches, and the interface.
    assert_eq!(
        ranges.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, range) in &ranges {
        let want = &expected[name];
        for (field, got) in [
            ("min", range.min),
            ("max", range.max),
            ("abs_percentile", range.abs_percentile),
        ] {
            let want = want[field].as_f64().unwrap();
            assert!(
                (f64::from(got) - want).abs() <= 1e-4 * want.abs().max(1.0),
                "{name}.{field}: {got} against onnxruntime's {want}"
            );
        }
    }
}

#[test]
fn calibrating_with_inner_ranges_scores_as_the_engine_does() {
    let (_dir, dir) = export(&Request {
        selection: subnets(&["32x2", "32x4"]),
        ..request(TEACHER)
    });
    let bundle = Bundle::open(&dir).unwrap();
    // 5 images in batches of 2: the last batch is one image and padding.
    let dataset = images(5);
    let score = |ranges: Scope| {
        let mut opts = Options {
            ranges,
            ..Options::default()
        };
        opts.engine_options.batch = 2;
        calibration::score(&bundle, &dataset, &opts, &mut |_| {}).unwrap()
    };
    let (interface, inner) = (score(Scope::Interface), score(Scope::Inner));
    for (a, b) in interface.scores.iter().zip(&inner.scores) {
        assert_eq!(a.id, b.id);
        assert!((a.fidelity - b.fidelity).abs() < 1e-5, "{a:?} {b:?}");
    }
    let (interface, inner) = (
        interface.ranges.expect("calibrate records ranges"),
        inner.ranges.expect("calibrate records ranges"),
    );
    assert_eq!(
        (interface.scope, inner.scope),
        (Scope::Interface, Scope::Inner)
    );
    let names = |r: &BTreeMap<String, _>| r.keys().cloned().collect::<Vec<String>>();
    let (few, many) = (&interface.subnets["w32-d4"], &inner.subnets["w32-d4"]);
    assert_eq!(names(few), ["cls_token", "patch_tokens", "pixel_values"]);
    // Four blocks of 14 activations each, and the patch embedding's.
    assert_eq!(many.len(), 3 + 4 * 14 + 1, "{:?}", names(many));
    for (name, range) in few {
        let other = many[name];
        assert!(
            (range.min - other.min).abs() < 1e-4 && (range.max - other.max).abs() < 1e-4,
            "{name}: {range:?} {other:?}"
        );
    }
}

#[test]
fn inner_ranges_need_tract() {
    let (_dir, dir) = export(&Request {
        selection: subnets(&["32x2"]),
        ..request(TEACHER)
    });
    let bundle = Bundle::open(&dir).unwrap();
    let opts = Options {
        engine: EngineKind::Ort,
        ranges: Scope::Inner,
        ..Options::default()
    };
    let err = calibration::score(&bundle, &images(2), &opts, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, CalibrationError::InnerNeedsTract(EngineKind::Ort)),
        "{err}"
    );
    assert!(err.to_string().contains("--engine tract"), "{err}");
}

#[test]
fn the_recorder_checks_a_graph_as_the_engines_do() {
    // Bug caught: the recorder loading graphs its own way, past the checks
    // every engine makes (`Graph::read`): a truncated weights file is then
    // a tract parse error at best, not the error naming the file.
    let (_dir, dir) = export(&Request {
        selection: subnets(&["32x2"]),
        ..request(TEACHER)
    });
    let bundle = Bundle::open(&dir).unwrap();
    let subnet = bundle.manifest().subnet("w32-d2").unwrap().clone();
    let weights = dir.join(subnet.weights[0].path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap();
    file.set_len(subnet.weights[0].bytes / 2).unwrap();
    let opts = EngineOptions::default();
    let Err(err) = InnerSession::load(
        &bundle.graph_path(&subnet),
        &opts,
        &mut GraphRecorder::default(),
    ) else {
        panic!("a graph with half its weights loaded");
    };
    assert!(
        matches!(&err, EngineError::TruncatedExternalData { data, .. } if *data == weights),
        "{err}"
    );
}
