//! The `runtime` command as a user meets it, on a small committed bundle
//! (runtime/tests/fixtures/bundle-tiny: three depths of width 32 exported
//! from tests/fixtures/vit-tiny; tests/bundle_fixture.rs keeps it current).

mod common;

use common::copy_dir;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny")
}

/// A private copy of the bundle, beside a private decision cache
/// (`cache_dir`).
fn bundle() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    copy_dir(&fixture(), &out);
    (dir, out)
}

/// Quick measuring: the tests check behaviour, not speed.
const FAST: [&str; 4] = ["--min-runs", "3", "--min-time", "0"];

/// Where the runtime caches decisions for the bundle at `bundle`.
fn cache_dir(bundle: &Path) -> PathBuf {
    bundle.with_file_name("cache")
}

/// The runtime command with its default cache directory private to the
/// test (through `$TAILOR_CACHE_DIR`, as a service would set it).
fn command(bundle: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runtime"));
    c.env("TAILOR_CACHE_DIR", cache_dir(bundle))
        .env_remove("CACHE_DIRECTORY");
    c
}

fn runtime(args: &[&str]) -> Output {
    let bundle = args.get(1).map_or(Path::new("/nonexistent"), Path::new);
    command(bundle).args(args).output().unwrap()
}

fn select_args<'a>(bundle: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["select", bundle.to_str().unwrap()];
    args.extend(FAST);
    args.extend(extra);
    args
}

fn select(bundle: &Path, extra: &[&str]) -> Output {
    runtime(&select_args(bundle, extra))
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
    assert_eq!(v["subnet"]["precision"], "fp32");
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
    // The winner was measured again, in fresh jobs, before it was returned.
    let confirmed = &v["confirmed"];
    assert_eq!(confirmed["id"], "w32-d4", "{v}");
    let trials = v["trials"].as_array().unwrap();
    let confirmation = trials
        .iter()
        .rfind(|t| t["id"] == "w32-d4" && t["stage"] == "confirm")
        .expect("a confirmation trial of the winner");
    assert_eq!(confirmation["measured"]["runs"], confirmed["runs"]);
    assert_eq!(confirmation["jobs"], confirmed["jobs"]);
    assert!(confirmed["jobs"].as_u64().unwrap() >= 3, "{v}");
    assert!(confirmed["upper_ms"].as_f64() >= confirmed["latency_ms"].as_f64());
}

