//! Writes that survive a kill: every command that writes a bundle or the
//! decision cache is SIGKILLed at 50 seeded points spread over its own run
//! time, measured first. Afterwards the bundle's manifests are the old pair
//! or the new pair, every file in it is the old bundle's or the new one's
//! byte for byte, and `inspect --verify` passes; the cache still holds its
//! old decision; and whatever the kill left behind (temporaries, files the
//! manifest does not list) is gone after the next run of the command.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use common::{copy_dir, files_under};

/// Kill points per command.
const POINTS: u64 = 50;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn exporter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_exporter"))
}

fn runtime() -> Command {
    Command::new(Path::new(env!("CARGO_BIN_EXE_exporter")).with_file_name("runtime"))
}

fn succeeded(mut command: Command) -> Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `exporter ARGS...` with the bundle as the first argument after `verb`.
fn exporter_on(verb: &str, bundle: &Path, args: &[&str]) -> Command {
    let mut command = exporter();
    command.arg(verb).arg(bundle).args(args);
    command
}

fn teacher() -> PathBuf {
    root().join("examples/sdr-tiny/sdr.safetensors")
}

fn digits() -> PathBuf {
    root().join("examples/mnist-calib.npz")
}

/// `exporter --all-subnets --force` of the example SDR teacher into `out`.
fn export(out: &Path) -> Command {
    let mut command = exporter();
    command
        .args(["--all-subnets", "--force", "-q", "-o"])
        .arg(out)
        .arg(teacher());
    command
}

/// `exporter route` of the SDR bundle on the digits.
fn route(bundle: &Path) -> Command {
    let mut command = exporter_on("route", bundle, &["--task", "digits", "--limit", "40"]);
    command.arg("--data").arg(digits()).arg("-q");
    command
}

/// Every visible file under `dir` (the hidden ones are temporaries) with its
/// bytes.
fn contents(dir: &Path) -> Files {
    files_under(dir)
        .into_iter()
        .filter(|p| !hidden(p.strip_prefix(dir).unwrap()))
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().to_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn hidden(rel: &Path) -> bool {
    rel.components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
}

/// Every hidden file or directory under `dir`, at any depth: what a writer
/// stages beside its destination.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with('.') {
            found.push(path);
        } else if path.is_dir() {
            found.extend(leftovers(&path));
        }
    }
    found
}

/// splitmix64: the kill points, the same on every run.
struct Points(u64);

impl Points {
    fn next_fraction(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }
}

/// Starts `command` in a process group of its own and SIGKILLs the group
/// (measuring children included) after `delay`.
fn kill_after(mut command: Command, delay: Duration) {
    let mut child = command
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(delay);
    let group = format!("-{}", child.id());
    // The group may be gone already: the command finished before the point.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(std::process::Stdio::null())
        .status();
    child.wait().unwrap();
}

/// Where a kill left the command's result.
struct Landed {
    /// The new result (else the old one).
    new: bool,
    /// Complete files of the other result beside it (a writer that puts
    /// files named by their content before the manifest that lists them).
    extra: Vec<PathBuf>,
}

/// What the kill points found.
#[derive(Debug, Default)]
struct Tally {
    old: u32,
    new: u32,
    /// Points that left temporaries or extra files, with one example.
    litter: u32,
    example: Option<Vec<PathBuf>>,
}

/// Runs `command(work)` once to completion on a copy of `old` (its run time
/// and its result), then kills it at [`POINTS`] points over that run time,
/// each on a fresh copy of `old`. After each kill `check(work)` says where
/// it landed or panics; whatever the kill left behind must be gone after
/// the command runs again.
fn kill_at_points(
    seed: u64,
    old: &Path,
    command: impl Fn(&Path) -> Command,
    check: impl Fn(&Path) -> Landed,
) -> Tally {
    let scratch = tempfile::tempdir().unwrap();
    let work = scratch.path().join("work");
    copy_dir(old, &work);
    let started = Instant::now();
    succeeded(command(&work));
    let run_time = started.elapsed();
    let clean = |work: &Path, what: &str| {
        let landed = check(work);
        assert!(landed.new, "{what}: the result reads as the old one");
        let litter = [leftovers(work), landed.extra].concat();
        assert_eq!(litter, Vec::<PathBuf>::new(), "{what} left these");
    };
    clean(&work, "a run to completion");

    let mut points = Points(seed);
    let mut tally = Tally::default();
    for _ in 0..POINTS {
        std::fs::remove_dir_all(&work).unwrap();
        copy_dir(old, &work);
        kill_after(command(&work), run_time.mul_f64(points.next_fraction()));
        let temporaries = leftovers(&work);
        let landed = check(&work);
        *if landed.new {
            &mut tally.new
        } else {
            &mut tally.old
        } += 1;
        let litter = [temporaries, landed.extra].concat();
        if !litter.is_empty() {
            tally.litter += 1;
            tally.example.get_or_insert(litter.clone());
            succeeded(command(&work));
            clean(&work, &format!("the run after a kill that left {litter:?}"));
        }
    }
    eprintln!("{tally:?} (run time {run_time:?})");
    tally
}

type Files = BTreeMap<PathBuf, Vec<u8>>;

