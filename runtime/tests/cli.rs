//! The `runtime` command as a user meets it, on a small committed bundle
//! (runtime/tests/fixtures/bundle-tiny: three depths of width 32 exported
//! from tests/fixtures/vit-tiny; tests/bundle_fixture.rs keeps it current).

mod common;

use common::copy_dir;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny")
}

/// A private copy of the bundle, in a temporary directory of its own.
fn bundle() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    copy_dir(&fixture(), &out);
    (dir, out)
}

/// Quick measuring: the tests check behaviour, not speed.
const FAST: [&str; 4] = ["--min-runs", "3", "--min-time", "0"];

fn runtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runtime"))
        .args(args)
        .output()
        .unwrap()
}

/// The default cache directory of a test: beside its bundle copy, never the
/// user's own cache.
fn cache_dir(bundle: &Path) -> PathBuf {
    bundle.with_file_name("cache")
}

/// `runtime` with the default cache in [`cache_dir`].
fn runtime_for(bundle: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runtime"))
        .args(args)
        .env("TAILOR_CACHE_DIR", cache_dir(bundle))
        .output()
        .unwrap()
}

fn select(bundle: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["select", bundle.to_str().unwrap()];
    args.extend(FAST);
    args.extend(extra);
    runtime_for(bundle, &args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn a_generous_budget_selects_the_largest_and_reports_the_contract() {
    let (_d, b) = bundle();
    let v = json(&select(
        &b,
        &["--latency-ms", "100000", "--memory-mb", "4096", "--json"],
    ));
    assert_eq!(v["subnet"]["id"], "w32-d4");
    assert_eq!(
        (v["subnet"]["width"].as_u64(), v["subnet"]["depth"].as_u64()),
        (Some(32), Some(4))
    );
    for key in ["p50_ms", "p90_ms", "p99_ms", "mean_ms", "rss_mb"] {
        assert!(v["measured"][key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    let m = &v["measured"];
    assert!(
        m["p50_ms"].as_f64() <= m["p90_ms"].as_f64()
            && m["p90_ms"].as_f64() <= m["p99_ms"].as_f64()
    );
    assert_eq!(v["limits"]["latency_ms"], 100000.0);
    assert_eq!(v["limits"]["percentile"], 90);
    assert_eq!(v["cache"], "miss");
    let measured = v["candidates_measured"].as_u64().unwrap();
    assert!((1..=3).contains(&measured), "{v}");
    assert_eq!(v["trials"].as_array().unwrap().len() as u64, measured);
    assert!(v["selection_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_cache_hits_then_invalidates_on_any_key_change() {
    let (_d, b) = bundle();
    let limits = ["--latency-ms", "100000", "--memory-mb", "4096", "--json"];
    let first = json(&select(&b, &limits));
    assert_eq!(first["cache"], "miss");
    let second = json(&select(&b, &limits));
    assert_eq!(second["cache"], "hit");
    assert_eq!(second["candidates_measured"], 0);
    assert_eq!(second["subnet"], first["subnet"]);
    // Another limit, percentile or thread count is another key.
    for changed in [
        vec!["--latency-ms", "90000", "--memory-mb", "4096", "--json"],
        vec![
            "--latency-ms",
            "100000",
            "--memory-mb",
            "4096",
            "--percentile",
            "99",
            "--json",
        ],
        vec![
            "--latency-ms",
            "100000",
            "--memory-mb",
            "4096",
            "--threads",
            "2",
            "--json",
        ],
        vec!["--latency-ms", "100000", "--memory-mb", "2048", "--json"],
    ] {
        assert_eq!(json(&select(&b, &changed))["cache"], "miss", "{changed:?}");
    }
    // --no-cache decides afresh and says so.
    let fresh = json(&select(
        &b,
        &[
            "--latency-ms",
            "100000",
            "--memory-mb",
            "4096",
            "--json",
            "--no-cache",
        ],
    ));
    assert_eq!(fresh["cache"], "disabled");
    assert!(fresh["candidates_measured"].as_u64().unwrap() > 0);
    // A corrupt cache file is a miss, never an error.
    std::fs::write(cache_dir(&b).join("decisions.postcard"), b"garbage").unwrap();
    assert_eq!(json(&select(&b, &limits))["cache"], "miss");
}

#[test]
fn nothing_fits_has_its_own_exit_code_and_names_the_smallest() {
    let (_d, b) = bundle();
    let o = select(&b, &["--latency-ms", "0.000001", "--memory-mb", "4096"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no sub-network fits") && err.contains("w32-d2") && err.contains("ms"),
        "{err}"
    );
    // Memory: every candidate is predicted over 1 MB, none is even loaded.
    let o = select(&b, &["--latency-ms", "100000", "--memory-mb", "0.01"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("w32-d2") && stderr(&o).contains("MB"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn nonsense_limits_are_refused() {
    let (_d, b) = bundle();
    for (args, needle) in [
        (vec!["--latency-ms", "0"], "latency"),
        (vec!["--latency-ms", "-5"], "latency"),
        (vec!["--latency-ms", "10", "--memory-mb", "0"], "memory"),
        (
            vec!["--latency-ms", "10", "--memory-fraction", "1.5"],
            "memory fraction",
        ),
        (vec!["--latency-ms", "10", "--batch", "0"], "batch"),
    ] {
        let o = select(&b, &args);
        assert!(
            !o.status.success() && o.status.code() != Some(3),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains(needle) && !stderr(&o).contains("panicked"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = select(&b, &["--latency-ms", "10", "--percentile", "95"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "clap rejects unmeasured percentiles: {}",
        stderr(&o)
    );
}

#[test]
fn a_corrupted_candidate_is_skipped_with_a_fallback_note() {
    let (_d, b) = bundle();
    // Flip bytes of the largest graph: its sha256 no longer matches.
    let graph = b.join("graphs/w32-d4.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&graph, bytes).unwrap();
    let v = json(&select(
        &b,
        &[
            "--latency-ms",
            "100000",
            "--memory-mb",
            "4096",
            "--json",
            "--no-cache",
        ],
    ));
    assert_eq!(v["subnet"]["id"], "w32-d3");
    let failed = v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "w32-d4")
        .expect("tried w32-d4");
    let note = failed["note"].as_str().unwrap();
    assert!(
        note.contains("falling back") && note.contains("w32-d4.onnx") && note.contains("sha256"),
        "{note}"
    );
}

#[test]
fn broken_bundles_are_clear_errors() {
    let (_d, b) = bundle();
    let args = ["--latency-ms", "10"];
    // Truncated manifest.
    let postcard = b.join("manifest.postcard");
    let bytes = std::fs::read(&postcard).unwrap();
    std::fs::write(&postcard, &bytes[..bytes.len() / 2]).unwrap();
    let err = stderr(&select(&b, &args));
    assert!(
        err.contains("manifest.postcard") && err.contains("truncated"),
        "{err}"
    );
    // Unknown format version (the leading varint).
    let mut future = bytes.clone();
    future[0] = 99;
    std::fs::write(&postcard, &future).unwrap();
    let err = stderr(&select(&b, &args));
    assert!(
        err.contains("version 99") && err.contains("not supported"),
        "{err}"
    );
    // Missing file.
    std::fs::remove_file(&postcard).unwrap();
    let o = select(&b, &args);
    assert!(
        !o.status.success() && stderr(&o).contains("manifest.postcard"),
        "{}",
        stderr(&o)
    );
    // Not a bundle at all.
    let o = select(Path::new("/nonexistent/bundle"), &args);
    assert!(
        !o.status.success() && stderr(&o).contains("/nonexistent/bundle"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn profile_reports_every_requested_subnet() {
    let (_d, b) = bundle();
    let mut args = vec!["profile", b.to_str().unwrap(), "--all", "--json"];
    args.extend(FAST);
    let v = json(&runtime(&args));
    let results = v["results"].as_array().unwrap();
    assert_eq!(
        results
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["w32-d2", "w32-d3", "w32-d4"]
    );
    for r in results {
        for key in [
            "load_ms", "first_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "rss_mb", "peak_mb",
        ] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
        }
        assert!(r["peak_mb"].as_f64() >= r["rss_mb"].as_f64(), "{r}");
        assert!(r["runs"].as_u64().unwrap() >= 3);
    }
    let mut args = vec![
        "profile",
        b.to_str().unwrap(),
        "--subnets",
        "w32-d3",
        "--csv",
    ];
    args.extend(FAST);
    let o = runtime(&args);
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<_> = text.lines().collect();
    assert!(
        lines[0].starts_with("id,load_ms") && lines[1].starts_with("w32-d3,") && lines.len() == 2,
        "{text}"
    );
    let mut args = vec!["profile", b.to_str().unwrap(), "--subnets", "w99-d1"];
    args.extend(FAST);
    let o = runtime(&args);
    assert!(
        !o.status.success() && stderr(&o).contains("w99-d1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_selects_then_infers_on_a_png() {
    let (d, b) = bundle();
    let png_path = d.path().join("image.png");
    let file = std::fs::File::create(&png_path).unwrap();
    let mut enc = png::Encoder::new(file, 40, 24);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = (0..40 * 24 * 3).map(|i| (i * 7 % 256) as u8).collect();
    enc.write_header().unwrap().write_image_data(&data).unwrap();
    let mut args = vec![
        "run",
        b.to_str().unwrap(),
        "--latency-ms",
        "100000",
        "--memory-mb",
        "4096",
        "--input",
        png_path.to_str().unwrap(),
        "--json",
    ];
    args.extend(FAST);
    let v = json(&runtime_for(&b, &args));
    let cls = v["output"]["cls_token"].as_array().unwrap();
    assert_eq!(cls.len(), 32);
    assert!(cls.iter().all(|x| x.as_f64().unwrap().is_finite()));
    assert_eq!(
        v["output"]["patch_tokens_shape"],
        serde_json::json!([1, 16, 32])
    );
    let mut bad = args.clone();
    let missing = d.path().join("missing.png");
    bad[7] = missing.to_str().unwrap();
    let o = runtime_for(&b, &bad);
    assert!(
        !o.status.success() && stderr(&o).contains("missing.png"),
        "{}",
        stderr(&o)
    );
}