#[test]
fn precision_lists_are_checked_and_a_format_the_bundle_lacks_is_named() {
    let (_d, b) = bundle();
    let o = select(&b, &["--latency-ms", "100000", "--precision", "fp32,int4"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("expected fp32, fp16 or int8"),
        "{}",
        stderr(&o)
    );
    let o = select(&b, &["--latency-ms", "100000", "--precision", "int8"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no sub-network in int8 (it has fp32)") && err.contains("exporter quantize"),
        "{err}"
    );
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
    // Another limit, percentile or thread count (than the default, the CPUs
    // this process may use) is another key.
    let threads = (std::thread::available_parallelism().unwrap().get() + 1).to_string();
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
            &threads,
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
fn the_default_memory_limit_hits_the_cache_on_the_next_boot() {
    // Half of MemAvailable changes between runs; the key holds the fraction.
    let (_d, b) = bundle();
    let limits = ["--latency-ms", "100000", "--json"];
    assert_eq!(json(&select(&b, &limits))["cache"], "miss");
    let again = json(&select(&b, &limits));
    assert_eq!(
        (&again["cache"], &again["candidates_measured"]),
        (&"hit".into(), &0.into()),
        "{again}"
    );
    // Each decision keeps its own entry: another limit does not evict it.
    assert_eq!(
        json(&select(&b, &["--latency-ms", "90000", "--json"]))["cache"],
        "miss"
    );
    assert_eq!(json(&select(&b, &limits))["cache"], "hit");
}

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            files.extend(snapshot(&e.path()));
        } else {
            files.push((e.path(), meta.len(), meta.modified().unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn selection_never_writes_into_the_bundle() {
    // Bundles are read-only on devices: the cache lives elsewhere.
    let (_d, b) = bundle();
    let before = snapshot(&b);
    json(&select(&b, &["--latency-ms", "100000", "--json"]));
    assert_eq!(snapshot(&b), before);
    assert!(cache_dir(&b).join("decisions.postcard").is_file());
}

#[test]
fn an_unwritable_cache_is_a_warning_and_said_so() {
    let (d, b) = bundle();
    let blocker = d.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let cache = blocker.join("decisions.postcard");
    let args = [
        "--latency-ms",
        "100000",
        "--json",
        "--cache",
        cache.to_str().unwrap(),
    ];
    for _ in 0..2 {
        let o = select(&b, &args);
        let v = json(&o);
        assert_eq!(v["cache"], "unwritable", "{v}");
        assert!(v["candidates_measured"].as_u64().unwrap() > 0);
        let err = stderr(&o);
        assert!(err.contains("warning") && err.contains("a-file"), "{err}");
    }
}

/// Asserts that selection `v` measured afresh and chose w32-d3, with a note
/// holding each of `needles` on why w32-d4 was dropped.
fn reselected_d3(v: &serde_json::Value, needles: &[&str]) {
    assert_eq!(
        (&v["cache"], &v["subnet"]["id"]),
        (&"miss".into(), &"w32-d3".into()),
        "{v}"
    );
    let notes = v["notes"].to_string();
    assert!(needles.iter().all(|n| notes.contains(n)), "{notes}");
}

#[test]
fn a_cached_winner_that_broke_is_selected_afresh_and_replaced() {
    let (_d, b) = bundle();
    let limits = ["--latency-ms", "100000", "--memory-mb", "4096", "--json"];
    assert_eq!(json(&select(&b, &limits))["subnet"]["id"], "w32-d4");
    let graph = b.join("graphs/w32-d4.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&graph, bytes).unwrap();
    let o = select(&b, &limits);
    reselected_d3(&json(&o), &["cached choice w32-d4", "sha256"]);
    assert!(stderr(&o).contains("warning"), "{}", stderr(&o));
    // The new decision replaced the broken one.
    let v = json(&select(&b, &limits));
    assert_eq!(
        (&v["cache"], &v["subnet"]["id"]),
        (&"hit".into(), &"w32-d3".into()),
        "{v}"
    );
}

/// Flips the lowest bit of byte `at` of `path` in place, keeping its size,
/// inode and mtime: bit-rot that only a hash sees.
fn flip_in_place(path: &Path, at: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mtime = file.metadata().unwrap().modified().unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, at as u64).unwrap();
    file.write_all_at(&[byte[0] ^ 1], at as u64).unwrap();
    file.set_modified(mtime).unwrap();
}

#[test]
fn a_cached_boot_hashes_the_served_files_unless_told_changed() {
    let (d, b) = bundle();
    let limits = ["--latency-ms", "100000", "--memory-mb", "4096", "--json"];
    json(&select(&b, &limits));
    // Corrupt the weights but keep size, inode and mtime: only a hash sees it.
    flip_in_place(&b.join("graphs/weights/w32.bin"), 0);
    // By default the cached winner's files are hashed in full before it is
    // served: the damage is found, and every candidate (all read w32.bin)
    // fails.
    let o = select(&b, &limits);
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        stderr(&o).contains("w32.bin") && stderr(&o).contains("corrupted"),
        "{}",
        stderr(&o)
    );
    // `run` starts the same way.
    let png = d.path().join("image.png");
    write_png(&png);
    let mut run = vec!["run", b.to_str().unwrap(), "--input", png.to_str().unwrap()];
    run.extend(&limits);
    run.extend(FAST);
    let o = runtime(&run);
    assert!(
        !o.status.success() && stderr(&o).contains("w32.bin"),
        "{}",
        stderr(&o)
    );
    // `--verify changed` trusts the recorded stamp, which still matches:
    // the cached boot does not re-hash, and serves the damaged file.
    let changed = [&limits[..], &["--verify", "changed"]].concat();
    assert_eq!(json(&select(&b, &changed))["cache"], "hit");
    // --verify always hashes what the winner reads, finds the damage, and every
    // candidate (all read w32.bin) fails.
    let o = select(&b, &[&limits[..], &["--verify", "always"]].concat());
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(stderr(&o).contains("w32.bin"), "{}", stderr(&o));
}

#[test]
fn a_fresh_search_hashes_its_winner_in_full_and_selects_again_without_it() {
    let (_d, b) = bundle();
    let limits = |ms| vec!["--latency-ms", ms, "--memory-mb", "4096", "--json"];
    assert_eq!(
        json(&select(&b, &limits("100000")))["subnet"]["id"],
        "w32-d4"
    );
    // Damage the winner's graph where it still loads (its doc string),
    // keeping size, inode and mtime: only a hash sees it.
    let graph = b.join("graphs/w32-d4.onnx");
    let bytes = std::fs::read(&graph).unwrap();
    flip_in_place(&graph, bytes.windows(3).position(|w| w == b"POA").unwrap());
    // Other limits: a cache miss, whose search trusts the recorded stamps
    // while measuring; its winner is hashed in full before it is served.
    let v = json(&select(&b, &limits("90000")));
    reselected_d3(&v, &["w32-d4.onnx", "selecting again"]);
}

#[test]
fn two_runtimes_starting_at_once_measure_once() {
    let (_d, b) = bundle();
    let args = select_args(
        &b,
        &["--latency-ms", "100000", "--memory-mb", "4096", "--json"],
    );
    let children: Vec<_> = (0..2)
        .map(|_| {
            command(&b)
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outcomes: Vec<String> = children
        .into_iter()
        .map(|c| {
            json(&c.wait_with_output().unwrap())["cache"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    outcomes.sort();
    // The second waited for the first's lock, then found its decision.
    assert_eq!(outcomes, ["hit", "miss"]);
}

#[test]
fn an_engine_that_cannot_run_here_stops_before_any_candidate() {
    let (d, b) = bundle();
    let not_a_library = d.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"not a shared object").unwrap();
    let o = select(
        &b,
        &[
            "--latency-ms",
            "100000",
            "--engine",
            "ort",
            "--ort-library",
            not_a_library.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    // Named before any candidate was tried: no fallback notes, no trials.
    assert!(
        err.contains("cannot run here") && !err.contains("falling back"),
        "{err}"
    );
    if cfg!(feature = "ort") {
        assert!(err.contains("libonnxruntime.so"), "{err}");
    } else {
        assert!(err.contains("not in this build"), "{err}");
    }
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // `runtime select ... | head -c0`: the reader is gone before the output.
    let (_d, b) = bundle();
    let mut child = command(&b)
        .args(select_args(&b, &["--latency-ms", "100000", "--json"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn the_help_examples_run() {
    let (d, b) = bundle();
    let help = String::from_utf8(runtime(&["--help"]).stdout).unwrap();
    let png = d.path().join("image.png");
    write_png(&png);
    let socket = d.path().join("sock");
    // The pack's config, as the example names it, for this bundle and socket.
    let config = config_file(
        &b,
        &format!(
            "bundle = \"bundle\"\nlatency_ms = 100000\nmemory_mb = 4096\nlisten = \"unix:{}\"\n",
            socket.display()
        ),
    );
    let examples: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runtime "))
        .collect();
    assert!(examples.len() >= 4, "{help}");
    for example in examples {
        // The examples' latency limits are a device's; on a loaded test
        // machine only a generous one keeps the check about the syntax.
        let example = example.replace("--latency-ms 25", "--latency-ms 100000");
        let mut args: Vec<String> = example
            .split_whitespace()
            .map(|a| match a {
                "bundle/" => b.to_str().unwrap().to_owned(),
                "image.png" => png.to_str().unwrap().to_owned(),
                "/etc/tailor/runtime.toml" => config.to_str().unwrap().to_owned(),
                unix if unix.starts_with("unix:") => format!("unix:{}", socket.display()),
                other => other.to_owned(),
            })
            .collect();
        if args[0] != "probe" {
            args.extend(FAST.iter().map(|s| s.to_string()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if args[0] == "serve" {
            // Serves until stopped: it must get as far as listening (on a
            // socket of its own, not one an earlier example left).
            let _ = std::fs::remove_file(&socket);
            let mut child = command(&b)
                .args(&args)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !socket.exists()
                && child.try_wait().unwrap().is_none()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let listening = socket.exists();
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            assert!(listening, "runtime {example}: {}", stderr(&o));
            continue;
        }
        let o = command(&b).args(&args).output().unwrap();
        assert!(o.status.success(), "runtime {example}: {}", stderr(&o));
    }
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
        // Each figure is there, in its place and its unit: a field missing,
        // zeroed or swapped with another (percentiles out of order, the
        // mean above the slowest run), memory in kB printed as MB (this
        // tiny graph's process needs tens of MB, not tens of thousands), or
        // `--min-runs 3 --min-time 0` not obeyed, fails here.
        for key in [
            "load_ms", "first_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "rss_mb", "peak_mb",
        ] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
        }
        let f = |key: &str| r[key].as_f64().unwrap();
        assert!(
            f("p50_ms") <= f("p90_ms") && f("p90_ms") <= f("p99_ms"),
            "{r}"
        );
        // Of three runs, p99 is the slowest.
        assert!(f("mean_ms") <= f("p99_ms"), "{r}");
        assert!(f("peak_mb") < 4096.0 && f("rss_mb") < 4096.0, "{r}");
        assert_eq!(r["runs"].as_u64(), Some(3), "{r}");
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
    // Integrity is checked before a graph is measured.
    let graph = b.join("graphs/w32-d3.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&graph, bytes).unwrap();
    let mut args = vec!["profile", b.to_str().unwrap(), "--subnets", "w32-d3"];
    args.extend(FAST);
    let o = runtime(&args);
    assert!(
        !o.status.success() && stderr(&o).contains("w32-d3.onnx") && stderr(&o).contains("sha256"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_selects_then_infers_on_a_png() {
    let (d, b) = bundle();
    let png_path = d.path().join("image.png");
    write_png(&png_path);
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
    let v = json(&runtime(&args));
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
    let o = runtime(&bad);
    assert!(
        !o.status.success() && stderr(&o).contains("missing.png"),
        "{}",
        stderr(&o)
    );
}

/// A 40×24 RGB test image.
fn write_png(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(file, 40, 24);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let data: Vec<u8> = (0..40 * 24 * 3).map(|i| (i * 7 % 256) as u8).collect();
    enc.write_header().unwrap().write_image_data(&data).unwrap();
}

/// A memory cgroup (v1, as on this project's machines and JetPack 5) of
/// `limit` bytes under this process's own, removed on drop.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
            .expect("a cgroup v1 memory controller (see /proc/self/cgroup)");
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(path.trim_start_matches('/'))
            .join(format!("tailor-oom-test-{}", std::process::id()));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating {} (needs root): {e}", dir.display()));
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        MemoryCgroup(dir)
    }

    /// `command` run inside the group.
    fn run(&self, command: &Command) -> Output {
        let procs = self.0.join("cgroup.procs");
        let mut argv = vec![command.get_program().to_str().unwrap().to_owned()];
        argv.extend(command.get_args().map(|a| a.to_str().unwrap().to_owned()));
        let quoted: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            &format!(
                "echo $$ > '{}' && exec {}",
                procs.display(),
                quoted.join(" ")
            ),
        ]);
        for (k, v) in command.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh.output().unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn candidates_killed_for_memory_are_findings_not_a_crash() {
    // 16 MB: the selecting process fits (it runs within 6 MB of anonymous
    // memory; the kernel reclaims the binary's file pages), a measuring
    // child running a batch of 4096 (a 50 MB input alone; tract runs the
    // images one at a time, so activations do not grow with the batch) is
    // killed by the kernel.
    let (_d, b) = bundle();
    let cgroup = MemoryCgroup::new(16 << 20);
    let mut cmd = command(&b);
    cmd.args(select_args(
        &b,
        &[
            "--latency-ms",
            "100000",
            "--memory-mb",
            "4096",
            "--batch",
            "4096",
            // tract alone: ONNX Runtime's library in the selecting process
            // would not fit 16 MB.
            "--engine",
            "tract",
        ],
    ));
    let o = cgroup.run(&cmd);
    let err = stderr(&o);
    // Two candidates in a row out of memory: nothing fits, said with both.
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("exceeds memory") && err.contains("SIGKILL"),
        "{err}"
    );
    assert!(err.contains("w32-d2") && err.contains("w32-d3"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn auto_without_onnx_runtime_is_tract_without_a_word() {
    let (_d, b) = bundle();
    let o = select(
        &b,
        &[
            "--latency-ms",
            "100000",
            "--ort-library",
            "/nonexistent/libonnxruntime.so",
            "--json",
        ],
    );
    let v = json(&o);
    // An auto that required ONNX Runtime would fail here; one that raced a
    // missing engine would list it.
    assert!(v["engine"].as_str().unwrap().starts_with("tract "), "{v}");
    assert_eq!(v["engine_trials"], serde_json::json!([]), "{v}");
    assert!(!stderr(&o).contains("onnxruntime"), "{}", stderr(&o));
}

#[test]
fn an_explicit_engine_is_not_raced() {
    let (_d, b) = bundle();
    let v = json(&select(
        &b,
        &["--latency-ms", "100000", "--engine", "tract", "--json"],
    ));
    assert!(v["engine"].as_str().unwrap().starts_with("tract "), "{v}");
    assert_eq!(v["engine_trials"], serde_json::json!([]), "{v}");
}

#[cfg(feature = "ort")]
#[test]
fn auto_races_both_engines_on_the_first_candidate_and_keeps_the_faster() {
    // CI sets ORT_DYLIB_PATH to the onnxruntime wheel's library.
    let (_d, b) = bundle();
    let args = select_args(&b, &["--latency-ms", "100000", "--json"]);
    let v = json(&command(&b).args(&args).output().unwrap());
    let trials = v["engine_trials"].as_array().unwrap();
    let engines: Vec<&str> = trials
        .iter()
        .map(|t| t["engine"].as_str().unwrap())
        .collect();
    assert!(
        engines.len() == 2 && engines[0].starts_with("tract ") && engines[1].starts_with("ort "),
        "{v}"
    );
    // Both measured the same (first) candidate, which the search measured.
    assert_eq!(trials[0]["id"], trials[1]["id"], "{v}");
    assert_eq!(trials[0]["id"], v["trials"][0]["id"], "{v}");
    let p90 = |t: &serde_json::Value| t["measured"]["p90_ms"].as_f64().unwrap();
    let faster = if p90(&trials[1]) < p90(&trials[0]) {
        1
    } else {
        0
    };
    assert_eq!(v["engine"], trials[faster]["engine"], "{v}");
    // The next boot loads the winner with the engine that measured it.
    let again = json(&command(&b).args(&args).output().unwrap());
    assert_eq!(
        (&again["cache"], &again["engine"], &again["subnet"]),
        (&"hit".into(), &v["engine"], &v["subnet"]),
        "{again}"
    );
}

/// Writes `text` as `runtime.toml` beside the bundle (so `bundle = "bundle"`
/// names it, relative to the file).
fn config_file(bundle: &Path, text: &str) -> PathBuf {
    let path = bundle.with_file_name("runtime.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_config_file_alone_drives_a_select() {
    let (_d, b) = bundle();
    let config = config_file(
        &b,
        "bundle = \"bundle\"\nlatency_ms = 100000\npercentile = 99\nmemory_mb = 4096\n",
    );
    let o = command(&b)
        .args(["select", "--config", config.to_str().unwrap(), "--json"])
        .args(FAST)
        .output()
        .unwrap();
    let v = json(&o);
    assert_eq!(v["limits"]["latency_ms"], 100000.0);
    assert_eq!(v["limits"]["percentile"], 99);
    assert_eq!(v["limits"]["memory_mb"], 4096.0);
    assert_eq!(v["subnet"]["id"], "w32-d4");
}

#[test]
fn flags_override_the_config_file() {
    let (_d, b) = bundle();
    // On its own this file asks for TensorRT, which this machine lacks.
    let config = config_file(
        &b,
        "latency_ms = 100000\nmemory_mb = 4096\nengine = \"ort\"\nprovider = \"tensorrt\"\n",
    );
    let with_config = |extra: &[&str]| {
        let mut args = select_args(&b, &["--config", config.to_str().unwrap(), "--json"]);
        args.extend(extra);
        runtime(&args)
    };
    let o = with_config(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).to_lowercase().contains("tensorrt"),
        "{}",
        stderr(&o)
    );

    let v = json(&with_config(&[
        "--engine",
        "tract",
        "--provider",
        "cpu",
        "--latency-ms",
        "90000",
        "--memory-fraction",
        "0.5",
    ]));
    assert!(v["engine"].as_str().unwrap().starts_with("tract"), "{v}");
    assert_eq!(v["limits"]["latency_ms"], 90000.0);
    assert_ne!(
        v["limits"]["memory_mb"], 4096.0,
        "--memory-fraction replaces the file's memory_mb"
    );
}

#[test]
fn config_mistakes_name_the_file_the_line_and_the_key() {
    let (_d, b) = bundle();
    for (text, needles) in [
        (
            "latency_ms = 100\nlatency = 5\n",
            &["line 2", "`latency`", "unknown field"][..],
        ),
        ("latency_ms = \"fast\"\n", &["line 1", "`latency_ms`"][..]),
        (
            "latency_ms = 100\nengine = \"gpu\"\n",
            &["line 2", "`engine`", "gpu"][..],
        ),
    ] {
        let config = config_file(&b, text);
        let o = select(&b, &["--config", config.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{text:?}: {err}");
        assert!(err.contains(config.to_str().unwrap()), "{text:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{text:?}: `{n}` missing from {err}");
        }
    }
    let config = config_file(&b, "memory_mb = 100\n");
    let o = select(&b, &["--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no latency limit"), "{}", stderr(&o));
}

#[test]
fn numbers_no_measurement_can_take_are_usage_errors_not_panics() {
    let (_d, b) = bundle();
    for (args, named) in [
        (
            ["--latency-ms", "1e300", "--min-time", "0"],
            "latency limit 1e300",
        ),
        (
            ["--latency-ms", "10", "--min-time", "1e300"],
            "--min-time 1e300",
        ),
    ] {
        let o = runtime(&[&["select", b.to_str().unwrap()][..], &args[..]].concat());
        let err = stderr(&o);
        assert!(
            !o.status.success() && err.contains(named) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}
