//! Bundles whose names lead outside them, against every command that opens
//! a bundle: the runtime's select, serve, run and profile, the exporter's
//! calibrate, route, pack, inspect and quantize. Each crafted bundle would
//! work if its names were followed (the files they lead to are copies of
//! the bundle's own, sha256 and all); each command must refuse it, naming
//! the manifest, the entry and the problem, and write nothing anywhere.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tailor_runtime::manifest::Manifest;

fn tiny_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures/bundle-tiny")
}

/// `dir/bundle`, a copy of the tiny bundle, beside `dir/outside`, a second
/// copy of it that names lead to.
fn bundle_beside_a_copy(dir: &Path) -> (PathBuf, PathBuf) {
    let (bundle, outside) = (dir.join("bundle"), dir.join("outside"));
    common::copy_dir(&tiny_bundle(), &bundle);
    common::copy_dir(&tiny_bundle(), &outside);
    (bundle, outside)
}

/// Re-encodes both manifests of `bundle` through the runtime's own types,
/// after `set` put `name` where it goes.
fn tamper(bundle: &Path, name: &str, set: impl for<'a> Fn(&mut Manifest<'a>, &'a str)) {
    let bytes = std::fs::read(bundle.join("manifest.postcard")).unwrap();
    let mut manifest = Manifest::from_postcard(&bytes).unwrap();
    set(&mut manifest, name);
    std::fs::write(bundle.join("manifest.postcard"), manifest.to_postcard()).unwrap();
    std::fs::write(bundle.join("manifest.json"), manifest.to_json()).unwrap();
}

/// A crafted bundle in `dir`: its path, and what the refusal must say.
type Crafted = fn(&Path) -> (PathBuf, Vec<String>);

/// The largest sub-network's graph is `../outside/graphs/w32-d4.onnx`.
fn parent_graph(dir: &Path) -> (PathBuf, Vec<String>) {
    let (bundle, _) = bundle_beside_a_copy(dir);
    let name = "../outside/graphs/w32-d4.onnx";
    tamper(&bundle, name, |m, name| m.subnets[2].onnx = name);
    (
        bundle,
        vec![
            "manifest.postcard".into(),
            "the graph of `w32-d4`".into(),
            name.into(),
            "`..`".into(),
        ],
    )
}

/// Every sub-network's weight file is the absolute path of the copy's.
fn absolute_weights(dir: &Path) -> (PathBuf, Vec<String>) {
    let (bundle, outside) = bundle_beside_a_copy(dir);
    let name = outside.join("graphs/weights/w32.bin");
    let name = name.to_str().unwrap().to_owned();
    tamper(&bundle, &name, |m, name| {
        for s in &mut m.subnets {
            s.weights[0].path = name;
        }
    });
    (
        bundle,
        vec![
            "manifest.postcard".into(),
            "a weight file of `w32-d2`".into(),
            name,
            "is absolute".into(),
        ],
    )
}

/// The manifest is as exported, but the weight file is a symlink to the
/// copy's.
fn symlinked_weights(dir: &Path) -> (PathBuf, Vec<String>) {
    let (bundle, outside) = bundle_beside_a_copy(dir);
    let weights = bundle.join("graphs/weights/w32.bin");
    std::fs::remove_file(&weights).unwrap();
    let target = outside.join("graphs/weights/w32.bin");
    std::os::unix::fs::symlink(&target, &weights).unwrap();
    let target = std::fs::canonicalize(target).unwrap();
    (
        bundle,
        vec![
            "manifest.postcard".into(),
            "a weight file of `w32-d2`".into(),
            format!("resolves to {}", target.display()),
        ],
    )
}

/// A sub-network id that writers would turn into a path out of the bundle
/// (`ID.onnx`, `ID.SHA.onnx`).
fn id_with_a_slash(dir: &Path) -> (PathBuf, Vec<String>) {
    let (bundle, _) = bundle_beside_a_copy(dir);
    let id = "../../outside/w32-d4";
    tamper(&bundle, id, |m, id| m.subnets[2].id = id);
    (
        bundle,
        vec!["a sub-network id".into(), id.into(), "`..`".into()],
    )
}

const CRAFTED: [(&str, Crafted); 4] = [
    ("parent graph", parent_graph),
    ("absolute weights", absolute_weights),
    ("symlinked weights", symlinked_weights),
    ("id with a slash", id_with_a_slash),
];

/// Every file and directory under `dir` (symlinks not followed) with its
/// contents and mtime, to tell that nothing was written.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let contents = if meta.is_dir() {
                dirs.push(path.clone());
                Vec::new()
            } else if meta.is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            found.insert(path, (contents, meta.modified().unwrap()));
        }
    }
    found
}

