//! Engines and the profiler on the fixture graph that
//! tools/make_engine_fixtures.py writes (weights as external data, outputs
//! computed independently by numpy).
//!
//! ONNX Runtime tests need `--features ort` and `ORT_DYLIB_PATH` (see
//! .ci/ort_lib.sh); without the variable they fail rather than pass unrun.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::{s, Array4, ArrayD, IxDyn, ShapeBuilder};
use tailor_runtime::engine::{
    self, EngineError, EngineKind, EngineOptions, ExecutionProvider, Outputs, Session,
};
use tailor_runtime::profile::{self, MeasureOptions, MemorySource, Percentile};

const TOLERANCE: f32 = 1e-5;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine")
}

fn fixture() -> PathBuf {
    fixture_dir().join("tiny.onnx")
}

/// The fixture's input batch and numpy's outputs for it.
struct Reference {
    pixels: Array4<f32>,
    cls_token: ArrayD<f32>,
    patch_tokens: ArrayD<f32>,
}

fn reference() -> Reference {
    let text = fs::read_to_string(fixture_dir().join("reference.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let array = |key: &str| {
        let shape: Vec<usize> = serde_json::from_value(json[key]["shape"].clone()).unwrap();
        let data: Vec<f32> = serde_json::from_value(json[key]["data"].clone()).unwrap();
        ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap()
    };
    Reference {
        pixels: array("pixel_values").into_dimensionality().unwrap(),
        cls_token: array("cls_token"),
        patch_tokens: array("patch_tokens"),
    }
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_close(got: &Outputs, cls_token: &ArrayD<f32>, patch_tokens: &ArrayD<f32>) {
    let cls = max_abs_diff(&got.cls_token.clone().into_dyn(), cls_token);
    let patch = max_abs_diff(&got.patch_tokens.clone().into_dyn(), patch_tokens);
    assert!(
        cls <= TOLERANCE && patch <= TOLERANCE,
        "max abs diff: cls {cls}, patch {patch}"
    );
}

fn options(batch: usize) -> EngineOptions {
    EngineOptions {
        batch,
        ..EngineOptions::default()
    }
}

fn load_tract(graph: &Path, opts: &EngineOptions) -> Result<Box<dyn Session>, EngineError> {
    engine::load(EngineKind::Tract, graph, opts)
}

/// A ViT graph the exporter wrote (the CLI tests' committed bundle).
fn bundle_graph() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny/graphs/w32-d3.onnx")
}

fn bundle_pixels(batch: usize) -> Array4<f32> {
    Array4::from_shape_fn((batch, 3, 32, 32), |(b, c, y, x)| {
        ((b + 3 * c + 5 * y + 7 * x) % 23) as f32 / 11.5 - 1.0
    })
}

/// A copy of the fixture graph in a fresh directory, without its weights.
fn graph_without_weights() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("tiny.onnx");
    fs::copy(fixture(), &graph).unwrap();
    (dir, graph)
}

#[test]
fn tract_matches_numpy_with_external_weights() {
    let r = reference();
    for threads in [None, Some(2)] {
        let opts = EngineOptions {
            threads,
            ..options(2)
        };
        let mut session = load_tract(&fixture(), &opts).unwrap();
        assert_eq!(session.input_shape(), [2, 3, 4, 4]);
        assert_eq!(session.provider(), "cpu");
        let out = session.run(r.pixels.view()).unwrap();
        assert_close(&out, &r.cls_token, &r.patch_tokens);
    }
}

#[test]
fn tract_runs_an_exported_vit_graph() {
    let mut session = load_tract(&bundle_graph(), &options(2)).unwrap();
    assert_eq!(session.input_shape(), [2, 3, 32, 32]);
    let out = session.run(bundle_pixels(2).view()).unwrap();
    assert_eq!(
        (out.cls_token.dim(), out.patch_tokens.dim()),
        ((2, 32), (2, 16, 32))
    );
    assert!(out
        .cls_token
        .iter()
        .chain(&out.patch_tokens)
        .all(|v| v.is_finite()));
}

