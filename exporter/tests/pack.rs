//! `exporter pack` end to end: packs of the committed tiny bundle, unpacked
//! with tar, installed by their own install.sh into a scratch root, and the
//! installed runtime selecting and serving from there with the installed
//! config; the unit checked by `systemd-analyze verify` for every board.
//!
//! The runtime packed is the x86_64 `runtime` binary of this workspace,
//! found beside the `exporter` binary: `cargo test --workspace` builds it
//! (for `cargo test -p tailor-exporter --test pack` alone, first run
//! `cargo build -p tailor-runtime --bin runtime`). Packs for the aarch64
//! boards carry a stand-in file with an aarch64 ELF header, enough for pack's
//! architecture check and for the unit's checks; the real aarch64 binary is
//! checked under qemu by targets/cross/build.sh.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tailor_runtime::bundle::Bundle;
use tailor_targets::BOARDS;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn tiny_bundle() -> PathBuf {
    root().join("runtime/tests/fixtures/bundle-tiny")
}

/// The x86_64 runtime this workspace built, beside the exporter.
fn runtime_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_exporter")).with_file_name("runtime");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p tailor-runtime --bin runtime",
        bin.display()
    );
    bin
}

/// A file with the ELF header of an aarch64 executable (and nothing else).
fn aarch64_stand_in(dir: &Path) -> PathBuf {
    let mut header = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0".to_vec();
    header.extend(183u16.to_le_bytes());
    header.resize(64, 0);
    let path = dir.join("runtime-aarch64");
    std::fs::write(&path, header).unwrap();
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn exporter(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_exporter")).args(args))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeded(out: Output) -> Output {
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

fn json(out: Output) -> Value {
    let out = succeeded(out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Packs `bundle` for `target` into `dir/pack.tar.gz` with `extra` flags;
/// returns the `--json` report.
fn pack(dir: &Path, bundle: &Path, target: &str, runtime: &Path, extra: &[&str]) -> Value {
    let out = dir.join("pack.tar.gz");
    let mut args = vec!["pack", s(bundle), "--target", target, "-o", s(&out)];
    args.extend([
        "--runtime-bin",
        s(runtime),
        "--latency-ms",
        "100000",
        "--json",
    ]);
    args.extend(extra);
    json(exporter(&args))
}

/// Unpacks `archive` with GNU tar into `dir`; returns the pack's top directory.
fn unpack(archive: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    succeeded(run(Command::new("tar").args([
        "xzf",
        s(archive),
        "-C",
        s(dir),
    ])));
    let top: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(top.len(), 1, "one top directory: {top:?}");
    top[0].clone()
}

fn install(pack: &Path, args: &[&str]) -> Output {
    run(Command::new(pack.join("install.sh")).args(args))
}

/// Every file under `dir` with its mode and contents.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_owned();
                files.insert(
                    rel,
                    (meta.permissions().mode(), std::fs::read(&path).unwrap()),
                );
            }
        }
    }
    files
}

fn subnet_ids(bundle: &Path) -> Vec<String> {
    let b = Bundle::open(bundle).unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
    let ids = b
        .manifest()
        .subnets
        .iter()
        .map(|s| s.id.to_owned())
        .collect();
    ids
}