fn runtime_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_exporter")).with_file_name("runtime")
}

/// Runs `cmd` with a private cache; `None` if it was still running after
/// half a minute (then killed): `serve` serves a bundle it accepted forever.
fn run(mut cmd: Command, scratch: &Path) -> Option<Output> {
    cmd.env("TAILOR_CACHE_DIR", scratch.join("cache"))
        .env_remove("CACHE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

/// The commands that open a bundle, each as it would run on `bundle` with
/// `scratch` for its inputs and outputs.
fn commands(bundle: &Path, scratch: &Path) -> Vec<(&'static str, Command)> {
    let images = scratch.join("images");
    for i in 0..12 {
        let class = ["dark", "bright"][i % 2];
        common::write_png(
            &images.join(format!("{class}/{i}.png")),
            12,
            &common::grey((i % 2) as u8, i, 12),
        );
    }
    let png = images.join("dark/0.png");
    let stand_in = runtime_bin();
    let limits = [
        "--latency-ms",
        "100000",
        "--min-runs",
        "3",
        "--min-time",
        "0",
    ];
    let runtime = |args: &[&dyn AsRef<OsStr>]| {
        let mut c = Command::new(runtime_bin());
        c.args(args).args(limits);
        c
    };
    let exporter = |args: &[&dyn AsRef<OsStr>]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_exporter"));
        c.args(args);
        c
    };
    let listen = "127.0.0.1:0";
    vec![
        ("runtime select", runtime(&[&"select", &bundle])),
        (
            "runtime serve",
            runtime(&[&"serve", &bundle, &"--listen", &listen]),
        ),
        ("runtime run", runtime(&[&"run", &bundle, &"--input", &png])),
        ("runtime profile", {
            let mut c = Command::new(runtime_bin());
            c.args([
                OsStr::new("profile"),
                bundle.as_os_str(),
                OsStr::new("--all"),
            ]);
            c
        }),
        (
            "exporter calibrate",
            exporter(&[&"calibrate", &bundle, &"--data", &images]),
        ),
        (
            "exporter route",
            exporter(&[&"route", &bundle, &"--data", &images]),
        ),
        (
            "exporter pack",
            exporter(&[
                &"pack",
                &bundle,
                &"--target",
                &"generic-x86_64",
                &"-o",
                &scratch.join("pack.tar.gz"),
                &"--runtime-bin",
                &stand_in,
                &"--latency-ms",
                &"100000",
            ]),
        ),
        (
            "exporter inspect",
            exporter(&[&"inspect", &bundle, &"--verify"]),
        ),
        (
            "exporter quantize",
            exporter(&[
                &"quantize",
                &bundle,
                &"--precision",
                &"int8",
                &"--data",
                &images,
            ]),
        ),
    ]
}

#[test]
fn every_command_refuses_names_that_lead_out_of_the_bundle_and_writes_nothing() {
    // Every command of every case is tried; the failures are listed together.
    let mut failures = Vec::new();
    for (case, craft) in CRAFTED {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, needles) = craft(dir.path());
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        for (name, command) in commands(&bundle, &scratch) {
            let before = snapshot(dir.path());
            let out = run(command, &scratch);
            let mut fail = |why: String| failures.push(format!("{case}: {name}: {why}"));
            let Some(out) = out else {
                fail("accepted it and kept running".into());
                continue;
            };
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || err.contains("panicked") {
                fail(format!("accepted it or panicked: {err}"));
            } else if let Some(needle) = needles.iter().find(|n| !err.contains(n.as_str())) {
                fail(format!("no `{needle}` in: {err}"));
            }
            // Not in the bundle, not beside it, not in the scratch outputs.
            if snapshot(dir.path()) != before {
                fail("wrote files".into());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn calibrate_writes_nothing_through_a_symlinked_directory() {
    // The manifest names nothing under `calibration/` yet, so the bundle
    // opens; the ranges calibrate would write there would land outside.
    let dir = tempfile::tempdir().unwrap();
    let (bundle, outside) = bundle_beside_a_copy(dir.path());
    std::os::unix::fs::symlink(&outside, bundle.join("calibration")).unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let (_, calibrate) = commands(&bundle, &scratch)
        .into_iter()
        .find(|(name, _)| *name == "exporter calibrate")
        .unwrap();
    let before = snapshot(dir.path());
    let out = run(calibrate, &scratch).expect("calibrate ends");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    let outside = std::fs::canonicalize(outside).unwrap();
    let refusal = format!("calibration: resolves to {}", outside.display());
    assert!(err.contains(&refusal), "no `{refusal}` in: {err}");
    assert!(
        snapshot(dir.path()) == before,
        "calibrate wrote files: {err}"
    );
}
