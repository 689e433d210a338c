//! A full disk, as `RLIMIT_FSIZE` makes one (`ulimit -f`, with SIGXFSZ
//! ignored so that the write fails with EFBIG instead of killing the
//! writer): each writer (export, calibrate, quantize, pack, the decision
//! cache) says which file it could not write and leaves what it was
//! replacing as it was, with no temporary file behind.

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{copy_dir, files_under};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn exporter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_exporter"))
}

/// Runs `program ARGS...` with files limited to `kib` KiB.
fn with_file_limit(kib: u32, program: &Path, args: &[impl AsRef<OsStr>]) -> Output {
    Command::new("bash")
        .args(["-c", r#"trap "" XFSZ; ulimit -f "$0" && exec "$@""#])
        .arg(kib.to_string())
        .arg(program)
        .args(args)
        .output()
        .unwrap()
}

fn exporter(args: &[impl AsRef<OsStr>]) -> Output {
    with_file_limit(u32::MAX, &exporter_bin(), args)
}

fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file under `dir` with its bytes, hidden ones included.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Runs the writer under a limit of `kib` KiB and checks that it failed
/// naming `file` and its cause, and that nothing under `dir` changed.
fn fails_on_a_full_disk(dir: &Path, kib: u32, args: &[impl AsRef<OsStr>], file: &str) {
    let before = contents(dir);
    let out = with_file_limit(kib, &exporter_bin(), args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a full disk went unnoticed: {err}");
    assert!(err.contains(file), "the error does not name {file}: {err}");
    assert!(err.contains("File too large"), "no cause in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let after = contents(dir);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "files came or went: {err}"
    );
    assert!(after == before, "a file changed: {err}");
}

fn teacher() -> PathBuf {
    root().join("examples/sdr-tiny/sdr.safetensors")
}

fn digits() -> PathBuf {
    root().join("examples/mnist-calib.npz")
}

fn tiny_copy(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    copy_dir(&root().join("runtime/tests/fixtures/bundle-tiny"), &bundle);
    bundle
}

fn calibrate_args(bundle: &Path, data: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["calibrate", "--ranges", "inner", "--limit", "20", "--data"]
        .map(OsString::from)
        .into();
    args.insert(1, bundle.into());
    args.push(data.into());
    args
}

#[test]
fn export_force_on_a_full_disk_keeps_the_old_bundle() {
    // The 1.3 MiB weight file outgrows the limit; the graphs before it fit.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let export: [&dyn AsRef<OsStr>; 6] = [
        &"--all-subnets",
        &"--force",
        &"-q",
        &"-o",
        &bundle,
        &teacher(),
    ];
    succeeded(exporter(&export));
    fails_on_a_full_disk(dir.path(), 256, &export, "w256.bin");
}

#[test]
fn calibrate_on_a_full_disk_keeps_the_old_bundle() {
    // The inner ranges file (17 KB) outgrows the limit.
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiny_copy(dir.path());
    let data = digits();
    fails_on_a_full_disk(dir.path(), 8, &calibrate_args(&bundle, &data), "ranges-");
}

#[test]
fn quantize_on_a_full_disk_keeps_the_old_bundle() {
    // The int8 graphs (20 to 40 KB) outgrow the limit.
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiny_copy(dir.path());
    let data = digits();
    succeeded(exporter(&calibrate_args(&bundle, &data)));
    let quantize: [&dyn AsRef<OsStr>; 4] = [&"quantize", &bundle, &"--precision", &"int8"];
    fails_on_a_full_disk(dir.path(), 16, &quantize, "int8");
}

#[test]
fn pack_on_a_full_disk_keeps_the_old_pack() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiny_copy(dir.path());
    // An aarch64 ELF header is all pack checks of a runtime for rpi5.
    let mut header = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0".to_vec();
    header.extend(183u16.to_le_bytes());
    header.resize(64, 0);
    let runtime = dir.path().join("runtime-aarch64");
    std::fs::write(&runtime, header).unwrap();
    let out = dir.path().join("pack.tar.gz");
    std::fs::write(&out, b"the old pack").unwrap();
    let args: [&dyn AsRef<OsStr>; 11] = [
        &"pack",
        &bundle,
        &"--target",
        &"rpi5",
        &"-o",
        &out,
        &"--force",
        &"--runtime-bin",
        &runtime,
        &"--latency-ms",
        &"100",
    ];
    succeeded(exporter(&args));
    std::fs::write(&out, b"the old pack").unwrap();
    fails_on_a_full_disk(dir.path(), 4, &args, "pack.tar.gz");
}

#[test]
fn select_on_a_full_disk_keeps_the_old_cache_and_says_why_it_is_not_updated() {
    // The decision is still chosen and printed: a cache that cannot be
    // written is a warning, never a failed boot.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("decisions.postcard");
    let runtime = exporter_bin().with_file_name("runtime");
    let bundle = root().join("runtime/tests/fixtures/bundle-tiny");
    let select = |kib: u32, latency_ms: &str| {
        let args: [&dyn AsRef<OsStr>; 13] = [
            &"select",
            &"--engine",
            &"tract",
            &"--min-runs",
            &"3",
            &"--min-time",
            &"0",
            &"--latency-ms",
            &latency_ms,
            &"--cache",
            &cache,
            &"--json",
            &bundle,
        ];
        with_file_limit(kib, &runtime, &args)
    };
    succeeded(select(u32::MAX, "1000"));
    let before = contents(dir.path());
    let out = succeeded(select(0, "999"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("decisions.postcard"), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert!(contents(dir.path()) == before, "the cache changed: {err}");
}
