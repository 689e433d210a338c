//! `exporter route` as a user meets it: every path's score in the manifest
//! with the task, equal to numpy's k-NN on features ONNX Runtime computes
//! from each path's whole graph, the ranking
//! and the histogram; a clear error that leaves the bundle untouched for
//! every bad input.

mod common;

use common::exporter as run;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The example SDR teacher exported whole into `dir/bundle`.
fn sdr_bundle(dir: &Path) -> PathBuf {
    let out = dir.join("bundle");
    let teacher = root().join("examples/sdr-tiny/sdr.safetensors");
    let export = run(&[&"--all-subnets", &teacher, &"-o", &out, &"-q"]);
    assert!(export.status.success(), "{}", stderr(&export));
    out
}

fn manifest(bundle: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn route_writes_every_paths_knn_score_as_onnx_runtime_and_numpy_compute_it() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = sdr_bundle(dir.path());
    let data = root().join("examples/mnist-calib.npz");
    let (features, svg) = (dir.path().join("f.npz"), dir.path().join("routes.svg"));
    let out = run(&[
        &"route",
        &bundle,
        &"--data",
        &data,
        &"--task",
        &"digits",
        &"--limit",
        &"500",
        &"--dump-features",
        &features,
        &"--plot",
        &svg,
        &"-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let m = manifest(&bundle);
    let cal = &m["calibration"];
    assert_eq!(cal["task"], "digits");
    assert_eq!(cal["quality_metric"], "knn_top1");
    assert_eq!(cal["dataset_images"], 500);
    let quality: BTreeMap<String, f64> = m["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["quality"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(quality.len(), 17);

    // Each path's whole graph run by ONNX Runtime on pixels prepared in
    // numpy, scored by numpy's k-NN (tools/route_reference.py): the dump
    // gives the split and labels only, its features are compared.
    let check = Command::new("python3")
        .arg(root().join("tools/route_reference.py"))
        .arg(&bundle)
        .arg(&data)
        .arg(&features)
        .output()
        .expect(
            "python3 with numpy and onnxruntime is needed for this test (.ci/run installs them)",
        );
    assert!(check.status.success(), "{}", stderr(&check));
    let text = String::from_utf8_lossy(&check.stdout);
    let reference: BTreeMap<String, (f64, f64)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_owned(),
                (f[1].parse().unwrap(), f[2].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(reference.len(), 17, "{text}");
    for (id, q) in &quality {
        let (knn, feature_diff) = reference[id];
        // Measured: the features agree to 4e-7 of their largest value and
        // every score exactly; a path fed another block's output or a
        // shared prefix it does not share moves both far.
        assert!(
            feature_diff < 1e-4,
            "{id}: cls_token {feature_diff:e} from ONNX Runtime's"
        );
        assert!((q - knn).abs() < 0.006, "{id}: route {q}, reference {knn}");
    }

    // The ranking, best first.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ranked: Vec<&str> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(ranked.len(), 17);
    for pair in ranked.windows(2) {
        assert!(
            quality[pair[0]] >= quality[pair[1]],
            "{pair:?} out of order"
        );
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("16 paths routed to digits (red line: full"),
        "{svg}"
    );

    // The graphs and weights are untouched: the bundle still verifies.
    let inspect = run(&[&"inspect", &bundle, &"--verify"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
}

#[test]
fn route_json_ranks_the_paths_the_manifest_scores() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = sdr_bundle(dir.path());
    let data = root().join("examples/mnist-calib.npz");
    let out = run(&[
        &"route", &bundle, &"--data", &data, &"--limit", &"100", &"--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("stdout is only the JSON");
    assert_eq!(
        json["task"], "mnist-calib",
        "the data's file name by default"
    );
    assert_eq!(json["dataset"]["images"], 100);

    let m = manifest(&bundle);
    let subnets: BTreeMap<&str, &Value> = m["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s))
        .collect();
    let ranking = json["ranking"].as_array().unwrap();
    assert_eq!(ranking.len(), subnets.len(), "every path ranked once");
    for pair in ranking.windows(2) {
        let knn = |p: &Value| p["knn_top1"].as_f64().unwrap();
        assert!(knn(&pair[0]) >= knn(&pair[1]), "best first: {pair:?}");
    }
    for path in ranking {
        let subnet = subnets[path["id"].as_str().unwrap()];
        // The manifest rounds to f32.
        let (printed, written) = (
            path["knn_top1"].as_f64().unwrap(),
            subnet["quality"].as_f64().unwrap(),
        );
        assert!((printed - written).abs() < 1e-4, "{path} against {subnet}");
        assert_eq!(path["route"], subnet["route"], "{path}");
    }
}

/// Routes `bundle` on `data`, expecting a failure naming `needles`, and
/// checks that the manifests are byte for byte as they were.
fn assert_refused(bundle: &Path, data: &Path, needles: &[&str]) {
    assert_refused_by(bundle, needles, |plot| {
        run(&[&"route", &bundle, &"--data", &data, &"--plot", &plot])
    });
}

/// Runs `route` (given the plot it must not draw), expecting a failure
/// naming `needles`, and checks that the manifests are byte for byte as
/// they were.
fn assert_refused_by(bundle: &Path, needles: &[&str], route: impl FnOnce(&Path) -> Output) {
    let read = || {
        (
            std::fs::read(bundle.join("manifest.postcard")).unwrap(),
            std::fs::read(bundle.join("manifest.json")).unwrap(),
        )
    };
    let before = read();
    let plot = bundle.with_file_name("refused.svg");
    let out = route(&plot);
    let err = stderr(&out);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
    assert!(read() == before, "the manifest changed");
    assert!(!bundle.join("calibration").exists());
    assert!(!plot.exists());
}

/// Four small grey PNGs in `dir`, the i-th at `name(i)`.
fn pngs(dir: &Path, name: impl Fn(usize) -> String) {
    for i in 0..4 {
        common::write_png(&dir.join(name(i)), 8, &common::grey(0, i, 8));
    }
}

#[test]
fn bad_inputs_are_named_and_leave_the_bundle_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path();
    let bundle = sdr_bundle(root_dir);

    let empty = root_dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_refused(&bundle, &empty, &["empty", "no images"]);

    let one = root_dir.join("one-class");
    pngs(&one, |i| format!("sevens/{i}.png"));
    assert_refused(&bundle, &one, &["one-class", "only one class (`sevens`)"]);

    let broken = root_dir.join("broken");
    pngs(&broken, |i| format!("{}/{i}.png", ["a", "b"][i % 2]));
    std::fs::write(broken.join("b/bad.png"), b"not a png").unwrap();
    assert_refused(&bundle, &broken, &["bad.png", "PNG"]);

    // Images without classes: nothing to route by.
    let unlabelled = root_dir.join("unlabelled");
    pngs(&unlabelled, |i| format!("{i}.png"));
    assert_refused(&bundle, &unlabelled, &["routing needs labels"]);

    // A bundle of another family.
    let vit = root_dir.join("vit");
    common::copy_dir(&root().join("runtime/tests/fixtures/bundle-tiny"), &vit);
    let digits = root().join("examples/mnist-calib.npz");
    assert_refused(
        &vit,
        &digits,
        &["not an SDR bundle", "`vit`", "exporter calibrate"],
    );
}

/// `exporter route --engine ort`: ONNX Runtime from `ORT_DYLIB_PATH`, which
/// .ci/run sets; without it these tests fail rather than pass unrun.
#[cfg(feature = "ort")]
mod ort {
    use super::*;

    /// The scores `route --json` printed, by path: (k-NN top-1, fidelity).
    fn scores(out: &Output) -> BTreeMap<String, (f64, f64)> {
        assert!(out.status.success(), "{}", stderr(out));
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        json["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let score = |key: &str| p[key].as_f64().unwrap();
                let id = p["id"].as_str().unwrap().to_owned();
                (id, (score("knn_top1"), score("fidelity")))
            })
            .collect()
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// Catches ORT cuts fed the wrong values or weights (the scores move far),
    /// and an ORT route that writes beside the graphs (a weight file copied
    /// or a temporary graph left in the bundle).
    #[test]
    fn onnx_runtime_scores_every_path_as_tract_does_and_writes_nothing_beside_the_graphs() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = sdr_bundle(dir.path());
        let data = root().join("examples/mnist-calib.npz");
        let graphs = (
            files(&bundle.join("graphs")),
            files(&bundle.join("graphs/weights")),
        );
        let route = |engine: &str| {
            run(&[
                &"route",
                &bundle,
                &"--data",
                &data,
                &"--engine",
                &engine,
                &"--threads",
                &"2",
                &"--json",
            ])
        };
        let tract = scores(&route("tract"));
        let ort = scores(&route("ort"));
        assert_eq!(tract.len(), 17);
        // 1,000 digits classify 200: 0.5 points is one image. The engines'
        // features differ by float rounding (~1e-6), which can flip at most a
        // near-tie of k-NN votes, never a ranking by a real margin.
        for (id, (knn, fidelity)) in &tract {
            let (ort_knn, ort_fidelity) = ort[id];
            assert!(
                (knn - ort_knn).abs() <= 0.5,
                "{id}: k-NN top-1 {knn} on tract, {ort_knn} on ONNX Runtime"
            );
            assert!(
                (fidelity - ort_fidelity).abs() < 1e-3,
                "{id}: fidelity {fidelity} on tract, {ort_fidelity} on ONNX Runtime"
            );
        }
        assert_eq!(
            (
                files(&bundle.join("graphs")),
                files(&bundle.join("graphs/weights"))
            ),
            graphs,
            "ONNX Runtime's cuts read the bundle in place"
        );
        let inspect = run(&[&"inspect", &bundle, &"--verify"]);
        assert!(inspect.status.success(), "{}", stderr(&inspect));
    }

    /// Catches a missing library reported as a panic or a bare load error, a
    /// provider that silently falls back to the CPU, and --provider taken
    /// (and ignored) by tract; none of them may touch the bundle.
    #[test]
    fn engine_errors_are_named_and_leave_the_bundle_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = sdr_bundle(dir.path());
        let data = root().join("examples/mnist-calib.npz");
        let route = |args: &[&str], plot: &Path| {
            let mut route = Command::new(env!("CARGO_BIN_EXE_exporter"));
            route.arg("route").arg(&bundle).arg("--data").arg(&data);
            route.arg("--plot").arg(plot).args(args);
            route
        };
        // Not any sub-network's failure: none is named.
        let engine = ": starting the engine: ";
        assert_refused_by(
            &bundle,
            &[engine, "ORT_DYLIB_PATH", "libonnxruntime.so"],
            |plot| {
                route(&["--engine", "ort"], plot)
                    .env_remove("ORT_DYLIB_PATH")
                    .output()
                    .unwrap()
            },
        );
        assert_refused_by(
            &bundle,
            &[engine, "`cuda`", "choose provider cpu"],
            |plot| {
                route(&["--engine", "ort", "--provider", "cuda"], plot)
                    .output()
                    .unwrap()
            },
        );
        assert_refused_by(&bundle, &["--provider cpu", "--engine ort"], |plot| {
            route(&["--provider", "cpu"], plot).output().unwrap()
        });
        assert_refused_by(&bundle, &["`auto`", "tract, ort"], |plot| {
            route(&["--engine", "auto"], plot).output().unwrap()
        });
    }
}
