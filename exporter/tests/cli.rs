//! The `exporter` command as a user meets it: bundles, dry runs, and a clear
//! error with nothing half-written for every bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::{Dtype, SafeTensors};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn tiny(rel: &str) -> PathBuf {
    root().join("tests/fixtures/vit-tiny").join(rel)
}

fn poa_teacher() -> PathBuf {
    tiny("output/eval/training_99/teacher_checkpoint.pth")
}

fn swin_teacher() -> PathBuf {
    root().join("tests/fixtures/swin-tiny/output/eval/training_49/teacher_checkpoint.pth")
}

fn exporter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exporter"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed run whose message contains every `needle`, and that
/// nothing (not even a partial directory) was left in `dir`.
fn assert_fails_cleanly(out: &Output, dir: &Path, needles: &[&str]) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` missing from: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().contains("bundle")),
        "left behind: {left:?}"
    );
}

/// Writes a copy of safetensors teacher `src` with `edit` applied to its tensors.
fn edited_teacher(
    dir: &Path,
    src: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<_, _> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let path = dir.join("edited.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

#[test]
fn exports_the_grid_and_shares_one_weight_file_per_width() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let run = exporter(&[
        "--all-subnets",
        poa_teacher().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["subnets"], 9);

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format_version"], 2);
    assert_eq!(manifest["teacher"]["file"], "teacher_checkpoint.pth");
    assert_eq!(manifest["teacher"]["family"], "vit");
    let subnets = manifest["subnets"].as_array().unwrap();
    let mut weight_files = BTreeMap::new();
    for s in subnets {
        let w = s["width"].as_u64().unwrap();
        let files = s["weights"].as_array().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0]["path"], format!("graphs/weights/w{w}.bin"), "{s}");
        weight_files.insert(w, files[0]["bytes"].as_u64().unwrap());
        assert!(out.join(s["onnx"].as_str().unwrap()).is_file());
        for key in ["params", "macs", "weight_bytes", "activation_bytes"] {
            assert!(s[key].as_u64().unwrap() > 0, "{key} of {s}");
        }
    }
    // One file per width, each the full-depth slice: far less than one copy per graph.
    assert_eq!(
        weight_files.keys().copied().collect::<Vec<_>>(),
        [32, 48, 64]
    );
    let per_width: u64 = weight_files.values().sum();
    let per_graph: u64 = subnets
        .iter()
        .map(|s| s["weight_bytes"].as_u64().unwrap())
        .sum();
    let full_depth: u64 = subnets
        .iter()
        .filter(|s| s["depth"] == 4)
        .map(|s| s["weight_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        per_width >= full_depth && per_width < full_depth + 64 * 1024,
        "{per_width} vs {full_depth}"
    );
    assert!(per_graph > 2 * per_width, "{per_graph} vs {per_width}");

    let inspect = exporter(&["inspect", out.to_str().unwrap(), "--verify"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("w48-d3") && text.contains("verified"),
        "{text}"
    );
}

#[test]
fn graphs_pass_the_onnx_checker() {
    assert_graphs_pass_the_onnx_checker(&poa_teacher(), 9);
    assert_graphs_pass_the_onnx_checker(&swin_teacher(), 12);
    assert_graphs_pass_the_onnx_checker(
        &resnet("output/eval/training_49/teacher_checkpoint.pth"),
        54,
    );
}

/// Exports every sub-network of `teacher` and runs `onnx.checker`'s full
/// check on each of the `count` graphs.
fn assert_graphs_pass_the_onnx_checker(teacher: &Path, count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let run = exporter(&[
        "--all-subnets",
        teacher.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let script = "import glob, sys, onnx\n\
                  paths = sorted(glob.glob(sys.argv[1] + '/graphs/*.onnx'))\n\
                  [onnx.checker.check_model(p, full_check=True) for p in paths]\n\
                  print('checked', len(paths))";
    let check = Command::new("python3")
        .args(["-c", script, out.to_str().unwrap()])
        .output()
        .expect("python3 with the onnx package is needed for this test (.ci/run installs it)");
    assert!(
        check.status.success(),
        "onnx.checker failed: {}",
        stderr(&check)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("checked {count}")
    );
}

#[test]
fn dry_run_prints_the_grid_and_writes_nothing() {
    // Run from an empty directory with an output path in it: a dry run
    // must create neither the bundle nor anything else there.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let run = Command::new(env!("CARGO_BIN_EXE_exporter"))
        .current_dir(dir.path())
        .args([
            "--all-subnets",
            poa_teacher().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--dry-run",
            "--json",
            "--max-params",
            "60k",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let plan: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let subnets = plan["subnets"].as_array().unwrap();
    assert!(!subnets.is_empty() && subnets.len() < 9, "{plan}");
    assert!(subnets
        .iter()
        .all(|s| s["params"].as_u64().unwrap() <= 60_000));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_existing_bundle_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let run = exporter(&[
        "--all-subnets",
        poa_teacher().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("already exists") && stderr(&run).contains("--force"),
        "{}",
        stderr(&run)
    );
    assert!(out.join("keep.txt").exists());
    let forced = exporter(&[
        "--all-subnets",
        poa_teacher().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
        "-q",
    ]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(!out.join("keep.txt").exists() && out.join("manifest.json").exists());
}

#[test]
fn truncated_and_foreign_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(poa_teacher()).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "this is not a checkpoint").unwrap();
    for file in [&cut, &text, &dir.path().join("missing.pth")] {
        let out = dir.path().join("bundle");
        let run = exporter(&[
            "--all-subnets",
            file.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_fails_cleanly(
            &run,
            dir.path(),
            &[file.file_name().unwrap().to_str().unwrap()],
        );
    }
}

#[test]
fn missing_and_misshaped_tensors_name_the_key_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = edited_teacher(dir.path(), &tiny("teacher-bf16.safetensors"), |t| {
        t.remove("blocks.2.mlp.fc1.weight");
    });
    let out = dir.path().join("bundle");
    let run = exporter(&[
        "--all-subnets",
        missing.to_str().unwrap(),
        "--head-dim",
        "16",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(
        &run,
        dir.path(),
        &["edited.safetensors", "blocks.2.mlp.fc1.weight"],
    );

    let misshaped = edited_teacher(dir.path(), &tiny("teacher-bf16.safetensors"), |t| {
        let (_, shape, data) = t.get_mut("blocks.1.attn.proj.weight").unwrap();
        *shape = vec![32, 128];
        data.truncate(32 * 128 * 2);
    });
    let run = exporter(&[
        "--all-subnets",
        misshaped.to_str().unwrap(),
        "--head-dim",
        "16",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(
        &run,
        dir.path(),
        &["blocks.1.attn.proj.weight", "[32, 128]", "[64, 64]"],
    );
}

#[test]
fn non_finite_weights_are_warned_about_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let poisoned = edited_teacher(dir.path(), &tiny("teacher-bf16.safetensors"), |t| {
        let (_, _, data) = t.get_mut("blocks.3.ls2.gamma").unwrap();
        data[10..12].copy_from_slice(&0x7FC0u16.to_le_bytes()); // bf16 NaN at element 5
    });
    let out = dir.path().join("bundle");
    let run = exporter(&[
        "--subnets",
        "32x2",
        poisoned.to_str().unwrap(),
        "--head-dim",
        "16",
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("warning: tensor blocks.3.ls2.gamma (first at element 5)"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn config_contradictions_and_bad_subnets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(tiny("output/config.yaml")).unwrap();
    let lying = dir.path().join("config.yaml");
    std::fs::write(&lying, config.replace("max_depth: 4", "max_depth: 12")).unwrap();
    let out = dir.path().join("bundle");
    let teacher = poa_teacher();
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--all-subnets", "--config", lying.to_str().unwrap()],
            &["config.yaml", "student.max_depth = 12", "4"],
        ),
        (&["--subnets", "40x2"], &["40", "multiple of head_dim 16"]),
        (&["--subnets", "32x5"], &["depth 5", "1..=4"]),
        (&["--subnets", "128x2"], &["width 128", "1..=64"]),
    ];
    for (args, needles) in cases {
        let mut all = args.to_vec();
        all.extend([teacher.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert_fails_cleanly(&exporter(&all), dir.path(), needles);
    }
}

#[test]
fn a_failed_write_leaves_no_bundle() {
    // A file-size limit makes the weight writes fail part-way, as a full disk would.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 64; exec '{}' --all-subnets '{}' -o '{}' -q",
        env!("CARGO_BIN_EXE_exporter"),
        root()
            .join("examples/poa-vit-tiny/eval/training_799/teacher_checkpoint.pth")
            .display(),
        out.display()
    );
    let run = Command::new("sh").args(["-c", &cmd]).output().unwrap();
    // The error names the file whose write failed (weights are written in
    // parallel: any width's), and why.
    assert_fails_cleanly(
        &run,
        dir.path(),
        &["writing", "graphs/weights/w", ".bin: File too large"],
    );
    assert!(!out.exists());
}

fn resnet(rel: &str) -> PathBuf {
    root().join("tests/fixtures/resnet-tiny").join(rel)
}

#[test]
fn resnet_grid_errors_name_the_problem_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(resnet("output/config.yaml")).unwrap();
    let lying = dir.path().join("config.yaml");
    std::fs::write(
        &lying,
        config.replace("stem_channels: 8", "stem_channels: 16"),
    )
    .unwrap();
    let out = dir.path().join("bundle");
    let teacher = resnet("output/eval/training_49/teacher_checkpoint.pth");
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--all-subnets", "--config", lying.to_str().unwrap()],
            &["config.yaml", "student.stem_channels = 16", "8"],
        ),
        (&["--subnets", "6x2.4.3.1"], &["stage 2 depth 4", "1..=3"]),
        (&["--subnets", "6x2.2.1.1"], &["stage 3 depth 1", "2..=4"]),
        (&["--subnets", "5x1.1.2.1"], &["mid width 5", "[4, 6, 8]"]),
        (
            &["--subnets", "6x2"],
            &["ResNet", "4 stage depth(s), not 1"],
        ),
        (
            &["--all-subnets", "--depths", "2:4"],
            &["--depths", "ResNet", "--subnets"],
        ),
    ];
    for (args, needles) in cases {
        let mut all = args.to_vec();
        all.extend([teacher.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert_fails_cleanly(&exporter(&all), dir.path(), needles);
    }
}

#[test]
fn a_resnet_teacher_missing_a_tensor_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    // The deep fixture with its config beside it, without one block's conv2.
    let src = root().join("tests/fixtures/resnet-deep31");
    std::fs::copy(src.join("config.yaml"), dir.path().join("config.yaml")).unwrap();
    let teacher = edited_teacher(dir.path(), &src.join("teacher.safetensors"), |t| {
        t.remove("layer3.layers.5.conv2.conv.weight").unwrap();
    });
    let run = exporter(&[
        "--all-subnets",
        teacher.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(
        &run,
        dir.path(),
        &[
            "edited.safetensors",
            "missing tensor `layer3.layers.5.conv2.conv.weight`",
            "ResNet",
        ],
    );
}

#[test]
fn resnet_dry_run_lists_the_grid_with_stage_fields() {
    let run = exporter(&[
        "--all-subnets",
        "--dry-run",
        "--json",
        "--max-macs",
        "2M",
        resnet("output/eval/training_49/teacher_checkpoint.pth")
            .to_str()
            .unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let plan: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(plan["family"], "resnet");
    let subnets = plan["subnets"].as_array().unwrap();
    assert!(
        !subnets.is_empty() && subnets.len() < 54,
        "{}",
        subnets.len()
    );
    for s in subnets {
        assert!(s["macs"].as_u64().unwrap() <= 2_000_000, "{s}");
        let w = s["width"].as_u64().unwrap();
        assert_eq!(
            s["mid_widths"],
            serde_json::json!([w, 2 * w, 4 * w, 8 * w]),
            "{s}"
        );
        assert_eq!(s["depths"].as_array().unwrap().len(), 4, "{s}");
    }
}

#[test]
fn swin_contradictions_bad_depth_lists_and_missing_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let swin = root().join("tests/fixtures/swin-tiny");
    let config = std::fs::read_to_string(swin.join("output/config.yaml")).unwrap();
    let lying = dir.path().join("config.yaml");
    std::fs::write(&lying, config.replace("window_size: 3", "window_size: 7")).unwrap();
    let out = dir.path().join("bundle");
    let teacher = swin_teacher();
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--all-subnets", "--config", lying.to_str().unwrap()],
            &[
                "config.yaml",
                "student.window_size = 7",
                "the tensors say 3",
            ],
        ),
        (
            &["--subnets", "8x2.2.6.2"],
            &["stage 3", "6 blocks", "1..=5"],
        ),
        (
            &["--subnets", "w8-d2.1.3.2"],
            &["stage 2", "1 blocks", "2..=2"],
        ),
        (&["--subnets", "8x3"], &["Swin", "4 stage depth(s), not 1"]),
    ];
    for (args, needles) in cases {
        let mut all = args.to_vec();
        all.extend([teacher.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert_fails_cleanly(&exporter(&all), dir.path(), needles);
    }

    // A plain-named Swin without one of its tensors.
    let bytes = std::fs::read(swin.join("teacher-nobias-fp16.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let gone = "stages.2.blocks.3.ffn.fc2.weight";
    let views: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != gone)
        .collect();
    let missing = dir.path().join("missing.safetensors");
    safetensors::serialize_to_file(views, None, &missing).unwrap();
    let run = exporter(&[
        "--all-subnets",
        missing.to_str().unwrap(),
        "--image-size",
        "40",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(&run, dir.path(), &["missing.safetensors", gone, "Swin"]);
}