/// `runtime serve` from the scratch root, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` over the unix socket with curl, once it answers.
fn curl_when_up(socket: &Path, path: &str, server: &mut Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = run(Command::new("curl")
            .args(["-sf", "--unix-socket", s(socket)])
            .arg(format!("http://localhost{path}")));
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("runtime serve exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "no answer on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Measuring briefly, caching nothing: a test's selection.
const QUICK: [&str; 5] = ["--no-cache", "--min-runs", "3", "--min-time", "0"];

/// What `install.sh --root` laid out in a scratch root.
struct Installed {
    runtime: PathBuf,
    config: PathBuf,
    bundle: PathBuf,
}

impl Installed {
    fn in_root(scratch: &Path) -> Installed {
        Installed {
            runtime: scratch.join("opt/tailor/bin/runtime"),
            config: scratch.join("etc/tailor/runtime.toml"),
            bundle: scratch.join("opt/tailor/bundle"),
        }
    }

    /// The installed runtime serving with the installed config on the unix
    /// `socket`; the bundle is named on the command line because the
    /// config's path is the device's.
    fn serve(&self, socket: &Path) -> Server {
        Server(
            Command::new(&self.runtime)
                .args(["serve", s(&self.bundle), "--config", s(&self.config)])
                .arg("--listen")
                .arg(format!("unix:{}", socket.display()))
                .args(QUICK)
                .env_remove("NOTIFY_SOCKET")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

#[test]
fn a_pack_installs_into_a_scratch_root_twice_alike_then_selects_serves_and_uninstalls() {
    let dir = tempfile::tempdir().unwrap();
    let report = pack(
        dir.path(),
        &tiny_bundle(),
        "generic-x86_64",
        &runtime_bin(),
        &["--memory-mb", "4096"],
    );
    assert!(
        report["subnets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["fate"] == "kept"),
        "{report}"
    );
    let pack = unpack(
        &dir.path().join("pack.tar.gz"),
        &dir.path().join("unpacked"),
    );
    assert_eq!(pack.file_name().unwrap(), "tailor-generic-x86_64");

    let scratch = dir.path().join("root");
    std::fs::create_dir(&scratch).unwrap();
    succeeded(install(&pack, &["--root", s(&scratch)]));
    let first = tree(&scratch);
    succeeded(install(&pack, &["--root", s(&scratch)]));
    assert_eq!(tree(&scratch), first, "a second install changes nothing");
    for installed in [
        "opt/tailor/bin/runtime",
        "opt/tailor/bundle/manifest.postcard",
        "opt/tailor/install.sh",
        "etc/tailor/runtime.toml",
        "etc/systemd/system/tailor.service",
        "usr/lib/sysusers.d/tailor.conf",
    ] {
        assert!(
            first.contains_key(Path::new(installed)),
            "{installed} not installed: {:?}",
            first.keys()
        );
    }
    assert_eq!(first[Path::new("opt/tailor/bin/runtime")].0 & 0o777, 0o755);
    assert_eq!(
        first[Path::new("opt/tailor/bin/runtime")].1,
        std::fs::read(runtime_bin()).unwrap(),
        "the runtime packed is the one named"
    );

    let installed = Installed::in_root(&scratch);
    let selection = json(run(Command::new(&installed.runtime)
        .args([
            "select",
            s(&installed.bundle),
            "--config",
            s(&installed.config),
            "--json",
        ])
        .args(QUICK)));
    assert_eq!(selection["limits"]["latency_ms"], 100000.0, "{selection}");
    assert_eq!(selection["limits"]["memory_mb"], 4096.0, "{selection}");
    let chosen = selection["subnet"]["id"].as_str().unwrap().to_owned();

    let socket = dir.path().join("sock");
    let mut server = installed.serve(&socket);
    let health = curl_when_up(&socket, "/v1/health", &mut server);
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["subnet"], chosen.as_str(), "{health}");
    drop(server);

    // A config edited on the device survives a reinstall; the pack's lands beside it.
    let config = &installed.config;
    let mut edited = std::fs::read_to_string(config).unwrap();
    edited.push_str("threads = 2\n");
    std::fs::write(config, &edited).unwrap();
    succeeded(install(&pack, &["--root", s(&scratch)]));
    assert_eq!(std::fs::read_to_string(config).unwrap(), edited);
    assert_eq!(
        std::fs::read(config.with_extension("toml.new")).unwrap(),
        std::fs::read(pack.join("root/opt/tailor/runtime.toml")).unwrap()
    );

    succeeded(install(&pack, &["--root", s(&scratch), "--uninstall"]));
    assert_eq!(tree(&scratch), BTreeMap::new(), "uninstall leaves no file");
}

/// The workspace's runtime with bytes appended: another file that runs the
/// same (nothing reads an ELF past its sections), to tell versions apart.
fn runtime_with_marker(dir: &Path) -> PathBuf {
    let path = dir.join("runtime-v2");
    let mut bytes = std::fs::read(runtime_bin()).unwrap();
    bytes.extend_from_slice(b"tailor v2\n");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// An upgrade on a running board: `install.sh` again while the installed
/// runtime executes (writing into it fails, "Text file busy"), and one
/// that fails half way.
#[test]
fn a_reinstall_over_a_running_runtime_lands_whole_and_a_failed_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1"), dir.path().join("v2"));
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::create_dir_all(&v2).unwrap();
    // v2: another runtime file, another bundle, another runtime.toml.
    let teacher =
        root().join("tests/fixtures/vit-tiny/output/eval/training_99/teacher_checkpoint.pth");
    let bundle_v2 = dir.path().join("bundle-v2");
    succeeded(exporter(&[
        "--subnets",
        "32x2,64x4",
        s(&teacher),
        "-o",
        s(&bundle_v2),
        "--quiet",
    ]));
    pack(
        &v1,
        &tiny_bundle(),
        "generic-x86_64",
        &runtime_bin(),
        &["--memory-mb", "4096"],
    );
    let marked = runtime_with_marker(dir.path());
    pack(
        &v2,
        &bundle_v2,
        "generic-x86_64",
        &marked,
        &["--memory-mb", "2048"],
    );
    let pack_v1 = unpack(&v1.join("pack.tar.gz"), &v1.join("unpacked"));
    let pack_v2 = unpack(&v2.join("pack.tar.gz"), &v2.join("unpacked"));

    let scratch = dir.path().join("root");
    std::fs::create_dir(&scratch).unwrap();
    succeeded(install(&pack_v1, &["--root", s(&scratch)]));
    let socket = dir.path().join("sock");
    let mut server = Installed::in_root(&scratch).serve(&socket);
    // Selected and serving: past reading the bundle, executing the runtime.
    curl_when_up(&socket, "/v1/health", &mut server);

    let upgrade = install(&pack_v2, &["--root", s(&scratch)]);
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server stopped during the upgrade: the runtime was not executing throughout"
    );
    succeeded(upgrade);
    let upgraded = tree(&scratch);
    // The unedited runtime.toml is v2's, and so is the record of it.
    let mut expected = tree(&pack_v2.join("root"));
    let packed = expected[Path::new("opt/tailor/runtime.toml")].clone();
    for config in ["etc/tailor/runtime.toml", "etc/tailor/runtime.toml.packed"] {
        expected.insert(config.into(), packed.clone());
    }
    assert_eq!(
        upgraded, expected,
        "the installed files are v2's, all of them, and nothing else"
    );
    drop(server);

    // An edited runtime.toml is kept on upgrade (here back to v1): v1's is
    // put beside it, and the next install still sees it as edited.
    let config = scratch.join("etc/tailor/runtime.toml");
    let edited = format!("{}threads = 2\n", std::fs::read_to_string(&config).unwrap());
    std::fs::write(&config, &edited).unwrap();
    for _ in 0..2 {
        succeeded(install(&pack_v1, &["--root", s(&scratch)]));
        assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
        assert_eq!(
            std::fs::read(config.with_extension("toml.new")).unwrap(),
            std::fs::read(pack_v1.join("root/opt/tailor/runtime.toml")).unwrap()
        );
    }
    succeeded(install(&pack_v2, &["--root", s(&scratch)]));
    let upgraded = tree(&scratch);

    // A pack with a file cp cannot read (a dangling link) fails while
    // staging: the v2 install stays as it was, nothing staged is left.
    let broken = unpack(&v1.join("pack.tar.gz"), &dir.path().join("broken"));
    let sysusers = broken.join("root/usr/lib/sysusers.d/tailor.conf");
    std::fs::remove_file(&sysusers).unwrap();
    std::os::unix::fs::symlink("missing", &sysusers).unwrap();
    let failed = install(&broken, &["--root", s(&scratch)]);
    assert!(!failed.status.success(), "{}", stderr(&failed));
    assert_eq!(
        tree(&scratch),
        upgraded,
        "a failed install changed the installed files"
    );
}

#[test]
fn every_board_s_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let aarch64 = aarch64_stand_in(dir.path());
    for board in BOARDS {
        let work = dir.path().join(board.name);
        std::fs::create_dir(&work).unwrap();
        let runtime = match board.arch {
            tailor_targets::Arch::Aarch64 => aarch64.clone(),
            tailor_targets::Arch::X86_64 => runtime_bin(),
        };
        pack(
            &work,
            &tiny_bundle(),
            board.name,
            &runtime,
            &["--memory-mb", "64"],
        );
        let pack = unpack(&work.join("pack.tar.gz"), &work.join("unpacked"));
        let scratch = work.join("root");
        std::fs::create_dir(&scratch).unwrap();
        succeeded(install(&pack, &["--root", s(&scratch)]));
        // systemd checks that ExecStart exists: point the unit at the
        // scratch root it was installed into.
        let unit =
            std::fs::read_to_string(scratch.join("etc/systemd/system/tailor.service")).unwrap();
        let prefix = scratch.join("opt/tailor");
        let verified = work.join("tailor.service");
        std::fs::write(&verified, unit.replace("/opt/tailor", s(&prefix))).unwrap();
        let out = run(Command::new("systemd-analyze").args(["verify", s(&verified)]));
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: systemd-analyze verify: {}",
            board.name,
            stderr(&out)
        );
        // The sandboxing, as systemd rates it (0 to 10, lower is tighter):
        // a board with no accelerator gets it all, a Jetson keeps its GPU
        // stack's device nodes and system calls. Before the hardening
        // beyond ProtectSystem= and the user, both were rated 8.5.
        let (threshold, rated) = if board.groups.is_empty() {
            ("2.0", "20")
        } else {
            ("4.0", "40")
        };
        let out = run(Command::new("systemd-analyze").args([
            "security",
            "--offline=true",
            &format!("--threshold={rated}"),
            "--no-pager",
            s(&verified),
        ]));
        assert!(
            out.status.success(),
            "{}: systemd-analyze security rates the unit over {threshold}: {}",
            board.name,
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
        );
        let expected_groups = if board.groups.is_empty() {
            ""
        } else {
            "video render"
        };
        assert!(
            unit.contains(&format!("\nSupplementaryGroups={expected_groups}\n")),
            "{}: {unit}",
            board.name
        );
    }
}

/// The runtime's predicted footprint, `(weights + activations) * 5/4`, of
/// each sub-network, from the manifest's figures.
fn footprints(bundle: &Path) -> Vec<(String, u64)> {
    let b = Bundle::open(bundle).unwrap();
    let sizes = b
        .manifest()
        .subnets
        .iter()
        .map(|s| {
            (
                s.id.to_owned(),
                (s.weight_bytes + s.activation_bytes) * 5 / 4,
            )
        })
        .collect();
    sizes
}

#[test]
fn a_board_too_small_for_the_largest_drops_it_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = footprints(&tiny_bundle());
    let (largest, largest_bytes) = sizes.iter().max_by_key(|(_, b)| *b).unwrap().clone();
    let others_bytes = sizes
        .iter()
        .filter(|(id, _)| *id != largest)
        .map(|(_, b)| *b)
        .max()
        .unwrap();
    // Between the largest and the rest, in MiB.
    let budget_mb = ((largest_bytes + others_bytes) / 2) as f64 / (1024.0 * 1024.0);
    let budget = format!("{budget_mb}");

    let report = pack(
        dir.path(),
        &tiny_bundle(),
        "rpi5",
        &aarch64_stand_in(dir.path()),
        &["--memory-mb", &budget],
    );
    let fates: Vec<(&str, &str)> = report["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].as_str().unwrap(), v["fate"].as_str().unwrap()))
        .collect();
    for (id, fate) in &fates {
        let expected = if *id == largest { "dropped" } else { "kept" };
        assert_eq!(*fate, expected, "{id}: {report}");
    }
    let pack_dir = unpack(&dir.path().join("pack.tar.gz"), &dir.path().join("small"));
    let bundle = pack_dir.join("root/opt/tailor/bundle");
    let ids = subnet_ids(&bundle);
    assert!(
        !ids.contains(&largest) && ids.len() == sizes.len() - 1,
        "{ids:?}"
    );
    succeeded(exporter(&["inspect", s(&bundle), "--verify"]));
    let config = std::fs::read_to_string(pack_dir.join("root/opt/tailor/runtime.toml")).unwrap();
    assert!(
        config.contains(&format!("\nmemory_mb = {budget_mb:?}\n")),
        "{config}"
    );

    let report = pack(
        dir.path(),
        &tiny_bundle(),
        "rpi5",
        &aarch64_stand_in(dir.path()),
        &["--memory-mb", &budget, "--keep", &largest, "--force"],
    );
    let kept = report["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == largest.as_str())
        .unwrap();
    assert_eq!(kept["fate"], "kept_on_request", "{report}");
    let pack_dir = unpack(&dir.path().join("pack.tar.gz"), &dir.path().join("kept"));
    let bundle = pack_dir.join("root/opt/tailor/bundle");
    assert_eq!(subnet_ids(&bundle).len(), sizes.len());
    succeeded(exporter(&["inspect", s(&bundle), "--verify"]));
}

#[test]
fn weight_files_no_packed_sub_network_reads_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let teacher =
        root().join("tests/fixtures/vit-tiny/output/eval/training_99/teacher_checkpoint.pth");
    let bundle = dir.path().join("bundle");
    succeeded(exporter(&[
        "--subnets",
        "32x2,64x4",
        s(&teacher),
        "-o",
        s(&bundle),
        "--quiet",
    ]));
    let sizes = footprints(&bundle);
    let narrow = sizes.iter().find(|(id, _)| id == "w32-d2").unwrap().1;
    let budget = format!("{}", (narrow + 1) as f64 / (1024.0 * 1024.0));
    pack(
        dir.path(),
        &bundle,
        "rk3588",
        &aarch64_stand_in(dir.path()),
        &["--memory-mb", &budget],
    );
    let pack_dir = unpack(
        &dir.path().join("pack.tar.gz"),
        &dir.path().join("unpacked"),
    );
    let packed = pack_dir.join("root/opt/tailor/bundle");
    assert_eq!(subnet_ids(&packed), ["w32-d2"]);
    let files: Vec<PathBuf> = tree(&packed).into_keys().collect();
    assert!(
        files.contains(&PathBuf::from("graphs/weights/w32.bin")),
        "{files:?}"
    );
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with("w64.bin") || f.ends_with("w64-d4.onnx")),
        "{files:?}"
    );
    succeeded(exporter(&["inspect", s(&packed), "--verify"]));
}

