//! A fleet that boots warm: decisions exported from a reference board's
//! cache (`runtime cache export`) and shipped to a board (`--shipped`, as a
//! pack's runtime.toml sets it), on runtime/tests/fixtures/bundle-tiny.
//! Boards are told apart by the probe's fixture trees (`--sysroot`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tailor_runtime::manifest::Manifest;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A board: the probe's view of it, and a decision cache of its own.
struct Board {
    sysroot: PathBuf,
    cache: PathBuf,
}

impl Board {
    fn new(dir: &Path, name: &str, fixture: &str) -> Board {
        Board {
            sysroot: fixtures().join("probe").join(fixture),
            cache: dir.join(name).join("decisions.postcard"),
        }
    }

    /// `runtime select BUNDLE --json` with the limits in `extra`.
    fn select(&self, bundle: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "select".as_ref(),
            bundle.as_os_str(),
            "--sysroot".as_ref(),
            self.sysroot.as_os_str(),
            "--cache".as_ref(),
            self.cache.as_os_str(),
        ];
        args.extend(["--min-runs", "3", "--min-time", "0"].map(std::ffi::OsStr::new));
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        runtime(&args)
    }

    /// Exports this board's decisions to `to`.
    fn export(&self, to: &Path) -> String {
        let out = runtime(&[
            "cache".as_ref(),
            "export".as_ref(),
            "--cache".as_ref(),
            self.cache.as_os_str(),
            "--to".as_ref(),
            to.as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn runtime(args: &[&std::ffi::OsStr]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_runtime"))
        .args(args)
        .env_remove("TAILOR_CACHE_DIR")
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A private copy of the tiny bundle.
fn bundle(dir: &Path) -> PathBuf {
    let out = dir.join("bundle");
    common::copy_dir(&fixtures().join("bundle-tiny"), &out);
    out
}

const LIMITS: [&str; 5] = ["--latency-ms", "100000", "--memory-mb", "4096", "--engine"];

/// The generous limits with tract, as JSON.
fn limits<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = LIMITS.to_vec();
    args.extend(["tract", "--json"]);
    args.extend(extra);
    args
}

#[test]
fn a_board_whose_key_matches_measures_only_the_shipped_winner() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path());
    let reference = Board::new(dir.path(), "reference", "x86");
    let chosen = json(&reference.select(&b, &limits(&[])));
    let shipped = dir.path().join("fleet.postcard");
    let listed = reference.export(&shipped);
    let winner = chosen["subnet"]["id"].as_str().unwrap();
    assert!(listed.starts_with(winner), "{listed}");
    assert!(listed.contains("exported 1 decisions"), "{listed}");

    let board = Board::new(dir.path(), "board", "x86");
    let first = json(&board.select(&b, &limits(&["--shipped", shipped.to_str().unwrap()])));
    assert_eq!(first["cache"], "shipped", "{first}");
    assert_eq!(first["candidates_measured"], 1, "{first}");
    assert_eq!(first["subnet"]["id"], winner);
    let trials = first["trials"].as_array().unwrap();
    assert!(trials.iter().all(|t| t["id"] == winner), "{first}");
    assert!(
        trials
            .iter()
            .any(|t| t["stage"] == "confirm" && t["fits"] == true),
        "the winner is confirmed by the normal rules: {first}"
    );
    // The decision is the board's own now: the next boot measures nothing.
    let next = json(&board.select(&b, &limits(&["--shipped", shipped.to_str().unwrap()])));
    assert_eq!(
        (&next["cache"], &next["candidates_measured"]),
        (&"hit".into(), &0.into())
    );

    // The report (the journal's account under systemd) says so.
    let another = Board::new(dir.path(), "another", "x86");
    let mut human = limits(&["--shipped", shipped.to_str().unwrap()]);
    human.retain(|a| *a != "--json");
    let out = another.select(&b, &human);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(
        report.contains("measured 1 of 3 candidates")
            && report
                .contains("(shipped decision confirmed: 1 candidate measured, decision cached)"),
        "{report}"
    );
}

#[test]
fn a_board_that_differs_ignores_the_shipped_decisions_and_names_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path());
    let reference = Board::new(dir.path(), "reference", "x86");
    json(&reference.select(&b, &limits(&[])));
    let shipped = dir.path().join("fleet.postcard");
    reference.export(&shipped);

    let other = Board::new(dir.path(), "board", "rpi5");
    let v = json(&other.select(&b, &limits(&["--shipped", shipped.to_str().unwrap()])));
    assert_eq!(v["cache"], "miss", "a normal search: {v}");
    assert!(v["candidates_measured"].as_u64().unwrap() >= 1, "{v}");
    let notes = v["notes"].to_string();
    assert!(notes.contains("shipped decisions in"), "{v}");
    assert!(notes.contains("the device fingerprint (shipped "), "{v}");

    // A file that is not an export is said so, and the search goes on.
    let third = Board::new(dir.path(), "third", "rpi5");
    let v = json(&third.select(
        &b,
        &limits(&["--shipped", reference.cache.to_str().unwrap()]),
    ));
    assert_eq!(v["cache"], "miss", "{v}");
    assert!(
        v["notes"].to_string().contains("runtime cache export"),
        "{v}"
    );
}

/// Gives the bundle's sub-networks quality scores, ascending with depth.
fn score(bundle: &Path) {
    let path = bundle.join("manifest.postcard");
    let bytes = std::fs::read(&path).unwrap();
    let mut manifest = Manifest::from_postcard(&bytes).unwrap();
    for (s, q) in manifest.subnets.iter_mut().zip([50.0, 60.0, 70.0]) {
        s.quality = Some(q);
    }
    std::fs::write(&path, manifest.to_postcard()).unwrap();
}

#[test]
fn a_shipped_winner_that_misses_a_limit_here_falls_back_to_a_search() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(dir.path());
    score(&b);
    let quality = ["--min-quality", "65"];
    let reference = Board::new(dir.path(), "reference", "x86");
    let chosen = json(&reference.select(&b, &limits(&quality)));
    assert_eq!(
        chosen["subnet"]["id"], "w32-d4",
        "the only one scoring 65: {chosen}"
    );
    let exported = dir.path().join("fleet.postcard");
    reference.export(&exported);

    // The same key, but a winner that scores 50: the key's minimum quality
    // is a limit it cannot meet. (Ids are length-prefixed: same length.)
    let bytes = std::fs::read(&exported).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == b"w32-d4")
        .expect("the winner's id");
    let mut crafted = bytes.clone();
    crafted[at..at + 6].copy_from_slice(b"w32-d2");
    let shipped = dir.path().join("crafted.postcard");
    std::fs::write(&shipped, crafted).unwrap();

    let board = Board::new(dir.path(), "board", "x86");
    let mut args = limits(&quality);
    args.extend(["--shipped", shipped.to_str().unwrap()]);
    let v = json(&board.select(&b, &args));
    assert_eq!(v["cache"], "miss", "{v}");
    assert_eq!(v["subnet"]["id"], "w32-d4", "never the shipped pick: {v}");
    assert!(
        v["notes"]
            .to_string()
            .contains("the shipped decision, w32-d2, does not hold here"),
        "{v}"
    );
}