#[test]
fn the_batch_is_fixed_at_load() {
    let r = reference();
    let mut session = load_tract(&fixture(), &options(1)).unwrap();
    assert_eq!(session.input_shape(), [1, 3, 4, 4]);
    for i in 0..2 {
        let out = session
            .run(r.pixels.slice(s![i..i + 1, .., .., ..]))
            .unwrap();
        let cls = r.cls_token.slice(s![i..i + 1, ..]).into_dyn().to_owned();
        let patch = r
            .patch_tokens
            .slice(s![i..i + 1, .., ..])
            .into_dyn()
            .to_owned();
        assert_close(&out, &cls, &patch);
    }
    match session.run(r.pixels.view()) {
        Err(EngineError::InputShape {
            graph,
            expected,
            got,
        }) => {
            assert_eq!(graph, fixture());
            assert_eq!((expected, got), ([1, 3, 4, 4], [2, 3, 4, 4]));
        }
        other => panic!("expected an input shape error, got {other:?}"),
    }
}

#[test]
fn non_contiguous_input_is_accepted() {
    let r = reference();
    // Same values, Fortran memory order: the engine must not read raw memory.
    let mut fortran = Array4::<f32>::zeros(r.pixels.raw_dim().f());
    fortran.assign(&r.pixels);
    let mut session = load_tract(&fixture(), &options(2)).unwrap();
    assert_close(
        &session.run(fortran.view()).unwrap(),
        &r.cls_token,
        &r.patch_tokens,
    );
}

#[test]
fn tract_refuses_accelerators_instead_of_mislabelling_the_cpu() {
    let opts = EngineOptions {
        provider: ExecutionProvider::Cuda,
        ..options(1)
    };
    match load_tract(&fixture(), &opts) {
        Err(EngineError::ProviderFallback {
            requested, actual, ..
        }) => {
            assert_eq!(
                (requested, actual.as_str()),
                (ExecutionProvider::Cuda, "cpu")
            );
        }
        other => panic!("expected a provider fallback, got {:?}", other.err()),
    }
}

#[test]
fn a_missing_graph_is_named() {
    let missing = fixture_dir().join("no-such-graph.onnx");
    let err = load_tract(&missing, &options(1)).err().unwrap();
    assert!(
        matches!(&err, EngineError::Read { source, .. } if source.kind() == ErrorKind::NotFound)
    );
    assert!(err.to_string().contains("no-such-graph.onnx"), "{err}");
}