#[test]
fn a_calibrated_bundle_packs_its_scores_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    common::copy_dir(&tiny_bundle(), &bundle);
    let data = dir.path().join("photos");
    for i in 0..6 {
        common::write_png(
            &data.join(format!("{i}.png")),
            8,
            &common::grey((i % 2) as u8, i, 8),
        );
    }
    succeeded(exporter(&[
        "calibrate",
        s(&bundle),
        "--data",
        s(&data),
        "-q",
    ]));
    pack(
        dir.path(),
        &bundle,
        "rk3588",
        &aarch64_stand_in(dir.path()),
        &[],
    );
    let pack_dir = unpack(
        &dir.path().join("pack.tar.gz"),
        &dir.path().join("unpacked"),
    );
    let packed = pack_dir.join("root/opt/tailor/bundle");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(packed.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["calibration"]["quality_metric"], "cka_fidelity");
    assert!(manifest["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["quality"].is_f64()));
    // --verify checks the ranges file the packed manifest names.
    let ranges = manifest["calibration"]["ranges"]["path"].as_str().unwrap();
    assert!(packed.join(ranges).is_file(), "{ranges} not packed");
    succeeded(exporter(&["inspect", s(&packed), "--verify"]));
}

/// Asserts a failed pack naming every `needle`, and nothing left in `dir`
/// but `before`.
fn assert_fails_cleanly(
    out: &Output,
    dir: &Path,
    before: &BTreeMap<PathBuf, (u32, Vec<u8>)>,
    needles: &[&str],
) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
    assert_eq!(&tree(dir), before, "the failure left files: {err}");
}

