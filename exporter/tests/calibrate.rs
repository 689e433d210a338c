//! `exporter calibrate` as a user meets it: scores in the manifest, a bundle
//! that still verifies, and a clear error that leaves the bundle untouched
//! for every bad dataset.

mod common;

use common::exporter;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use protobuf::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn bundle_copy() -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures/bundle-tiny");
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("bundle");
    common::copy_dir(&src, &dst);
    (dir, dst)
}

/// `exporter calibrate BUNDLE --data DATA EXTRA...`
fn calibrate(bundle: &Path, data: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"calibrate", &bundle, &"--data", &data];
    args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    exporter(&args)
}

fn assert_succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(out: &Output) -> Value {
    assert_succeeded(out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn manifest(bundle: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap()
}

fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn write_npz(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        zip.start_file(format!("{name}.npy"), stored).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// `n` images of 12x12 alternating between the two classes, labels int64.
fn labelled_npz(path: &Path, n: usize) {
    let images: Vec<u8> = (0..n)
        .flat_map(|i| common::grey((i % 2) as u8, i, 12))
        .collect();
    let labels: Vec<u8> = (0..n)
        .flat_map(|i| ((i % 2) as i64).to_le_bytes())
        .collect();
    write_npz(
        path,
        &[
            ("images", npy("|u1", &[n, 12, 12], &images)),
            ("labels", npy("<i8", &[n], &labels)),
        ],
    );
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn an_npz_with_labels_scores_every_subnet_and_the_bundle_still_verifies() {
    let (dir, bundle) = bundle_copy();
    let data = dir.path().join("calib.npz");
    labelled_npz(&data, 40);
    let graphs_before = sha256(&bundle.join("graphs/w32-d4.onnx"));
    let report = json(&calibrate(&bundle, &data, &["--json", "--batch", "8"]));

    assert_eq!(report["quality_metric"], "knn_top1");
    assert_eq!(report["reference"], "w32-d4", "the most parameters");
    assert_eq!(
        (
            report["dataset"]["train"].as_u64(),
            report["dataset"]["val"].as_u64()
        ),
        (Some(32), Some(8))
    );
    let m = manifest(&bundle);
    let cal = &m["calibration"];
    assert_eq!(cal["quality_metric"], "knn_top1");
    assert_eq!(cal["dataset_sha256"], sha256(&data));
    assert_eq!(cal["dataset_images"], 40);
    let ranges = bundle.join(cal["ranges"]["path"].as_str().unwrap());
    assert_eq!(cal["ranges"]["sha256"], sha256(&ranges));
    let ranges: Value = serde_json::from_slice(&std::fs::read(&ranges).unwrap()).unwrap();
    // Pixels of this data lie between dark and bright, normalised.
    let pixels = &ranges["subnets"]["w32-d2"]["pixel_values"];
    let (lo, hi) = (
        pixels["min"].as_f64().unwrap(),
        pixels["max"].as_f64().unwrap(),
    );
    assert!(
        lo > (20.0 / 255.0 - 0.485) / 0.229 - 0.01 && hi < (230.0 / 255.0 - 0.406) / 0.225 + 0.01,
        "{pixels}"
    );

    let subnets = m["subnets"].as_array().unwrap();
    assert_eq!(subnets.len(), 3);
    for (s, scored) in subnets.iter().zip(report["subnets"].as_array().unwrap()) {
        assert_eq!(s["id"], scored["id"]);
        // Dark against bright: any misalignment of labels and images, or
        // of the split, costs accuracy.
        assert_eq!(s["quality"].as_f64(), Some(100.0), "{s}");
        let fidelity = s["fidelity"].as_f64().unwrap();
        if s["id"] == "w32-d4" {
            assert!(
                (fidelity - 1.0).abs() < 1e-6,
                "the reference against itself: {fidelity}"
            );
        } else {
            // Dark against bright varies along one direction, so every
            // sub-network nearly agrees; only the reference is exactly 1.
            assert!(fidelity > 0.5 && fidelity < 1.0, "{}: {fidelity}", s["id"]);
        }
    }

    let inspect = exporter(&[&"inspect", &bundle, &"--verify"]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert!(
        text.contains("quality is knn_top1") && text.contains("100.000"),
        "{text}"
    );
    assert_eq!(sha256(&bundle.join("graphs/w32-d4.onnx")), graphs_before);

    // The ranges file is part of what --verify checks.
    let ranges = bundle.join(cal["ranges"]["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&ranges).unwrap();
    bytes[0] = b' ';
    std::fs::write(&ranges, bytes).unwrap();
    let corrupt = exporter(&[&"inspect", &bundle, &"--verify"]);
    let err = String::from_utf8_lossy(&corrupt.stderr);
    assert!(
        !corrupt.status.success() && err.contains("ranges-") && err.contains("corrupted"),
        "{err}"
    );
}

#[test]
fn label_free_folders_rank_by_fidelity_and_recalibration_replaces_the_ranges() {
    let (dir, bundle) = bundle_copy();
    let data = dir.path().join("photos");
    for i in 0..10 {
        common::write_png(
            &data.join(format!("{i}.png")),
            16,
            &common::grey((i % 2) as u8, i, 16),
        );
    }
    let report = json(&calibrate(&bundle, &data, &["--json"]));
    assert_eq!(report["quality_metric"], "cka_fidelity");
    assert_eq!(report["dataset"]["classes"], Value::Null);
    let first_ranges = manifest(&bundle)["calibration"]["ranges"]["path"].clone();
    for s in manifest(&bundle)["subnets"].as_array().unwrap() {
        assert_eq!(s["quality"], s["fidelity"], "{s}");
        assert_eq!(s["knn_top1"], Value::Null);
    }

    // A labelled dataset now: the metric, the scores and the ranges change,
    // and the old ranges file goes.
    let npz = dir.path().join("calib.npz");
    labelled_npz(&npz, 30);
    let out = calibrate(&bundle, &npz, &["-q", "--limit", "20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = manifest(&bundle);
    assert_eq!(m["calibration"]["quality_metric"], "knn_top1");
    assert_eq!(m["calibration"]["dataset_images"], 20, "--limit 20");
    let files: Vec<_> = std::fs::read_dir(bundle.join("calibration"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_ne!(m["calibration"]["ranges"]["path"], first_ranges);
}

#[test]
fn train_and_val_folders_are_the_split() {
    let (dir, bundle) = bundle_copy();
    let data = dir.path().join("split");
    for (part, n) in [("train", 6), ("val", 4)] {
        for i in 0..n {
            for (class, name) in [(0, "dark"), (1, "bright")] {
                common::write_png(
                    &data.join(format!("{part}/{name}/{i}.png")),
                    8,
                    &common::grey(class, i, 8),
                );
            }
        }
    }
    let report = json(&calibrate(&bundle, &data, &["--json"]));
    let d = &report["dataset"];
    assert_eq!(
        (
            d["classes"].as_u64(),
            d["train"].as_u64(),
            d["val"].as_u64()
        ),
        (Some(2), Some(12), Some(8))
    );
    assert_eq!(report["subnets"][0]["knn_top1"].as_f64(), Some(100.0));
}

/// Every file of the bundle (relative path, sha256), sorted.
fn files(bundle: &Path) -> Vec<(PathBuf, String)> {
    common::files_under(bundle)
        .into_iter()
        .map(|path| {
            let hash = sha256(&path);
            (path.strip_prefix(bundle).unwrap().to_owned(), hash)
        })
        .collect()
}

/// Runs calibrate on `data`, expecting a failure naming `needles`, and
/// checks that the bundle's files are as they were.
fn assert_refused(bundle: &Path, data: &Path, needles: &[&str]) {
    assert_refused_with(bundle, data, &[], needles);
}

/// [`assert_refused`] with `extra` arguments.
fn assert_refused_with(bundle: &Path, data: &Path, extra: &[&str], needles: &[&str]) {
    let before = files(bundle);
    let out = calibrate(bundle, data, extra);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted {}: {err}", data.display());
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
    assert!(files(bundle) == before, "the bundle changed");
}

#[test]
fn bad_datasets_are_named_and_leave_the_bundle_untouched() {
    let (dir, bundle) = bundle_copy();
    let root = dir.path();

    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_refused(&bundle, &empty, &["empty", "no images"]);

    let one = root.join("one-class");
    for i in 0..4 {
        common::write_png(
            &one.join(format!("cats/{i}.png")),
            8,
            &common::grey(0, i, 8),
        );
    }
    assert_refused(
        &bundle,
        &one,
        &["one-class", "only one class (`cats`)", "--no-labels"],
    );

    let broken = root.join("broken");
    for i in 0..4 {
        common::write_png(
            &broken.join(format!("{}/{i}.png", ["a", "b"][i % 2])),
            8,
            &common::grey(0, i, 8),
        );
    }
    std::fs::write(broken.join("b/bad.png"), b"not a png").unwrap();
    assert_refused(&bundle, &broken, &["bad.png", "PNG"]);

    let short = root.join("short-labels.npz");
    let labels: Vec<u8> = (0..3i64).flat_map(i64::to_le_bytes).collect();
    write_npz(
        &short,
        &[
            ("images", npy("|u1", &[4, 8, 8], &[0; 256])),
            ("labels", npy("<i8", &[3], &labels)),
        ],
    );
    assert_refused(
        &bundle,
        &short,
        &["short-labels.npz", "`labels` has shape [3]", "4 images"],
    );

    let sizes = root.join("sizes.npz");
    write_npz(&sizes, &[("images", npy("|u1", &[4, 8, 8], &[0; 200]))]);
    assert_refused(&bundle, &sizes, &["sizes.npz", "needs 256 bytes"]);

    let floats = root.join("floats.npz");
    write_npz(&floats, &[("images", npy("<f4", &[1, 2, 2], &[0; 16]))]);
    assert_refused(&bundle, &floats, &["floats.npz", "<f4"]);

    let no_zip = root.join("text.npz");
    std::fs::write(&no_zip, "hello").unwrap();
    assert_refused(&bundle, &no_zip, &["text.npz", "not an .npz"]);
}

#[test]
fn plot_draws_quality_against_macs_or_changes_nothing() {
    let (dir, bundle) = bundle_copy();
    let data = dir.path().join("calib.npz");
    labelled_npz(&data, 40);
    let before = sha256(&bundle.join("manifest.json"));
    // A plot that cannot be written fails before the bundle changes.
    let nowhere = dir.path().join("missing/pareto.svg");
    let out = calibrate(&bundle, &data, &["--plot", nowhere.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("pareto.svg"), "{err}");
    assert_eq!(sha256(&bundle.join("manifest.json")), before);

    let svg = dir.path().join("pareto.svg");
    let out = calibrate(&bundle, &data, &["--plot", svg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(
        svg.contains("MACs per image") && svg.contains("knn_top1"),
        "{svg}"
    );
    assert_ne!(sha256(&bundle.join("manifest.json")), before);
    // The plot is written through a hidden temporary beside it: none may be left.
    let hidden: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "left beside the plot: {hidden:?}");
}

/// A copy of the tiny bundle and 40 labelled dark and bright images.
fn labelled_bundle() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, bundle) = bundle_copy();
    let data = dir.path().join("calib.npz");
    labelled_npz(&data, 40);
    (dir, bundle, data)
}

/// A head `[classes, width]` as `np.savez` writes `W` and `b` (f64).
fn head_npz(path: &Path, classes: usize, width: usize) -> (Vec<f64>, Vec<f64>) {
    let w: Vec<f64> = (0..classes * width)
        .map(|i| ((i as f64) * 0.37).sin())
        .collect();
    let b: Vec<f64> = (0..classes).map(|i| i as f64 * 0.5 - 0.25).collect();
    let bytes = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    write_npz(
        path,
        &[
            ("W", npy("<f8", &[classes, width], &bytes(&w))),
            ("b", npy("<f8", &[classes], &bytes(&b))),
        ],
    );
    (w, b)
}

/// `runtime run --json` on `bundle` with a bright 16-pixel image, picking
/// the sub-network of quality 1 (the fidelity reference).
fn runtime_run(bundle: &Path, image: &Path) -> Value {
    let bin = Path::new(env!("CARGO_BIN_EXE_exporter")).with_file_name("runtime");
    common::write_png(image, 16, &common::grey(1, 3, 16));
    let out = Command::new(&bin)
        .args(["run", "--json", "--no-cache", "--engine", "tract"])
        .args(["--min-runs", "3", "--min-time", "0", "--memory-mb", "4096"])
        .args(["--latency-ms", "100000", "--min-quality", "1"])
        .arg("--input")
        .arg(image)
        .arg(bundle)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build -p tailor-runtime)", bin.display()));
    json(&out)
}

#[test]
fn a_head_file_gives_every_graph_logits_the_runtime_returns() {
    let (dir, bundle, data) = labelled_bundle();
    let image = dir.path().join("bright.png");

    // Label-free quality, so only the reference scores 1 and `run` picks it.
    assert_succeeded(&calibrate(&bundle, &data, &["--no-labels", "-q"]));
    let plain = runtime_run(&bundle, &image);
    assert_eq!(plain["subnet"]["id"], "w32-d4", "{plain}");
    let output = plain["output"].as_object().unwrap();
    assert!(
        !output.contains_key("logits") && !output.contains_key("class"),
        "{plain}"
    );

    let head = dir.path().join("head.npz");
    let (w, b) = head_npz(&head, 3, 32);
    let before = manifest(&bundle);
    let report = json(&calibrate(
        &bundle,
        &data,
        &["--no-labels", "--head", head.to_str().unwrap(), "--json"],
    ));
    let h = &report["head"];
    assert_eq!(h["classes"], 3);
    assert_eq!(h["transfer"], "plain");
    assert_eq!(
        (h["fitted_on"].as_u64(), h["scored_on"].as_u64()),
        (Some(32), Some(8))
    );
    let subnets = h["subnets"].as_array().unwrap();
    assert_eq!(subnets.len(), 3);
    for s in subnets {
        assert_eq!(s["accuracy"], Value::Null, "no labels: {s}");
        let agreement = s["agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agreement), "{s}");
    }
    assert_eq!(subnets[2]["id"], "w32-d4");
    assert_eq!(subnets[2]["agreement"], 1.0, "the teacher keeps the head");

    // Every graph is new, content-named, listed with its sha256; the old
    // files are gone and the weight file is the same.
    let after = manifest(&bundle);
    for (old, new) in before["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["subnets"].as_array().unwrap())
    {
        let path = new["onnx"].as_str().unwrap();
        let sha = new["onnx_sha256"].as_str().unwrap();
        assert_eq!(
            path,
            format!("graphs/{}.{}.onnx", new["id"].as_str().unwrap(), &sha[..16])
        );
        assert_eq!(sha256(&bundle.join(path)), sha);
        assert!(
            !bundle.join(old["onnx"].as_str().unwrap()).exists(),
            "{old}"
        );
        assert_eq!(old["weights"], new["weights"]);
    }
    assert_succeeded(&exporter(&[&"inspect", &bundle, &"--verify"]));

    // The reference runs the head itself: logits = cls_token·Wᵀ + b, from
    // `runtime run` and from `runtime serve` alike.
    let run = runtime_run(&bundle, &image);
    assert_eq!(run["subnet"]["id"], "w32-d4", "{run}");
    assert_teacher_head(&run["output"], &w, &b);
    let served = runtime_serve(&bundle, &image, &dir.path().join("sock"));
    assert_eq!(served["subnet"], "w32-d4", "{served}");
    assert_teacher_head(&served, &w, &b);
}

/// `logits` and `class` in `output` are the head `W` `[3, 32]`, `b` on its
/// `cls_token`.
fn assert_teacher_head(output: &Value, w: &[f64], b: &[f64]) {
    let cls: Vec<f64> = serde_json::from_value(output["cls_token"].clone()).unwrap();
    let logits: Vec<f64> = serde_json::from_value(output["logits"].clone()).unwrap();
    assert_eq!(logits.len(), 3, "{output}");
    for (class, (&got, &bias)) in logits.iter().zip(b).enumerate() {
        let row = &w[class * 32..(class + 1) * 32];
        let want: f64 = cls.iter().zip(row).map(|(x, w)| x * w).sum::<f64>() + bias;
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "class {class}: {got} vs {want}"
        );
    }
    let top = (0..3)
        .max_by(|&a, &c| logits[a].total_cmp(&logits[c]))
        .unwrap();
    assert_eq!(output["class"], top, "{output}");
}

/// A `runtime serve` process, killed when dropped.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `POST /v1/embed` of `image` to `runtime serve` on `bundle`, listening on
/// the Unix socket `socket`, with `runtime_run`'s limits.
fn runtime_serve(bundle: &Path, image: &Path, socket: &Path) -> Value {
    let bin = Path::new(env!("CARGO_BIN_EXE_exporter")).with_file_name("runtime");
    let _server = Serving(
        Command::new(&bin)
            .arg("serve")
            .arg(bundle)
            .args(["--no-cache", "--engine", "tract"])
            .args(["--min-runs", "3", "--min-time", "0", "--memory-mb", "4096"])
            .args(["--latency-ms", "100000", "--min-quality", "1"])
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "60", "--unix-socket"])
            .arg(socket)
            .args(args)
            .output()
            .expect("curl is installed")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !curl(&["http://tailor/v1/health"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "runtime serve never got healthy"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let image = format!("@{}", image.display());
    json(&curl(&[
        "-H",
        "Content-Type: image/png",
        "--data-binary",
        &image,
        "http://tailor/v1/embed",
    ]))
}

#[test]
fn fit_head_scores_every_subnet_against_the_truncated_head() {
    let (_dir, bundle, data) = labelled_bundle();
    let report = json(&calibrate(
        &bundle,
        &data,
        &["--fit-head", "--json", "--transfer", "ln-kdep"],
    ));
    let h = &report["head"];
    assert_eq!(
        (h["classes"].as_u64(), h["transfer"].as_str()),
        (Some(2), Some("ln-kdep"))
    );
    // Dark against bright: the teacher's fitted head and every transferred
    // one classify all 8 held-out images right.
    assert_eq!(h["teacher_accuracy"], 1.0);
    for s in h["subnets"].as_array().unwrap() {
        assert_eq!(
            (s["accuracy"].as_f64(), s["agreement"].as_f64()),
            (Some(1.0), Some(1.0)),
            "{s}"
        );
        assert!(s["truncated_accuracy"].as_f64().is_some(), "{s}");
    }
    let text = calibrate(&bundle, &data, &["--fit-head"]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.status.success() && stdout.contains("trunc. accuracy") && stdout.contains("w32-d2"),
        "{stdout}"
    );
}

#[test]
fn bad_heads_are_named_and_leave_the_bundle_untouched() {
    let (dir, bundle, data) = labelled_bundle();
    let narrow = dir.path().join("narrow.npz");
    head_npz(&narrow, 2, 16);
    assert_refused_with(
        &bundle,
        &data,
        &["--head", narrow.to_str().unwrap()],
        &["narrow.npz", "takes 16 features", "32 wide"],
    );
    let missing = dir.path().join("missing.safetensors");
    assert_refused_with(
        &bundle,
        &data,
        &["--head", missing.to_str().unwrap()],
        &["missing.safetensors"],
    );
    let garbage = dir.path().join("garbage.npz");
    std::fs::write(&garbage, "not a zip").unwrap();
    assert_refused_with(
        &bundle,
        &data,
        &["--head", garbage.to_str().unwrap()],
        &["garbage.npz"],
    );
    assert_refused_with(
        &bundle,
        &data,
        &["--fit-head", "--no-labels"],
        &["calib.npz", "no labels"],
    );
    assert_refused_with(
        &bundle,
        &data,
        &["--fit-head", "--head", narrow.to_str().unwrap()],
        &["--fit-head", "--head", "cannot be used with"],
    );
    assert_refused_with(
        &bundle,
        &data,
        &["--fit-head", "--transfer", "kdep"],
        &["kdep", "ln-kdep"],
    );
}

#[test]
fn a_failure_half_way_through_the_commit_leaves_the_bundle_as_it_was() {
    let (dir, bundle, data) = labelled_bundle();
    // The ranges file is in place before the new graphs are: a directory in
    // the way of the last graph (its name learnt from a run on a copy) makes
    // writing it fail after them.
    let copy = dir.path().join("copy");
    common::copy_dir(&bundle, &copy);
    assert_succeeded(&calibrate(&copy, &data, &["--fit-head"]));
    let before: Vec<PathBuf> = files(&bundle).into_iter().map(|(p, _)| p).collect();
    let last = files(&copy)
        .into_iter()
        .map(|(p, _)| p)
        .rfind(|p| p.extension().is_some_and(|e| e == "onnx") && !before.contains(p))
        .unwrap();
    std::fs::create_dir_all(bundle.join(&last).join("in-the-way")).unwrap();
    let name = last.file_name().unwrap().to_str().unwrap();
    assert_refused_with(&bundle, &data, &["--fit-head"], &[name]);
    assert_succeeded(&exporter(&[&"inspect", &bundle, &"--verify"]));
}

/// Red front dots and grey dots in an SVG chart, legend entries included.
fn dots(svg: &str) -> (usize, usize) {
    let filled = |colour: &str| {
        svg.lines()
            .filter(|l| l.contains("<circle") && l.contains(&format!("fill=\"{colour}\"")))
            .count()
    };
    (filled("#FF0000"), filled("#969696"))
}

#[test]
fn plot_against_measured_latency_marks_the_chosen_subnet() {
    let (dir, bundle) = bundle_copy();
    let data = dir.path().join("calib.npz");
    labelled_npz(&data, 40);
    // The runtime's own reports, saved as a user would: two of the three
    // sub-networks profiled, and a selection.
    let report = |command: &str, args: &[&str]| {
        let out = common::runtime(command, &bundle, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.path().join(format!("{command}.json"));
        std::fs::write(&path, &out.stdout).unwrap();
        (path, serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    let (profile_json, _) = report("profile", &["--subnets", "w32-d2,w32-d4"]);
    let (selection, selected) = report("select", &["--latency-ms", "1e5", "--memory-mb", "4096"]);
    let selected = selected["subnet"]["id"].as_str().unwrap();

    // Calibrates with `--plot` and `flags`; returns the SVG and stderr.
    let svg = dir.path().join("latency.svg");
    let plot = |flags: &[&str]| {
        let mut args = vec!["--plot", svg.to_str().unwrap()];
        args.extend(flags);
        let out = calibrate(&bundle, &data, &args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        (std::fs::read_to_string(&svg).unwrap(), err)
    };
    let (text, err) = plot(&[
        "--latency",
        profile_json.to_str().unwrap(),
        "--chosen",
        "w32-d4",
    ]);
    assert!(
        err.contains("not plotted, no latency in") && err.contains("profile.json: w32-d3"),
        "{err}"
    );
    assert!(text.contains("measured latency (ms)") && text.contains("chosen: w32-d4"));
    // Two measured sub-networks, each a grey dot, plus the legend's.
    assert_eq!(dots(&text).1, 2 + 1, "{text}");

    let (text, _) = plot(&["--selection", selection.to_str().unwrap()]);
    assert!(text.contains("MACs per image"));
    assert!(text.contains(&format!("chosen: {selected}")), "{selected}");
    assert_eq!(dots(&text).1, 3 + 1, "every sub-network against MACs");
}

#[test]
fn bad_plot_reports_are_named_before_any_image_runs() {
    let (dir, bundle) = bundle_copy();
    let data = dir.path().join("calib.npz");
    labelled_npz(&data, 12);
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let svg = dir.path().join("p.svg");
    let svg = svg.to_str().unwrap();
    let profile = write(
        "profile.json",
        r#"{"results": [{"id": "w32-d2", "p50_ms": 1.5}]}"#,
    );
    let selection = write("selection.json", r#"{"subnet": {"id": "w32-d3"}}"#);
    let foreign = write(
        "foreign.json",
        r#"{"results": [{"id": "w96-d6", "p50_ms": 1.5}]}"#,
    );
    let missing = dir.path().join("nowhere.json");
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--latency", missing], &["nowhere.json"]),
        (
            &["--latency", &selection],
            &[
                "selection.json",
                "not the output of `runtime profile --json`",
            ],
        ),
        (
            &["--selection", &profile],
            &["profile.json", "not the output of `runtime select --json`"],
        ),
        (
            &["--latency", &foreign],
            &["foreign.json", "w96-d6 is not in the bundle"],
        ),
        (
            &["--chosen", "w8-d1"],
            &["--chosen w8-d1", "no such sub-network"],
        ),
        (
            &["--latency", &profile, "--selection", &selection],
            &["w32-d3 has no latency in", "profile.json"],
        ),
    ];
    for (flags, needles) in cases {
        let mut extra = vec!["--plot", svg];
        extra.extend(flags);
        assert_refused_with(&bundle, &data, &extra, needles);
    }
    assert!(!Path::new(svg).exists());
    // The reports need a plot to go into.
    let out = calibrate(&bundle, &data, &["--chosen", "w32-d2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--plot"), "{err}");
}

#[test]
fn inspect_shows_the_pareto_front_once_calibrated() {
    let (dir, bundle) = bundle_copy();
    let inspect = |json: bool| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"inspect", &bundle];
        if json {
            args.push(&"--json");
        }
        let out = exporter(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = inspect(false);
    assert!(
        text.contains("not calibrated") && !text.contains("Pareto"),
        "{text}"
    );
    let json: Value = serde_json::from_str(&inspect(true)).unwrap();
    assert_eq!(json.get("pareto_front"), None);

    // Label-free: the fidelities differ, so the front is not just the
    // cheapest sub-network.
    let photos = dir.path().join("photos");
    for i in 0..10 {
        common::write_png(
            &photos.join(format!("{i}.png")),
            16,
            &common::grey((i % 2) as u8, i, 16),
        );
    }
    assert!(calibrate(&bundle, &photos, &["-q"]).status.success());
    let json: Value = serde_json::from_str(&inspect(true)).unwrap();
    let subnets = json["subnets"].as_array().unwrap();
    let cost = |s: &Value| (s["macs"].as_f64().unwrap(), s["quality"].as_f64().unwrap());
    // The front by its definition: no other sub-network costs no more and
    // scores no less, and is better in one.
    let mut front: Vec<&Value> = subnets
        .iter()
        .filter(|s| {
            let (m, q) = cost(s);
            !subnets.iter().any(|o| {
                let (om, oq) = cost(o);
                om <= m && oq >= q && (om < m || oq > q)
            })
        })
        .collect();
    front.sort_by(|a, b| cost(a).0.total_cmp(&cost(b).0));
    let front: Vec<&Value> = front.iter().map(|s| &s["id"]).collect();
    assert!(front.len() >= 2, "{front:?}");
    assert_eq!(
        json["pareto_front"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        front
    );

    let text = inspect(false);
    let table: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.contains("Pareto"))
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(table.len(), subnets.len(), "{text}");
    for row in &table {
        let on_front = front.iter().any(|id| id.as_str() == Some(row[0]));
        assert_eq!(row.last() == Some(&"*"), on_front, "{text}");
    }
}

#[test]
fn inner_ranges_are_recorded_on_request_with_tract_only() {
    let (dir, bundle) = bundle_copy();
    let data = dir.path().join("calib.npz");
    labelled_npz(&data, 12);
    assert_refused_with(
        &bundle,
        &data,
        &["--ranges", "inner", "--engine", "ort"],
        &["inner activation ranges", "--engine tract"],
    );

    let ranges = |extra: &[&str]| {
        let out = calibrate(&bundle, &data, extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = manifest(&bundle)["calibration"]["ranges"]["path"].clone();
        let text = std::fs::read(bundle.join(path.as_str().unwrap())).unwrap();
        serde_json::from_slice::<Value>(&text).unwrap()
    };
    let interface = ranges(&["-q"]);
    assert_eq!(
        (&interface["format"], &interface["scope"]),
        (&3.into(), &"interface".into())
    );
    // The ranges name their dataset, which a later `route` does not change.
    assert_eq!(
        interface["dataset_sha256"],
        manifest(&bundle)["calibration"]["dataset_sha256"]
    );
    let tensors = interface["subnets"]["w32-d3"].as_object().unwrap();
    assert_eq!(tensors.len(), 3, "{tensors:?}");

    let inner = ranges(&["-q", "--ranges", "inner"]);
    assert_eq!(inner["scope"], "inner");
    let tensors = inner["subnets"]["w32-d3"].as_object().unwrap();
    for name in [
        "patch_embed.proj",
        "blocks.2.mlp.fc1",
        "blocks.2.attn.softmax",
        "cls_token",
    ] {
        assert!(tensors.contains_key(name), "{name} missing: {tensors:?}");
    }
    // Softmax is a probability.
    let softmax = &tensors["blocks.0.attn.softmax"];
    assert!(softmax["min"].as_f64() >= Some(0.0) && softmax["max"].as_f64() <= Some(1.0));
}

/// `calibrate --head` after `quantize`: every variant is scored and gets
/// its head like any sub-network, the fp32 teacher-sized one keeping the
/// teacher's exactly (the reference is never a variant).
#[test]
fn the_head_is_carried_to_int8_and_fp16_variants() {
    let (dir, bundle, data) = labelled_bundle();
    assert_succeeded(&calibrate(&bundle, &data, &["--ranges", "inner", "-q"]));
    assert_succeeded(&exporter(&[
        &"quantize",
        &bundle,
        &"--precision",
        &"int8,fp16",
    ]));
    let head = dir.path().join("head.npz");
    head_npz(&head, 3, 32);
    let report = json(&calibrate(
        &bundle,
        &data,
        &["--no-labels", "--head", head.to_str().unwrap(), "--json"],
    ));
    let scored: Vec<(&str, f64)> = report["head"]["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["agreement"].as_f64().unwrap()))
        .collect();
    assert_eq!(scored.len(), 9, "{scored:?}");
    assert!(scored.contains(&("w32-d4", 1.0)), "{scored:?}");
    let m = manifest(&bundle);
    for id in ["w32-d2@int8-u8", "w32-d4@fp16"] {
        assert!(scored.iter().any(|(s, _)| *s == id), "{id}: {scored:?}");
        let s = m["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap();
        let graph = bundle.join(s["onnx"].as_str().unwrap());
        let model =
            onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&graph).unwrap()).unwrap();
        let outputs: Vec<&str> = model.graph.output.iter().map(|o| o.name.as_str()).collect();
        assert!(outputs.contains(&"logits"), "{id}: {outputs:?}");
    }
}