/// The check for a bundle at `work/bundle`: its manifests are the old pair
/// or the new one, every other file is a file of the old bundle or of the
/// new one, byte for byte, and it verifies.
fn old_or_new_bundle(old: Files, new: Files) -> impl Fn(&Path) -> Landed {
    assert_ne!(old, new, "the command changes nothing to kill it in");
    let manifests = |files: &Files| {
        ["manifest.json", "manifest.postcard"].map(|m| files.get(Path::new(m)).cloned())
    };
    move |work| {
        let bundle = work.join("bundle");
        let now = contents(&bundle);
        let is_new = manifests(&now) == manifests(&new);
        assert!(
            is_new || manifests(&now) == manifests(&old),
            "manifest.json and manifest.postcard are neither the old pair nor the new one"
        );
        for (path, bytes) in &now {
            assert!(
                old.get(path) == Some(bytes) || new.get(path) == Some(bytes),
                "{} is neither the old file nor the new one",
                path.display()
            );
        }
        succeeded(exporter_on("inspect", &bundle, &["--verify"]));
        let expected = if is_new { &new } else { &old };
        assert!(
            expected.keys().all(|path| now.contains_key(path)),
            "files of the {} bundle are missing",
            if is_new { "new" } else { "old" }
        );
        Landed {
            new: is_new,
            extra: now
                .into_keys()
                .filter(|path| !expected.contains_key(path))
                .collect(),
        }
    }
}

/// `old` (a directory holding `bundle`) with `command` run on it to completion:
/// the new bundle's files.
fn result_of(old: &Path, command: &dyn Fn(&Path) -> Command) -> Files {
    let scratch = tempfile::tempdir().unwrap();
    let work = scratch.path().join("work");
    copy_dir(old, &work);
    succeeded(command(&work));
    contents(&work.join("bundle"))
}

/// Runs a bundle writer's kill points: `old` holds `bundle`, `command(work)`
/// rewrites `work/bundle`.
fn bundle_writer(seed: u64, old: &Path, command: impl Fn(&Path) -> Command) {
    let new = result_of(old, &command);
    let check = old_or_new_bundle(contents(&old.join("bundle")), new);
    let tally = kill_at_points(seed, old, command, check);
    // The points spread over the run, so some land before the bundle is
    // replaced; after the run ends every point finds the new one.
    assert!(tally.old > 0, "no point landed before the write: {tally:?}");
}

/// The routed SDR bundle at `dir/bundle`.
fn routed_sdr(dir: &Path) {
    let bundle = dir.join("bundle");
    succeeded(export(&bundle));
    succeeded(route(&bundle));
}

#[test]
fn export_force_over_a_routed_bundle_leaves_the_old_or_the_new_one() {
    let old = tempfile::tempdir().unwrap();
    routed_sdr(old.path());
    bundle_writer(1, old.path(), |work| export(&work.join("bundle")));
}

#[test]
fn route_leaves_the_old_or_the_new_bundle() {
    let old = tempfile::tempdir().unwrap();
    succeeded(export(&old.path().join("bundle")));
    bundle_writer(2, old.path(), |work| route(&work.join("bundle")));
}

fn calibrate(bundle: &Path) -> Command {
    let mut command = exporter_on("calibrate", bundle, &["--limit", "20", "--ranges", "inner"]);
    command.arg("--data").arg(digits()).arg("-q");
    command
}

#[test]
fn calibrate_leaves_the_old_or_the_new_bundle() {
    let old = tempfile::tempdir().unwrap();
    copy_dir(
        &root().join("runtime/tests/fixtures/bundle-tiny"),
        &old.path().join("bundle"),
    );
    bundle_writer(3, old.path(), |work| calibrate(&work.join("bundle")));
}

#[test]
fn quantize_leaves_the_old_or_the_new_bundle() {
    let old = tempfile::tempdir().unwrap();
    let bundle = old.path().join("bundle");
    copy_dir(&root().join("runtime/tests/fixtures/bundle-tiny"), &bundle);
    succeeded(calibrate(&bundle));
    bundle_writer(4, old.path(), |work| {
        exporter_on("quantize", &work.join("bundle"), &["--precision", "int8"])
    });
}

/// `runtime select --json` on the tiny bundle with its decision cached in
/// `work/cache`, under a latency limit of `latency_ms`.
fn select(work: &Path, latency_ms: &str) -> Command {
    let mut command = runtime();
    command
        .args(["select", "--json", "--engine", "tract", "--min-runs", "3"])
        .args(["--min-time", "0", "--latency-ms", latency_ms, "--cache"])
        .arg(work.join("cache/decisions.postcard"))
        .arg(root().join("runtime/tests/fixtures/bundle-tiny"));
    command
}

/// Whether `select` under `latency_ms` found its decision in the cache.
fn cache_hit(work: &Path, latency_ms: &str) -> bool {
    let out = succeeded(select(work, latency_ms));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    match json["cache"].as_str() {
        Some("hit") => true,
        Some("miss") => false,
        other => panic!("cache {other:?} in {json}"),
    }
}

#[test]
fn select_killed_while_caching_keeps_the_cache_readable() {
    // The old cache holds the decision for 1000 ms; the killed select adds
    // one for 999 ms.
    let old = tempfile::tempdir().unwrap();
    std::fs::create_dir(old.path().join("cache")).unwrap();
    succeeded(select(old.path(), "1000"));
    assert!(cache_hit(old.path(), "1000"));
    kill_at_points(
        5,
        old.path(),
        |work| select(work, "999"),
        |work| {
            // The old decision survives every kill, and the new one is
            // either whole or measured again: never an error.
            assert!(cache_hit(work, "1000"), "the kill lost the old decision");
            Landed {
                new: cache_hit(work, "999"),
                extra: Vec::new(),
            }
        },
    );
}