#[test]
fn bad_inputs_fail_naming_the_problem_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stand_in = aarch64_stand_in(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("pack.tar.gz");
    let bundle = tiny_bundle();
    let attempt = |target: &str, runtime: &Path, extra: &[&str]| {
        let mut args = vec!["pack", s(&bundle), "--target", target, "-o", s(&out)];
        args.extend(["--runtime-bin", s(runtime), "--latency-ms", "50"]);
        args.extend(extra);
        exporter(&args)
    };
    let empty = BTreeMap::new();

    let missing = dir.path().join("no-such-runtime");
    let o = attempt("jetson-orin-nano", &missing, &[]);
    assert_fails_cleanly(
        &o,
        &out_dir,
        &empty,
        &[s(&missing), "targets/cross/build.sh"],
    );

    let o = attempt("rpi5", &runtime_bin(), &[]);
    assert_fails_cleanly(
        &o,
        &out_dir,
        &empty,
        &["built for x86_64, but rpi5 runs aarch64"],
    );

    let o = attempt("generic-x86_64", &stand_in, &[]);
    assert_fails_cleanly(
        &o,
        &out_dir,
        &empty,
        &["built for aarch64, but generic-x86_64 runs x86_64"],
    );

    let script = dir.path().join("runtime.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let o = attempt("rpi5", &script, &[]);
    assert_fails_cleanly(&o, &out_dir, &empty, &["not a 64-bit little-endian ELF"]);

    let o = attempt("jetson-nano", &stand_in, &[]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert_fails_cleanly(
        &o,
        &out_dir,
        &empty,
        &[
            "jetson-nano",
            "jetson-orin-nano, jetson-xavier, rpi5, rk3588, generic-aarch64",
        ],
    );

    let o = attempt("rpi5", &stand_in, &["--keep", "w99-d9"]);
    assert_fails_cleanly(&o, &out_dir, &empty, &["--keep w99-d9"]);

    let o = attempt("rpi5", &stand_in, &["--memory-mb", "0.01"]);
    assert_fails_cleanly(&o, &out_dir, &empty, &["nothing in", "fits rpi5", "w32-d2"]);

    // A corrupted weight file is found before anything is written.
    let corrupted = dir.path().join("corrupted");
    common::copy_dir(&tiny_bundle(), &corrupted);
    let weights = corrupted.join("graphs/weights/w32.bin");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let o = exporter(&[
        "pack",
        s(&corrupted),
        "--target",
        "rpi5",
        "-o",
        s(&out),
        "--runtime-bin",
        s(&stand_in),
        "--latency-ms",
        "50",
    ]);
    assert_fails_cleanly(&o, &out_dir, &empty, &["w32.bin", "corrupted"]);

    std::fs::write(&out, b"an earlier pack").unwrap();
    let before = tree(&out_dir);
    let o = attempt("rpi5", &stand_in, &[]);
    assert_fails_cleanly(
        &o,
        &out_dir,
        &before,
        &[s(&out), "already exists", "--force"],
    );
    succeeded(attempt("rpi5", &stand_in, &["--force"]));
    assert_ne!(tree(&out_dir), before, "--force replaces it");
}

#[test]
fn a_deb_holds_the_same_files_and_runs_the_installer() {
    let dir = tempfile::tempdir().unwrap();
    pack(
        dir.path(),
        &tiny_bundle(),
        "jetson-orin-nano",
        &aarch64_stand_in(dir.path()),
        &["--deb"],
    );
    let deb = dir.path().join("pack.deb");
    let staged: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        // Staged outputs are hidden files beside the destination.
        .filter(|name| name.to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(
        staged,
        Vec::<std::ffi::OsString>::new(),
        "temporary files left"
    );
    let info = |member: Option<&str>| {
        let out = run(Command::new("dpkg-deb").arg("-I").arg(&deb).args(member));
        String::from_utf8(succeeded(out).stdout).unwrap()
    };
    for (member, line) in [
        (None, "Package: tailor-jetson-orin-nano"),
        (None, "Architecture: arm64"),
        (Some("postrm"), "rm -f /etc/tailor/runtime.toml"),
        (Some("postinst"), "/opt/tailor/install.sh --system-only"),
        (
            Some("prerm"),
            "/opt/tailor/install.sh --uninstall --system-only",
        ),
    ] {
        let text = info(member);
        assert!(
            text.contains(line),
            "`{line}` missing from dpkg-deb -I {member:?}:\n{text}"
        );
    }
    let extracted = dir.path().join("deb");
    succeeded(run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&extracted)));
    let pack_dir = unpack(&dir.path().join("pack.tar.gz"), &dir.path().join("tar"));
    assert_eq!(
        tree(&extracted),
        tree(&pack_dir.join("root")),
        "the .deb installs what install.sh does"
    );
    let listing =
        String::from_utf8(succeeded(run(Command::new("dpkg-deb").arg("-c").arg(&deb))).stdout)
            .unwrap();
    assert!(
        listing.contains("-rwxr-xr-x root/root") && listing.contains("opt/tailor/bin/runtime"),
        "{listing}"
    );
}
