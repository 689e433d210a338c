//! Measuring in a child process: the child's memory is its own, and a child
//! that dies is a finding about the candidate, never the end of the caller.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tailor_runtime::engine::{EngineKind, EngineOptions};
use tailor_runtime::profile::MeasureOptions;
use tailor_runtime::trial::{self, Failure, Isolation, Job};

fn graph() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny/graphs/w32-d2.onnx")
}

fn job() -> Job {
    Job {
        graphs: vec![graph()],
        engine: EngineKind::Tract,
        options: EngineOptions::default(),
        measure: MeasureOptions {
            warmup_runs: 1,
            min_runs: 5,
            min_time: Duration::ZERO,
            max_runs: 5,
        },
        input_shape: [1, 3, 32, 32],
    }
}

fn runtime_child() -> Isolation {
    Isolation::Child(PathBuf::from(env!("CARGO_BIN_EXE_runtime")))
}

#[test]
fn a_child_measures_its_own_memory_not_its_parents() {
    // 256 MB written (so resident) in this process.
    let hog = vec![7u8; 256 << 20];
    let in_process = trial::measure(&Isolation::InProcess, &job()).unwrap();
    let in_child = trial::measure(&runtime_child(), &job()).unwrap();
    assert!(in_process[0].peak_mb > 256.0, "{:?}", in_process[0]);
    assert!(in_child[0].peak_mb < 128.0, "{:?}", in_child[0]);
    assert_eq!(in_child[0].runs, 5);
    std::hint::black_box(hog);
}

#[test]
fn a_child_measures_several_graphs_interleaved() {
    let mut two = job();
    two.graphs.push(graph().with_file_name("w32-d4.onnx"));
    let m = trial::measure(&runtime_child(), &two).unwrap();
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|m| m.runs == 5 && m.samples_ms.len() == 5));
}

#[test]
fn engine_errors_come_back_from_the_child_with_their_kind() {
    let mut missing = job();
    missing.graphs = vec![graph().with_file_name("no-such.onnx")];
    let f = trial::measure(&runtime_child(), &missing).unwrap_err();
    match &f {
        Failure::Engine {
            systematic: false,
            message,
            ..
        } => assert!(message.contains("no-such.onnx"), "{message}"),
        other => panic!("{other:?}"),
    }
}

/// An executable script that stands in for a measuring child.
fn script(dir: &Path, body: &str) -> Isolation {
    let path = dir.join("child.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Isolation::Child(path)
}

#[test]
fn children_that_die_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let killed = trial::measure(&script(dir.path(), "kill -KILL $$"), &job()).unwrap_err();
    assert!(matches!(killed, Failure::ExceedsMemory(_)), "{killed:?}");
    let crashed = trial::measure(
        &script(dir.path(), "echo 'in a kernel' >&2; kill -SEGV $$"),
        &job(),
    )
    .unwrap_err();
    assert!(
        matches!(&crashed, Failure::Crashed(why) if why.contains("signal 11") && why.contains("in a kernel")),
        "{crashed:?}"
    );
    let silent =
        trial::measure(&script(dir.path(), "cat > /dev/null; exit 0"), &job()).unwrap_err();
    assert!(
        matches!(&silent, Failure::Crashed(why) if why.contains("no result")),
        "{silent:?}"
    );
    assert!(!silent.is_systematic() && !killed.is_systematic());
}
