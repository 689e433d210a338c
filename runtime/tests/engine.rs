//! Both engines on the same bundle graph: the same outputs, honest
//! execution providers, and clear errors for broken inputs.

use std::path::{Path, PathBuf};

use ndarray::Array4;
use tailor_runtime::engine::{self, EngineError, EngineKind, EngineOptions, ExecutionProvider};

fn graph() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny/graphs/w32-d3.onnx")
}

fn pixels(batch: usize) -> Array4<f32> {
    Array4::from_shape_fn((batch, 3, 32, 32), |(b, c, y, x)| {
        ((b + 3 * c + 5 * y + 7 * x) % 23) as f32 / 11.5 - 1.0
    })
}

#[test]
fn tract_runs_the_graph_and_checks_shapes() {
    let opts = EngineOptions {
        batch: 2,
        ..Default::default()
    };
    let mut s = engine::load(EngineKind::Tract, &graph(), &opts).unwrap();
    assert_eq!(s.input_shape(), [2, 3, 32, 32]);
    assert_eq!(s.provider(), "cpu");
    let out = s.run(pixels(2).view()).unwrap();
    assert_eq!(
        (out.cls_token.dim(), out.patch_tokens.dim()),
        ((2, 32), (2, 16, 32))
    );
    assert!(out.cls_token.iter().all(|v| v.is_finite()));
    let err = s.run(pixels(1).view()).unwrap_err();
    assert!(matches!(err, EngineError::InputShape { .. }), "{err}");
    // tract never pretends to run on a GPU.
    let cuda = EngineOptions {
        provider: ExecutionProvider::Cuda,
        ..Default::default()
    };
    assert!(matches!(
        engine::load(EngineKind::Tract, &graph(), &cuda),
        Err(EngineError::ProviderFallback { .. })
    ));
}

#[test]
fn missing_files_and_foreign_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("w32-d3.onnx");
    std::fs::copy(graph(), &copy).unwrap();
    // The weights are not beside the copy.
    let err = engine::load(EngineKind::Tract, &copy, &EngineOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert!(
        err.to_string().contains("w32-d3.onnx") && err.to_string().contains("weights/w32.bin"),
        "{err}"
    );
    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "hello").unwrap();
    let err = engine::load(EngineKind::Tract, &text, &EngineOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert!(err.to_string().contains("notes.onnx"), "{err}");
    let err = engine::load(
        EngineKind::Tract,
        &dir.path().join("absent.onnx"),
        &EngineOptions::default(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(err.to_string().contains("absent.onnx"), "{err}");
}

#[cfg(feature = "ort")]
mod ort {
    use super::*;

    fn library() -> PathBuf {
        std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .expect(
            "the ort tests need ORT_DYLIB_PATH (bash .ci/ort_lib.sh prints the wheel's library)",
        )
    }

    #[test]
    fn both_engines_agree() {
        let opts = EngineOptions {
            batch: 2,
            ort_library: Some(library()),
            ..Default::default()
        };
        let input = pixels(2);
        let a = engine::load(EngineKind::Tract, &graph(), &opts)
            .unwrap()
            .run(input.view())
            .unwrap();
        let mut ort = engine::load(EngineKind::Ort, &graph(), &opts).unwrap();
        assert_eq!(ort.provider(), "cpu");
        let b = ort.run(input.view()).unwrap();
        let diff =
            |x: &[f32], y: &[f32]| x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        let scale = a.patch_tokens.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            diff(
                a.cls_token.as_slice().unwrap(),
                b.cls_token.as_slice().unwrap()
            ) <= 1e-5 * scale.max(1.0)
        );
        assert!(
            diff(
                a.patch_tokens.as_slice().unwrap(),
                b.patch_tokens.as_slice().unwrap()
            ) <= 1e-5 * scale.max(1.0)
        );
    }

    #[test]
    fn a_gpu_request_on_a_cpu_only_library_is_refused_not_faked() {
        let opts = EngineOptions {
            provider: ExecutionProvider::Cuda,
            ort_library: Some(library()),
            ..Default::default()
        };
        let err = engine::load(EngineKind::Ort, &graph(), &opts)
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, EngineError::ProviderFallback { .. }), "{err}");
        assert!(
            err.to_string().contains("cuda") && err.to_string().contains("cpu"),
            "{err}"
        );
    }

    #[test]
    fn another_library_in_the_same_process_is_refused() {
        let ok = EngineOptions {
            ort_library: Some(library()),
            ..Default::default()
        };
        engine::load(EngineKind::Ort, &graph(), &ok).unwrap();
        let other = EngineOptions {
            ort_library: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
            ..Default::default()
        };
        let err = engine::load(EngineKind::Ort, &graph(), &other)
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/libonnxruntime.so"),
            "{err}"
        );
    }
}
