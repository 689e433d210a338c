//! The `exporter` command as a user meets it: bundles, dry runs, and a clear
//! error with nothing half-written for every bad input.

mod common;

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
    assert_eq!(manifest["format_version"], 6);
    assert_eq!(
        manifest["calibration"],
        serde_json::Value::Null,
        "not calibrated yet"
    );
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
    assert_graphs_pass_the_onnx_checker(&sdr_teacher(), 17);
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

#[test]
fn swin_dry_run_filters_and_inspect_show_the_stage_depths() {
    let teacher = swin_teacher();
    let teacher = teacher.to_str().unwrap();
    let plan = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["--all-subnets", "--dry-run", "--json", teacher];
        args.extend(extra);
        let run = exporter(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        let plan: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(plan["family"], "swin");
        plan["subnets"].as_array().unwrap().clone()
    };
    // --max-macs keeps exactly the grid's sub-networks under the limit
    // (a filter on params, or on the wrong side of the limit, fails this).
    let all = plan(&[]);
    assert_eq!(all.len(), 12);
    let under: Vec<_> = all
        .iter()
        .filter(|s| s["macs"].as_u64().unwrap() <= 1_500_000)
        .map(|s| s["id"].clone())
        .collect();
    let kept: Vec<_> = plan(&["--max-macs", "1.5M"])
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert!(!kept.is_empty() && kept.len() < all.len(), "{kept:?}");
    assert_eq!(kept, under);
    // Only stage 3 is elastic: the other stages keep the teacher's depth.
    for s in &all {
        let d: Vec<u64> = serde_json::from_value(s["depths"].clone()).unwrap();
        assert_eq!((d[0], d[1], d[3]), (2, 2, 2), "{s}");
        assert_eq!(s["depth"].as_u64().unwrap(), d.iter().sum::<u64>(), "{s}");
        assert!(s["mid_widths"].is_null(), "{s}");
    }

    // Both id syntaxes select, and inspect shows the per-stage ids.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let run = exporter(&[
        "--subnets",
        "8x2.2.3.2,w12-d2.2.5.2",
        "-q",
        teacher,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let run = exporter(&["inspect", "--verify", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains("swin"), "{text}");
    for id in ["w8-d2.2.3.2", "w12-d2.2.5.2"] {
        assert!(text.contains(id), "{text}");
    }
    let run = exporter(&["inspect", "--json", out.to_str().unwrap()]);
    let manifest: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let depths: Vec<_> = manifest["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["depths"].clone())
        .collect();
    assert_eq!(
        depths,
        [
            serde_json::json!([2, 2, 3, 2]),
            serde_json::json!([2, 2, 5, 2])
        ]
    );
}

/// `runtime select --json` on a bundle, as a deployment script runs it.
fn runtime_select(bundle: &Path, latency_ms: &str) -> Output {
    common::runtime(
        "select",
        bundle,
        &["--memory-mb", "4096", "--latency-ms", latency_ms],
    )
}

#[test]
fn swin_and_resnet_bundles_are_selected_by_the_runtime_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (swin_teacher(), "4x2.2.2.2,8x2.2.3.2", "w8-d2.2.3.2"),
        (
            resnet("output/eval/training_49/teacher_checkpoint.pth"),
            "4x1.1.2.1,8x2.3.4.1",
            "w8-d2.3.4.1",
        ),
    ];
    for (teacher, subnets, largest) in cases {
        let out = dir.path().join(largest);
        let run = exporter(&[
            "--subnets",
            subnets,
            "-q",
            teacher.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        // With room for everything the CLI picks the larger sub-network (a
        // manifest the CLI decodes wrongly, or ranks by the wrong field,
        // picks the other or fails).
        let run = runtime_select(&out, "100000");
        assert!(run.status.success(), "{}", stderr(&run));
        let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(report["subnet"]["id"], largest, "{report}");
        // With no room, exit 3 (nothing fits), not a crash.
        let run = runtime_select(&out, "0.000001");
        assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    }
}

fn sdr_teacher() -> PathBuf {
    root().join("examples/sdr-tiny/sdr.safetensors")
}

/// The example SDR teacher with `edit` applied to its tensors and `spec`
/// (sdr.json's text) beside it, in `dir`.
fn edited_sdr(
    dir: &Path,
    spec: &str,
    edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    std::fs::write(dir.join("sdr.json"), spec).unwrap();
    edited_teacher(dir, &sdr_teacher(), edit)
}

fn sdr_spec() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("examples/sdr-tiny/sdr.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Exports every sub-network of the example SDR teacher into `dir`;
/// returns the bundle and its manifest.
fn sdr_bundle(dir: &Path) -> (PathBuf, serde_json::Value) {
    let out = dir.join("bundle");
    let run = exporter(&[
        "--all-subnets",
        sdr_teacher().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    (out, serde_json::from_str(&text).unwrap())
}

#[test]
fn sdr_bundle_stores_each_weight_piece_once() {
    let dir = tempfile::tempdir().unwrap();
    let (out, manifest) = sdr_bundle(dir.path());
    assert_eq!(manifest["teacher"]["family"], "sdr");
    let subnets = manifest["subnets"].as_array().unwrap();
    // 4 SDR blocks × 2 groups: 16 routes, each picking one group per block.
    let routes: Vec<&serde_json::Value> = subnets.iter().map(|s| &s["route"]).collect();
    assert_eq!(subnets.len(), 17);
    assert_eq!(subnets[0]["id"], "full");
    assert!(routes[0].is_null());
    assert_eq!(subnets[6]["id"], "r0.1.0.1");
    assert_eq!(*routes[6], serde_json::json!([0, 1, 0, 1]));
    let files: std::collections::BTreeSet<&str> = subnets
        .iter()
        .map(|s| s["weights"][0]["path"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "one weight file for every path: {files:?}");
    let stored = std::fs::metadata(out.join(files.first().unwrap()))
        .unwrap()
        .len();
    let teacher = std::fs::metadata(sdr_teacher()).unwrap().len();
    assert!(
        (stored as f64) <= 1.3 * teacher as f64,
        "weights {stored} B vs teacher {teacher} B"
    );
    // One copy per graph would be more than the paths' sum.
    let per_graph: u64 = subnets
        .iter()
        .map(|s| s["weight_bytes"].as_u64().unwrap())
        .sum();
    assert!(per_graph > 8 * stored, "{per_graph} vs {stored}");
    // The whole bundle (graphs, weights, manifest) beside the teacher: the
    // 17 graphs' structure is a few kB each, so a weight piece stored per
    // path instead of once (the trunk alone is in all 17) would overflow it.
    let bundle: u64 = common::files_under(&out)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        (bundle as f64) <= 1.3 * teacher as f64,
        "bundle {bundle} B vs teacher {teacher} B: a weight piece stored more than once?"
    );
}

/// Parameters (float initializers, all external) and conv MACs (output
/// elements × weight fan-in, shapes from onnx's inference) of each graph,
/// counted by onnx from the graphs alone.
const GRAPH_COSTS: &str = "\
import glob, json, os, sys, onnx
from math import prod
out = {}
for p in sorted(glob.glob(sys.argv[1] + '/graphs/*.onnx')):
    m = onnx.shape_inference.infer_shapes(onnx.load(p, load_external_data=False))
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.value_info) + list(m.graph.output)}
    dims.update({t.name: list(t.dims) for t in m.graph.initializer})
    floats = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in floats), p
    macs = sum(prod(dims[n.output[0]][1:]) * prod(dims[n.input[1]][1:])
               for n in m.graph.node if n.op_type == 'Conv')
    out[os.path.basename(p)[:-5]] = [sum(prod(t.dims) for t in floats), macs]
print(json.dumps(out))";

#[test]
fn sdr_manifest_costs_match_the_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let (out, manifest) = sdr_bundle(dir.path());
    let counted = Command::new("python3")
        .args(["-c", GRAPH_COSTS, out.to_str().unwrap()])
        .output()
        .expect("python3 with the onnx package is needed for this test (.ci/run installs it)");
    assert!(counted.status.success(), "{}", stderr(&counted));
    let counted: BTreeMap<String, [u64; 2]> = serde_json::from_slice(&counted.stdout).unwrap();
    let subnets = manifest["subnets"].as_array().unwrap();
    assert_eq!(counted.len(), subnets.len());
    for s in subnets {
        let id = s["id"].as_str().unwrap();
        let costs = [s["params"].as_u64().unwrap(), s["macs"].as_u64().unwrap()];
        assert_eq!(costs, counted[id], "{id}: manifest [params, macs] vs graph");
    }
    // Paths differ from the whole net, and from each other where their groups' sizes do.
    assert!(counted["full"][0] > counted["r0.0.0.0"][0]);
}

#[test]
fn sdr_specs_that_do_not_partition_the_channels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let spec = sdr_spec();
    let mut overlapping = spec.clone();
    // Channel 1 of layer3.1 (the second SDR block) is group 0's: also
    // putting it in group 1 overlaps.
    overlapping["sdr_blocks"][1]["groups"][1]
        .as_array_mut()
        .unwrap()
        .push(1.into());
    let mut uncovered = spec.clone();
    let last = uncovered["sdr_blocks"][3]["groups"][0]
        .as_array_mut()
        .unwrap();
    let dropped = last.pop().unwrap();
    let cases = [
        (
            overlapping,
            "layer3.1: channel 1 is in both group 0 and group 1".to_owned(),
        ),
        (
            uncovered,
            format!("layer3.3: channel {dropped} of 64 is in no group"),
        ),
    ];
    for (spec, needle) in cases {
        let teacher = edited_sdr(dir.path(), &spec.to_string(), |_| {});
        let run = exporter(&[
            "--all-subnets",
            teacher.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_fails_cleanly(&run, dir.path(), &["sdr.json", &needle]);
    }
}

#[test]
fn sdr_missing_tensors_and_bad_routes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let missing = edited_sdr(dir.path(), &sdr_spec().to_string(), |t| {
        t.remove("layer2.0.bn2.running_var");
    });
    let run = exporter(&[
        "--all-subnets",
        missing.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(
        &run,
        dir.path(),
        &["edited.safetensors", "layer2.0.bn2.running_var"],
    );

    let teacher = sdr_teacher();
    let cases: [(&str, &[&str]); 3] = [
        ("r0.2.0.0", &["r0.2.0.0", "[2, 2, 2, 2]"]),
        ("r0.1.0", &["r0.1.0", "[2, 2, 2, 2]"]),
        ("64x2.2", &["64x2.2", "or a route"]),
    ];
    for (subnets, needles) in cases {
        let run = exporter(&[
            "--subnets",
            subnets,
            teacher.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_fails_cleanly(&run, dir.path(), needles);
    }
    // An SDR id for an elastic teacher.
    let run = exporter(&[
        "--subnets",
        "full",
        poa_teacher().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_fails_cleanly(&run, dir.path(), &["`full`", "ViT teacher"]);
}