#[test]
fn a_file_that_is_not_onnx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("text.onnx", &b"this is not an onnx graph\n"[..]),
        ("empty.onnx", b""),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        let err = load_tract(&path, &options(1)).err().unwrap();
        assert!(
            matches!(err, EngineError::NotOnnx { .. }),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn missing_external_data_names_the_file_and_tensor() {
    let (dir, graph) = graph_without_weights();
    match load_tract(&graph, &options(1)) {
        Err(EngineError::MissingExternalData {
            graph: g,
            data,
            tensor,
            source,
        }) => {
            assert_eq!(g, graph);
            assert_eq!(data, dir.path().join("weights/w8.bin"));
            assert_eq!(tensor, "embed.weight");
            assert_eq!(source.kind(), ErrorKind::NotFound);
        }
        other => panic!("expected missing external data, got {:?}", other.err()),
    }
}

#[test]
fn truncated_external_data_is_refused_before_loading() {
    let (dir, graph) = graph_without_weights();
    fs::create_dir(dir.path().join("weights")).unwrap();
    let weights = fs::read(fixture_dir().join("weights/w8.bin")).unwrap();
    // embed.weight is bytes 0..96, embed.bias 96..128.
    fs::write(dir.path().join("weights/w8.bin"), &weights[..100]).unwrap();
    match load_tract(&graph, &options(1)) {
        Err(EngineError::TruncatedExternalData {
            tensor, end, size, ..
        }) => {
            assert_eq!((tensor.as_str(), end, size), ("embed.bias", 128, 100));
        }
        other => panic!("expected truncated external data, got {:?}", other.err()),
    }
}

#[test]
fn impossible_options_are_refused() {
    for opts in [
        options(0),
        EngineOptions {
            threads: Some(0),
            ..options(1)
        },
    ] {
        let err = load_tract(&fixture(), &opts).err().unwrap();
        assert!(matches!(err, EngineError::Options(_)), "{err:?}");
    }
}

#[test]
fn graph_errors_are_not_systematic() {
    let (dir, graph) = graph_without_weights();
    fs::create_dir(dir.path().join("weights")).unwrap();
    fs::write(dir.path().join("weights/w8.bin"), [0u8; 100]).unwrap();
    let truncated = load_tract(&graph, &options(1)).err().unwrap();
    let missing = load_tract(&fixture_dir().join("no-such-graph.onnx"), &options(1))
        .err()
        .unwrap();
    for err in [&truncated, &missing] {
        assert!(!err.is_systematic(), "{err:?}");
    }
    assert_eq!(
        (truncated.kind(), missing.kind()),
        ("truncated_external_data", "read")
    );
}

#[test]
fn configuration_errors_are_systematic() {
    let accelerated = EngineOptions {
        provider: ExecutionProvider::Cuda,
        ..options(1)
    };
    let fp16 = EngineOptions {
        fp16: true,
        ..options(1)
    };
    for err in [
        load_tract(&fixture(), &accelerated).err().unwrap(),
        load_tract(&fixture(), &options(0)).err().unwrap(),
        engine::check(EngineKind::Tract, &fp16).unwrap_err(),
        engine::check(EngineKind::Tract, &accelerated).unwrap_err(),
    ] {
        assert!(err.is_systematic(), "{err:?}");
    }
}

#[test]
fn check_on_tract_names_its_version_and_refuses_what_it_cannot_do() {
    let info = engine::check(EngineKind::Tract, &options(1)).unwrap();
    assert_eq!(info.to_string(), "tract 0.23.9");
    let fp16 = EngineOptions {
        fp16: true,
        ..options(1)
    };
    let err = engine::check(EngineKind::Tract, &fp16).unwrap_err();
    assert!(matches!(err, EngineError::Options(_)), "{err:?}");
    assert!(err.to_string().contains("tensorrt"), "{err}");
    let cuda = EngineOptions {
        provider: ExecutionProvider::Cuda,
        ..options(1)
    };
    match engine::check(EngineKind::Tract, &cuda) {
        Err(EngineError::ProviderUnavailable {
            engine, provider, ..
        }) => assert_eq!(
            (engine, provider),
            (EngineKind::Tract, ExecutionProvider::Cuda)
        ),
        other => panic!("expected an unavailable provider, got {other:?}"),
    }
}

#[test]
fn names_and_options_cross_a_process_boundary_as_json() {
    assert_eq!(
        serde_json::to_string(&ExecutionProvider::TensorRt).unwrap(),
        r#""tensorrt""#
    );
    assert_eq!(
        serde_json::from_str::<EngineKind>(r#""ort""#).unwrap(),
        EngineKind::Ort
    );
    let err = serde_json::from_str::<ExecutionProvider>(r#""gpu""#).unwrap_err();
    assert!(err.to_string().contains("`gpu`"), "{err}");
    let opts = EngineOptions {
        threads: Some(3),
        batch: 4,
        provider: ExecutionProvider::TensorRt,
        ort_library: Some("/opt/ort/libonnxruntime.so".into()),
        cache_dir: Some("/var/cache/tailor/tensorrt".into()),
        fp16: true,
    };
    let json = serde_json::to_value(&opts).unwrap();
    assert_eq!(json["provider"], "tensorrt");
    assert_eq!(serde_json::from_value::<EngineOptions>(json).unwrap(), opts);
}

#[test]
fn names_round_trip() {
    for kind in [EngineKind::Tract, EngineKind::Ort] {
        assert_eq!(kind.to_string().parse::<EngineKind>().unwrap(), kind);
    }
    assert_eq!("tract".parse::<EngineKind>().unwrap(), EngineKind::Tract);
    assert_eq!("ORT".parse::<EngineKind>().unwrap(), EngineKind::Ort);
    let all = [
        ExecutionProvider::Cpu,
        ExecutionProvider::Cuda,
        ExecutionProvider::TensorRt,
        ExecutionProvider::OpenVino,
        ExecutionProvider::CoreMl,
        ExecutionProvider::Nnapi,
        ExecutionProvider::Qnn,
        ExecutionProvider::XnnPack,
    ];
    for provider in all {
        assert!(!provider.name().is_empty(), "{provider:?} has no name");
        assert_eq!(
            provider.to_string().parse::<ExecutionProvider>().unwrap(),
            provider
        );
    }
    assert_eq!(
        "tensorrt".parse::<ExecutionProvider>().unwrap(),
        ExecutionProvider::TensorRt
    );
    let err = "gpu".parse::<ExecutionProvider>().unwrap_err();
    assert!(
        err.to_string().contains("`gpu`") && err.to_string().contains("cuda"),
        "{err}"
    );
}

#[cfg(not(feature = "ort"))]
#[test]
fn ort_without_the_feature_says_so() {
    let err = engine::load(EngineKind::Ort, &fixture(), &options(1))
        .err()
        .unwrap();
    assert!(
        matches!(err, EngineError::NotBuilt(EngineKind::Ort)),
        "{err:?}"
    );
    let err = engine::check(EngineKind::Ort, &options(1)).unwrap_err();
    assert!(
        matches!(err, EngineError::NotBuilt(EngineKind::Ort)) && err.is_systematic(),
        "{err:?}"
    );
    assert!(err.to_string().contains("enable feature `ort`"), "{err}");
}

#[test]
fn measure_gives_sane_numbers_and_returns_the_session() {
    let r = reference();
    let opts = MeasureOptions {
        warmup_runs: 2,
        min_runs: 5,
        min_time: Duration::from_millis(50),
        max_runs: 1_000_000,
    };
    let started = Instant::now();
    let (mut session, m) = profile::measure(
        || load_tract(&fixture(), &options(2)),
        r.pixels.view(),
        &opts,
    )
    .unwrap();
    assert!(
        started.elapsed() >= opts.min_time,
        "stopped before min_time"
    );
    assert!(m.runs >= opts.min_runs, "{m:?}");
    assert!(
        m.load_ms > 0.0 && m.first_ms > 0.0 && m.mean_ms > 0.0,
        "{m:?}"
    );
    assert!(m.p50_ms <= m.p90_ms && m.p90_ms <= m.p99_ms, "{m:?}");
    // The statistics are those of the timed runs handed back (their
    // arithmetic, cv and `noisy` included, is checked on fixed samples in
    // profile's unit tests): one sample per counted run, ascending, each
    // percentile one of them (nearest rank, never interpolated), the mean
    // within them. Statistics of other runs (warm-up, the first) or of
    // another session's samples fail this.
    let samples = &m.samples_ms;
    assert_eq!(samples.len(), m.runs as usize, "{m:?}");
    assert!(samples.windows(2).all(|w| w[0] <= w[1]), "{m:?}");
    for p in [m.p50_ms, m.p90_ms, m.p99_ms] {
        assert!(samples.contains(&p), "{p} ms is no run's time: {m:?}");
    }
    assert!(
        samples[0] <= m.mean_ms && m.mean_ms <= samples[samples.len() - 1],
        "{m:?}"
    );
    assert_eq!(m.percentile_ms(Percentile::P90), m.p90_ms);
    // What the peak covers is tested alone, in tests/peak.rs.
    assert!(m.rss_mb > 0.0, "{m:?}");
    assert_ne!(m.memory, MemorySource::Unavailable);
    // The session comes back ready to serve.
    assert_close(
        &session.run(r.pixels.view()).unwrap(),
        &r.cls_token,
        &r.patch_tokens,
    );
}

#[test]
fn max_runs_caps_and_min_runs_counts() {
    let r = reference();
    let capped = MeasureOptions {
        warmup_runs: 0,
        min_runs: 3,
        min_time: Duration::from_secs(3600),
        max_runs: 7,
    };
    let (_, m) = profile::measure(
        || load_tract(&fixture(), &options(2)),
        r.pixels.view(),
        &capped,
    )
    .unwrap();
    assert_eq!(m.runs, 7);
    let counted = MeasureOptions {
        warmup_runs: 0,
        min_runs: 4,
        min_time: Duration::ZERO,
        max_runs: 100,
    };
    let (_, m) = profile::measure(
        || load_tract(&fixture(), &options(2)),
        r.pixels.view(),
        &counted,
    )
    .unwrap();
    assert_eq!(m.runs, 4);
}

#[test]
fn measure_passes_errors_through() {
    let r = reference();
    let opts = MeasureOptions::default();
    let missing = fixture_dir().join("no-such-graph.onnx");
    let err = profile::measure(|| load_tract(&missing, &options(2)), r.pixels.view(), &opts)
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::Read { .. }), "{err:?}");
    // A session loaded for batch 1 cannot run the batch of 2.
    let err = profile::measure(
        || load_tract(&fixture(), &options(1)),
        r.pixels.view(),
        &opts,
    )
    .err()
    .unwrap();
    assert!(matches!(err, EngineError::InputShape { .. }), "{err:?}");
    let contradictory = MeasureOptions {
        min_runs: 10,
        max_runs: 5,
        ..opts
    };
    let err = profile::measure(
        || load_tract(&fixture(), &options(2)),
        r.pixels.view(),
        &contradictory,
    )
    .err()
    .unwrap();
    assert!(matches!(err, EngineError::Options(_)), "{err:?}");
}

#[cfg(feature = "ort")]
mod ort {
    use super::*;

    /// The library under test; its absence fails the test with a hint.
    fn library() -> PathBuf {
        match std::env::var_os("ORT_DYLIB_PATH") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => panic!(
                "ORT_DYLIB_PATH is not set: the ort tests need libonnxruntime.so \
                 (ORT_DYLIB_PATH=$(.ci/ort_lib.sh) cargo test -p tailor-runtime --features ort)"
            ),
        }
    }

    fn load_ort(opts: &EngineOptions) -> Result<Box<dyn Session>, EngineError> {
        library();
        engine::load(EngineKind::Ort, &fixture(), opts)
    }

    #[test]
    fn ort_matches_numpy_and_tract_on_the_cpu() {
        let r = reference();
        for threads in [None, Some(1)] {
            let opts = EngineOptions {
                threads,
                ..options(2)
            };
            let mut ort = load_ort(&opts).unwrap();
            assert_eq!(ort.input_shape(), [2, 3, 4, 4]);
            assert_eq!(ort.provider(), "cpu");
            let from_ort = ort.run(r.pixels.view()).unwrap();
            assert_close(&from_ort, &r.cls_token, &r.patch_tokens);
            let from_tract = load_tract(&fixture(), &opts)
                .unwrap()
                .run(r.pixels.view())
                .unwrap();
            assert_close(
                &from_ort,
                &from_tract.cls_token.into_dyn(),
                &from_tract.patch_tokens.into_dyn(),
            );
        }
    }

    /// tract splits a batch into images run by up to `threads` workers:
    /// batch 5 on 2 workers (an uneven split), on 1 (one worker in turn) and
    /// with more threads than images (a shared pool). An image stacked back
    /// in the wrong place, or one run twice, breaks the match with ORT.
    #[test]
    fn both_engines_agree_on_an_exported_vit_graph() {
        library();
        let input = bundle_pixels(5);
        let mut ort = engine::load(EngineKind::Ort, &bundle_graph(), &options(5)).unwrap();
        assert_eq!(ort.provider(), "cpu");
        let ort = ort.run(input.view()).unwrap();
        for (batch, threads) in [(5, Some(2)), (5, None), (2, Some(3))] {
            let opts = EngineOptions {
                threads,
                ..options(batch)
            };
            let images = input.slice(ndarray::s![..batch, .., .., ..]);
            let tract = load_tract(&bundle_graph(), &opts)
                .unwrap()
                .run(images)
                .unwrap();
            let cls = max_abs_diff(
                &tract.cls_token.into_dyn(),
                &ort.cls_token
                    .slice(ndarray::s![..batch, ..])
                    .to_owned()
                    .into_dyn(),
            );
            let patch = max_abs_diff(
                &tract.patch_tokens.into_dyn(),
                &ort.patch_tokens
                    .slice(ndarray::s![..batch, .., ..])
                    .to_owned()
                    .into_dyn(),
            );
            assert!(
                cls <= TOLERANCE && patch <= TOLERANCE,
                "batch {batch}, threads {threads:?}: max abs diff: cls {cls}, patch {patch}"
            );
        }
    }

    #[test]
    fn ort_checks_the_input_shape() {
        let r = reference();
        let mut ort = load_ort(&options(1)).unwrap();
        let err = ort.run(r.pixels.view()).err().unwrap();
        assert!(
            matches!(
                err,
                EngineError::InputShape {
                    expected: [1, 3, 4, 4],
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn cuda_on_a_cpu_only_library_is_a_fallback_error() {
        let opts = EngineOptions {
            provider: ExecutionProvider::Cuda,
            ..options(1)
        };
        match load_ort(&opts) {
            Err(EngineError::ProviderFallback {
                requested,
                actual,
                reason,
                ..
            }) => {
                assert_eq!(
                    (requested, actual.as_str()),
                    (ExecutionProvider::Cuda, "cpu")
                );
                assert!(!reason.is_empty());
            }
            other => panic!("expected a provider fallback, got {:?}", other.err()),
        }
    }

    #[test]
    fn check_reports_the_library_version() {
        library();
        let info = engine::check(EngineKind::Ort, &options(1)).unwrap();
        assert_eq!(
            (info.kind, info.version.as_str(), info.provider),
            (EngineKind::Ort, "1.31.1", ExecutionProvider::Cpu)
        );
        assert_eq!(info.to_string(), "ort 1.31.1 cpu");
    }

    #[test]
    fn check_finds_a_missing_provider_before_any_graph() {
        library();
        for provider in [ExecutionProvider::Cuda, ExecutionProvider::TensorRt] {
            let opts = EngineOptions {
                provider,
                ..options(1)
            };
            let err = engine::check(EngineKind::Ort, &opts).unwrap_err();
            assert!(
                matches!(&err, EngineError::ProviderUnavailable { provider: p, .. } if *p == provider),
                "{err:?}"
            );
            assert!(err.is_systematic(), "{err:?}");
        }
    }

    #[test]
    fn a_fallback_is_systematic_and_a_broken_graph_is_not() {
        let cuda = EngineOptions {
            provider: ExecutionProvider::Cuda,
            ..options(1)
        };
        let fallback = load_ort(&cuda).err().unwrap();
        assert_eq!(fallback.kind(), "provider_fallback");
        assert!(fallback.is_systematic(), "{fallback:?}");
        let (dir, graph) = graph_without_weights();
        fs::create_dir(dir.path().join("weights")).unwrap();
        fs::write(dir.path().join("weights/w8.bin"), [0u8; 100]).unwrap();
        let truncated = engine::load(EngineKind::Ort, &graph, &options(1))
            .err()
            .unwrap();
        assert!(
            matches!(truncated, EngineError::TruncatedExternalData { .. }),
            "{truncated:?}"
        );
        assert!(!truncated.is_systematic());
    }

    #[test]
    fn ort_reports_the_same_graph_errors() {
        library();
        let (_dir, graph) = graph_without_weights();
        let err = engine::load(EngineKind::Ort, &graph, &options(1))
            .err()
            .unwrap();
        assert!(
            matches!(err, EngineError::MissingExternalData { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_library_is_an_error() {
        let missing = PathBuf::from("/nonexistent/libonnxruntime.so");
        let opts = EngineOptions {
            ort_library: Some(missing.clone()),
            ..options(1)
        };
        let err = engine::load(EngineKind::Ort, &fixture(), &opts)
            .err()
            .unwrap();
        assert!(
            matches!(&err, EngineError::OrtLibrary { path, .. } if *path == missing),
            "{err:?}"
        );
        assert!(err.is_systematic());
        assert!(err.to_string().contains("ORT_DYLIB_PATH"), "{err}");
    }

    #[test]
    fn a_process_cannot_switch_libraries() {
        load_ort(&options(1)).unwrap();
        // Any other existing file: the check happens before it is opened.
        let other = fixture();
        let opts = EngineOptions {
            ort_library: Some(other.clone()),
            ..options(1)
        };
        match engine::load(EngineKind::Ort, &fixture(), &opts) {
            Err(EngineError::OrtLibraryConflict { loaded, requested }) => {
                assert_eq!(loaded, fs::canonicalize(library()).unwrap());
                assert_eq!(requested, other);
            }
            other => panic!("expected a library conflict, got {:?}", other.err()),
        }
    }

    #[test]
    fn measure_works_with_ort() {
        let r = reference();
        let opts = MeasureOptions {
            warmup_runs: 1,
            min_runs: 5,
            min_time: Duration::ZERO,
            max_runs: 5,
        };
        let (_, m) = profile::measure(|| load_ort(&options(2)), r.pixels.view(), &opts).unwrap();
        assert_eq!(m.runs, 5);
        assert!(m.p50_ms <= m.p99_ms && m.rss_mb > 0.0, "{m:?}");
    }
}
