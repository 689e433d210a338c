//! `exporter quantize` as a user meets it: int8 variants listed in the
//! manifest beside their parents, a bundle that still verifies and that
//! `runtime select` chooses from, and every refusal naming its fix with the
//! bundle left byte-identical.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{copy_dir, exporter, files_under, runtime};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tailor_runtime::manifest::Manifest;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bundle_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    copy_dir(&root().join("runtime/tests/fixtures/bundle-tiny"), &bundle);
    (dir, bundle)
}

fn digits() -> PathBuf {
    root().join("examples/mnist-calib.npz")
}

fn run(args: &[&str], bundle: &Path) -> Output {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&args[0], &bundle];
    all.extend(args[1..].iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    exporter(&all)
}

fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Every file of the bundle with its sha256.
fn snapshot(bundle: &Path) -> Vec<(PathBuf, String)> {
    files_under(bundle)
        .into_iter()
        .map(|p| {
            let sha = format!("{:x}", Sha256::digest(std::fs::read(&p).unwrap()));
            (p, sha)
        })
        .collect()
}

fn assert_refused(bundle: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(bundle);
    let out = run(args, bundle);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    assert_eq!(snapshot(bundle), before, "the bundle changed: {stderr}");
}

/// `exporter calibrate BUNDLE --data mnist-calib.npz -q EXTRA...`
fn calibrate(bundle: &Path, extra: &[&str]) {
    let data = digits();
    let mut args = vec!["calibrate", "--data", data.to_str().unwrap(), "-q"];
    args.extend(extra);
    succeeded(&run(&args, bundle));
}

fn calibrated_inner() -> (tempfile::TempDir, PathBuf) {
    let (dir, bundle) = bundle_copy();
    calibrate(&bundle, &["--limit", "60", "--ranges", "inner"]);
    (dir, bundle)
}

fn manifest(bundle: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap()
}

fn subnet<'a>(m: &'a Value, id: &str) -> &'a Value {
    m["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {m:#}"))
}

