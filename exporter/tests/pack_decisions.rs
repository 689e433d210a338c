//! `exporter pack --decisions`: a reference board's decisions, exported by
//! its installed runtime, shipped in a second pack, and the board that
//! installs it measuring only the shipped winner; foreign or bad files
//! refused at pack time. Packs of the committed tiny bundle for
//! `generic-x86_64`, installed with `install.sh --root` (see tests/pack.rs
//! for the runtime binary this needs).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn tiny_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures/bundle-tiny")
}

fn runtime_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_exporter")).with_file_name("runtime")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: Output) -> Value {
    serde_json::from_slice(&ok(out).stdout).unwrap()
}

/// `exporter pack` of the tiny bundle for generic-x86_64 into `out`, with
/// the memory limit the reference board ran with, and `extra`.
fn pack(out: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"pack",
        &"--target",
        &"generic-x86_64",
        &"--latency-ms",
        &"100000",
        &"--runtime-bin",
    ];
    let (runtime, bundle) = (runtime_bin(), tiny_bundle());
    let tail: [&dyn AsRef<std::ffi::OsStr>; 4] = [&runtime, &"-o", &out, &bundle];
    args.extend(tail);
    args.extend(extra.iter().copied());
    common::exporter(&args)
}

/// A pack installed under `dir/root`; its root.
fn install(archive: &Path, dir: &Path) -> PathBuf {
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    ok(Command::new("tar")
        .arg("xzf")
        .arg(archive)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap());
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    ok(
        Command::new(unpacked.join("tailor-generic-x86_64/install.sh"))
            .arg("--root")
            .arg(&root)
            .output()
            .unwrap(),
    );
    root
}

/// The installed runtime's `select --json` with the installed config, its
/// decision cache in `cache`, and `extra`.
fn select(root: &Path, cache: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
    json(
        Command::new(root.join("opt/tailor/bin/runtime"))
            .arg("select")
            .arg(root.join("opt/tailor/bundle"))
            .arg("--config")
            .arg(root.join("etc/tailor/runtime.toml"))
            .arg("--cache")
            .arg(cache)
            .args([
                "--engine",
                "tract",
                "--min-runs",
                "3",
                "--min-time",
                "0",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap(),
    )
}

/// A reference board: the plain pack installed, selected once, exported.
/// Returns the winner and the exported file.
fn reference(dir: &Path) -> (String, PathBuf) {
    let archive = dir.join("v1.tar.gz");
    ok(pack(&archive, &[&"--memory-mb", &"4096"]));
    let root = install(&archive, &dir.join("reference"));
    let cache = dir.join("reference/cache/decisions.postcard");
    let chosen = select(&root, &cache, &[]);
    let exported = dir.join("fleet.postcard");
    ok(Command::new(root.join("opt/tailor/bin/runtime"))
        .args(["cache", "export", "--cache"])
        .arg(&cache)
        .arg("--to")
        .arg(&exported)
        .output()
        .unwrap());
    let winner = chosen["subnet"]["id"].as_str().unwrap().to_owned();
    (winner, exported)
}

#[test]
fn a_pack_with_a_reference_board_s_decisions_boots_a_board_on_one_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let (winner, exported) = reference(dir.path());
    let trt = dir.path().join("tensorrt");
    std::fs::create_dir_all(trt.join("fp16")).unwrap();
    std::fs::write(trt.join("fp16/engine.engine"), b"an engine").unwrap();

    let archive = dir.path().join("v2.tar.gz");
    let packed = json(pack(
        &archive,
        &[
            &"--memory-mb",
            &"4096",
            &"--decisions",
            &exported,
            &"--trt-cache",
            &trt,
            &"--json",
        ],
    ));
    assert_eq!(
        packed["shipped"],
        serde_json::json!({"decisions": 1, "dropped": 0, "trt_files": 1}),
        "{packed}"
    );
    let root = install(&archive, &dir.path().join("board"));
    let config = std::fs::read_to_string(root.join("etc/tailor/runtime.toml")).unwrap();
    assert!(
        config.contains("\nshipped = \"/opt/tailor/bundle/shipped/decisions.postcard\"\n"),
        "{config}"
    );
    let shipped = root.join("opt/tailor/bundle/shipped");
    assert!(shipped.join("decisions.postcard").is_file());
    assert_eq!(
        std::fs::read(shipped.join("tensorrt/fp16/engine.engine")).unwrap(),
        b"an engine"
    );

    // The config names the file at its place on a device; under the
    // scratch root the flag names it there.
    let cache = dir.path().join("board/cache/decisions.postcard");
    let first = select(
        &root,
        &cache,
        &[&"--shipped", &shipped.join("decisions.postcard")],
    );
    assert_eq!(first["cache"], "shipped", "{first}");
    assert_eq!(first["candidates_measured"], 1, "{first}");
    assert_eq!(first["subnet"]["id"], winner.as_str());
    assert_eq!(
        std::fs::read(cache.with_file_name("tensorrt/fp16/engine.engine")).unwrap(),
        b"an engine",
        "the shipped TensorRT caches seed the board's"
    );
}

#[test]
fn foreign_or_bad_decisions_are_refused_at_pack_time_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_, exported) = reference(dir.path());
    let out = dir.path().join("refused.tar.gz");
    let refused = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let o = pack(&out, extra);
        assert!(!o.status.success());
        assert!(!out.exists(), "nothing written");
        String::from_utf8(o.stderr).unwrap()
    };

    // Another memory budget drops w32-d4 (predicted 0.32 MiB): another
    // manifest, so another bundle than the reference board ran.
    let e = refused(&[&"--memory-mb", &"0.3", &"--decisions", &exported]);
    assert!(e.contains("was made with the bundle packed"), "{e}");
    assert!(e.contains("--memory-mb and --keep"), "{e}");

    // The runtime's own cache is not an export.
    let cache = dir.path().join("reference/cache/decisions.postcard");
    let e = refused(&[&"--memory-mb", &"4096", &"--decisions", &cache]);
    assert!(
        e.contains("not a decisions file written by `runtime cache export`"),
        "{e}"
    );

    let e = refused(&[
        &"--memory-mb",
        &"4096",
        &"--decisions",
        &dir.path().join("absent"),
    ]);
    assert!(e.contains("cannot read"), "{e}");

    let empty = dir.path().join("empty-trt");
    std::fs::create_dir(&empty).unwrap();
    let e = refused(&[
        &"--decisions",
        &exported,
        &"--memory-mb",
        &"4096",
        &"--trt-cache",
        &empty,
    ]);
    assert!(e.contains("holds no file"), "{e}");

    let e = refused(&[&"--trt-cache", &empty]);
    assert!(
        e.contains("--decisions"),
        "TensorRT caches ship with decisions: {e}"
    );
}