/// The ids `quantize --json` says it wrote.
fn variant_ids(summary: &Value) -> Vec<&str> {
    summary["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect()
}

#[test]
fn without_inner_ranges_the_error_names_the_command_and_nothing_changes() {
    let (_dir, bundle) = bundle_copy();
    let int8 = ["quantize", "--precision", "int8"];
    assert_refused(
        &bundle,
        &int8,
        &[
            "exporter calibrate BUNDLE --data DATA --ranges inner",
            "--data",
        ],
    );
    // Calibrated, but only the interface's ranges recorded.
    calibrate(&bundle, &["--limit", "40"]);
    assert_refused(
        &bundle,
        &int8,
        &[
            "insides",
            "exporter calibrate BUNDLE --data DATA --ranges inner",
        ],
    );
}

/// Replaces the bundle's ranges file with `content`, listed in the
/// manifest with its size and sha256 as calibrate lists what it writes.
fn listed_ranges(bundle: &Path, content: &[u8]) {
    let bytes = std::fs::read(bundle.join("manifest.postcard")).unwrap();
    let mut m = Manifest::from_postcard(&bytes).unwrap();
    let ranges = &mut m.calibration.as_mut().unwrap().ranges;
    std::fs::write(bundle.join(ranges.path), content).unwrap();
    ranges.bytes = content.len() as u64;
    ranges.sha256 = tailor_runtime::manifest::Sha256(Sha256::digest(content).into());
    std::fs::write(bundle.join("manifest.postcard"), m.to_postcard()).unwrap();
    std::fs::write(bundle.join("manifest.json"), m.to_json()).unwrap();
}

#[test]
fn ranges_from_another_dataset_or_changed_since_are_refused() {
    let (_dir, bundle) = calibrated_inner();
    let int8 = ["quantize", "--precision", "int8"];
    // The manifest states another dataset than the ranges were recorded on.
    let bytes = std::fs::read(bundle.join("manifest.postcard")).unwrap();
    let mut m = Manifest::from_postcard(&bytes).unwrap();
    let stated = m.calibration.as_mut().unwrap();
    stated.dataset_sha256.0[0] ^= 1;
    std::fs::write(bundle.join("manifest.postcard"), m.to_postcard()).unwrap();
    std::fs::write(bundle.join("manifest.json"), m.to_json()).unwrap();
    assert_refused(
        &bundle,
        &int8,
        &[
            "recorded on another dataset",
            "--ranges inner",
            "--data DATA",
        ],
    );
    // Put back, the ranges file changed after calibrate wrote it.
    m.calibration.as_mut().unwrap().dataset_sha256.0[0] ^= 1;
    std::fs::write(bundle.join("manifest.postcard"), m.to_postcard()).unwrap();
    std::fs::write(bundle.join("manifest.json"), m.to_json()).unwrap();
    let ranges = bundle.join(m.calibration.as_ref().unwrap().ranges.path);
    let mut text = std::fs::read(&ranges).unwrap();
    // A recorded value, not the format: parsed alike, read differently.
    let digit = text.iter().rposition(u8::is_ascii_digit).unwrap();
    text[digit] = if text[digit] == b'9' {
        b'8'
    } else {
        text[digit] + 1
    };
    std::fs::write(&ranges, text).unwrap();
    assert_refused(&bundle, &int8, &["against the manifest"]);
}

#[test]
fn variants_are_listed_verified_inspected_and_selected() {
    let (_dir, bundle) = calibrated_inner();
    let out = succeeded(&run(
        &["quantize", "--precision", "int8", "--json"],
        &bundle,
    ));
    let summary: Value = serde_json::from_str(&out).unwrap();
    let ids = variant_ids(&summary);
    assert_eq!(ids, ["w32-d2@int8-u8", "w32-d3@int8-u8", "w32-d4@int8-u8"]);

    let m = manifest(&bundle);
    assert_eq!(m["format_version"], 6);
    assert_eq!(subnet(&m, "w32-d3")["precision"], "fp32");
    let (parent, variant) = (subnet(&m, "w32-d3"), subnet(&m, "w32-d3@int8-u8"));
    assert_eq!(
        variant["precision"]["int8"],
        serde_json::json!({"parent": "w32-d3", "encoding": "u8", "calibrator": "percentile"})
    );
    assert_eq!(variant["weights"][0]["path"], "graphs/weights/w32.int8.bin");
    assert_eq!(variant["macs"], parent["macs"]);
    assert_eq!(variant["params"], parent["params"]);
    let (fp32, int8) = (
        parent["weight_bytes"].as_u64().unwrap(),
        variant["weight_bytes"].as_u64().unwrap(),
    );
    assert!(int8 * 10 < fp32 * 4, "int8 {int8} bytes of fp32 {fp32}");
    // One int8 file for the width, shared by every depth.
    let int8_files: Vec<_> = files_under(&bundle.join("graphs/weights"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".int8.bin"))
        .collect();
    assert_eq!(int8_files.len(), 1, "{int8_files:?}");

    let inspect = succeeded(&run(&["inspect", "--verify"], &bundle));
    let row = inspect
        .lines()
        .find(|l| l.starts_with("w32-d3@int8-u8"))
        .unwrap_or_else(|| panic!("{inspect}"));
    assert!(row.contains("int8-u8"), "{row}");

    // Scored like any sub-network, the drop against the parent shown.
    calibrate(&bundle, &["--limit", "60"]);
    let m = manifest(&bundle);
    let drop = subnet(&m, "w32-d3@int8-u8")["quality"].as_f64().unwrap()
        - subnet(&m, "w32-d3")["quality"].as_f64().unwrap();
    let inspect = succeeded(&run(&["inspect"], &bundle));
    let row = inspect
        .lines()
        .find(|l| l.starts_with("w32-d3@int8-u8"))
        .unwrap();
    assert!(row.contains(&format!("{drop:+.2}")), "drop {drop}: {row}");
    let json: Value =
        serde_json::from_str(&succeeded(&run(&["inspect", "--json"], &bundle))).unwrap();
    let listed = subnet(&json, "w32-d3@int8-u8")["quality_drop"]
        .as_f64()
        .unwrap();
    assert!((listed - drop).abs() < 1e-4, "{listed} against {drop}");
    assert_eq!(subnet(&json, "w32-d3")["quality_drop"], Value::Null);
    // Fidelity is measured against the largest fp32 sub-network, never its
    // equally large variant.
    assert_eq!(subnet(&m, "w32-d4")["fidelity"], 1.0);
    assert!(subnet(&m, "w32-d4@int8-u8")["fidelity"].as_f64().unwrap() < 1.0);

    // The runtime loads and measures every variant in tract...
    let out = runtime("profile", &bundle, &["--all"]);
    let profile: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let measured: Vec<&str> = profile["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["p50_ms"].as_f64().is_some_and(|t| t > 0.0))
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for id in ["w32-d2@int8-u8", "w32-d3@int8-u8", "w32-d4@int8-u8"] {
        assert!(measured.contains(&id), "{id} not measured: {profile:#}");
    }
    // ...and selects among fp32 and int8 candidates alike.
    let out = runtime("select", &bundle, &["--latency-ms", "10000"]);
    let chosen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{chosen:#}");
    let id = chosen["subnet"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{chosen:#}"));
    assert!(
        m["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id),
        "{id}"
    );
}

#[test]
fn a_failure_half_way_leaves_the_bundle_byte_identical() {
    let (_dir, bundle) = calibrated_inner();
    // The last variant's graph cannot be written: a directory holds its
    // name, after the weight file and the first graphs are staged.
    std::fs::create_dir(bundle.join("graphs/w32-d4@int8-u8.onnx")).unwrap();
    assert_refused(
        &bundle,
        &["quantize", "--precision", "int8"],
        &["w32-d4@int8-u8.onnx"],
    );
    assert!(!files_under(bundle.parent().unwrap())
        .iter()
        .any(|p| p.to_string_lossy().contains(".partial")));
}

#[test]
fn mse_reads_the_recorded_samples_and_names_the_command_without_them() {
    let (_dir, bundle) = calibrated_inner();
    let mse = ["quantize", "--precision", "int8", "--calibrator", "mse"];
    // A ranges file as recorded before it kept samples.
    let path = bundle.join(
        manifest(&bundle)["calibration"]["ranges"]["path"]
            .as_str()
            .unwrap(),
    );
    let recorded = std::fs::read(&path).unwrap();
    let mut ranges: Value = serde_json::from_slice(&recorded).unwrap();
    let samples = ranges["samples"]["w32-d2"].as_object().unwrap();
    assert!(samples.contains_key("pixel_values"), "{samples:?}");
    assert!(samples
        .values()
        .all(|s| (1..=1024).contains(&s.as_array().unwrap().len())));
    assert!(
        samples
            .values()
            .flat_map(|s| s.as_array().unwrap())
            .any(|v| v.as_f64().unwrap() < 0.0),
        "samples are signed"
    );
    ranges.as_object_mut().unwrap().remove("samples");
    listed_ranges(&bundle, &serde_json::to_vec(&ranges).unwrap());
    assert_refused(
        &bundle,
        &mse,
        &[
            "MSE",
            "exporter calibrate BUNDLE --data DATA --ranges inner",
            "--calibrator minmax or percentile",
        ],
    );
    listed_ranges(&bundle, &recorded);
    succeeded(&run(&mse, &bundle));
    let m = manifest(&bundle);
    assert_eq!(
        subnet(&m, "w32-d3@int8-u8")["precision"]["int8"]["calibrator"],
        "mse"
    );
}

#[test]
fn sdr_paths_are_refused_int8_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let sdr = dir.path().join("sdr");
    let teacher = root().join("examples/sdr-tiny/sdr.safetensors");
    let out = exporter(&[&"--all-subnets", &teacher, &"-o", &sdr, &"-q"]);
    succeeded(&out);
    assert_refused(
        &sdr,
        &["quantize", "--precision", "int8"],
        &["the sdr family cannot be quantised", "SDR"],
    );
}

#[test]
fn data_records_the_ranges_on_the_way_without_scoring() {
    let (_dir, bundle) = bundle_copy();
    let data = digits();
    let out = succeeded(&run(
        &[
            "quantize",
            "--precision",
            "int8",
            "--encoding",
            "s8",
            "--data",
            data.to_str().unwrap(),
        ],
        &bundle,
    ));
    assert_eq!(out.lines().count(), 3, "{out}");
    let m = manifest(&bundle);
    assert_eq!(
        subnet(&m, "w32-d2@int8-s8")["precision"]["int8"]["encoding"],
        "s8"
    );
    assert_eq!(m["calibration"], Value::Null, "{m:#}");
    succeeded(&run(&["inspect", "--verify"], &bundle));
}

#[test]
fn fp16_variants_need_no_ranges_and_share_one_file_per_width() {
    let (_dir, bundle) = bundle_copy();
    let out = succeeded(&run(
        &["quantize", "--precision", "fp16", "--json"],
        &bundle,
    ));
    let summary: Value = serde_json::from_str(&out).unwrap();
    let ids = variant_ids(&summary);
    assert_eq!(ids, ["w32-d2@fp16", "w32-d3@fp16", "w32-d4@fp16"]);
    let m = manifest(&bundle);
    assert_eq!(m["format_version"], 6);
    let (parent, variant) = (subnet(&m, "w32-d3"), subnet(&m, "w32-d3@fp16"));
    assert_eq!(
        variant["precision"],
        serde_json::json!({"fp16": {"parent": "w32-d3"}})
    );
    assert_eq!(variant["macs"], parent["macs"]);
    for id in ["w32-d2@fp16", "w32-d4@fp16"] {
        assert_eq!(subnet(&m, id)["weights"], variant["weights"], "{id}");
    }
    let file = &variant["weights"][0];
    assert_eq!(file["path"], "graphs/weights/w32.fp16.bin");
    let (fp16, fp32) = (
        file["bytes"].as_u64().unwrap(),
        parent["weights"][0]["bytes"].as_u64().unwrap(),
    );
    assert!(fp16 * 100 <= fp32 * 52, "fp16 {fp16} bytes of fp32 {fp32}");
    let inspect = succeeded(&run(&["inspect", "--verify"], &bundle));
    let row = inspect
        .lines()
        .find(|l| l.starts_with("w32-d3@fp16"))
        .unwrap_or_else(|| panic!("{inspect}"));
    assert!(row.contains(" fp16 "), "{row}");
    // The runtime loads and measures them in tract.
    let out = runtime("profile", &bundle, &["--all"]);
    let profile: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let measured = |id: &str| {
        profile["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id && r["p50_ms"].as_f64().is_some_and(|t| t > 0.0))
    };
    assert!(measured("w32-d3@fp16"), "{profile:#}");
}

#[test]
fn int8_and_fp16_are_written_together_or_not_at_all() {
    let (_dir, bundle) = bundle_copy();
    let both = ["quantize", "--precision", "int8,fp16"];
    // Without ranges the int8 half is refused, and the fp16 one not written.
    assert_refused(
        &bundle,
        &both,
        &["exporter calibrate BUNDLE --data DATA --ranges inner"],
    );
    calibrate(&bundle, &["--limit", "60", "--ranges", "inner"]);
    let out = succeeded(&run(&both, &bundle));
    assert_eq!(out.lines().count(), 6, "{out}");
    let m = manifest(&bundle);
    assert_eq!(
        subnet(&m, "w32-d2@fp16")["precision"]["fp16"]["parent"],
        "w32-d2"
    );
    assert_eq!(
        subnet(&m, "w32-d2@int8-u8")["precision"]["int8"]["parent"],
        "w32-d2"
    );
    succeeded(&run(&["inspect", "--verify"], &bundle));
}
