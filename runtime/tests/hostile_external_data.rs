//! Graphs whose external data would be read from outside their directory:
//! through `..`, an absolute location, or a symlink. Every engine loads
//! through the same check, so tract stands for both. (tract refuses some of
//! these itself, as its own backend error; ONNX Runtime's checks vary by
//! version: the runtime's refusal comes first and names the problem.)

use std::path::{Path, PathBuf};

use tailor_runtime::engine::{self, EngineError, EngineKind, EngineOptions};
use tailor_runtime::fs::Escape;

/// The engine fixture's two tensors read `weights/w8.bin`.
const LOCATION: &[u8] = b"weights/w8.bin";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine")
}

/// `dir/graph/tiny.onnx` with its external data location replaced by
/// `location` (as long as the original, so the protobuf stays valid), the
/// weights both at `dir/graph/weights/w8.bin` and at `dir/outside.bin`.
fn graph_reading(dir: &Path, location: &[u8]) -> PathBuf {
    assert_eq!(location.len(), LOCATION.len());
    let graph_dir = dir.join("graph");
    std::fs::create_dir_all(graph_dir.join("weights")).unwrap();
    let weights = std::fs::read(fixture_dir().join("weights/w8.bin")).unwrap();
    std::fs::write(graph_dir.join("weights/w8.bin"), &weights).unwrap();
    std::fs::write(dir.join("outside.bin"), &weights).unwrap();
    let mut bytes = std::fs::read(fixture_dir().join("tiny.onnx")).unwrap();
    let mut replaced = 0;
    for at in 0..=bytes.len() - LOCATION.len() {
        if &bytes[at..at + LOCATION.len()] == LOCATION {
            bytes[at..at + LOCATION.len()].copy_from_slice(location);
            replaced += 1;
        }
    }
    assert_eq!(replaced, 2, "the fixture's two tensors");
    let graph = graph_dir.join("tiny.onnx");
    std::fs::write(&graph, bytes).unwrap();
    graph
}

fn refusal(graph: &Path) -> (String, Escape) {
    let opts = EngineOptions {
        batch: 1,
        ..EngineOptions::default()
    };
    match engine::load(EngineKind::Tract, graph, &opts) {
        Err(EngineError::OutsideExternalData {
            graph: named,
            tensor,
            location,
            problem,
        }) => {
            assert_eq!(named, graph);
            assert_eq!(tensor, "embed.weight");
            (location, problem)
        }
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("loaded {}", graph.display()),
    }
}

#[test]
fn a_location_climbing_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let graph = graph_reading(dir.path(), b"../outside.bin");
    assert_eq!(refusal(&graph), ("../outside.bin".into(), Escape::Parent));
}

#[test]
fn an_absolute_location_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let graph = graph_reading(dir.path(), b"//////dev/zero");
    assert_eq!(refusal(&graph), ("//////dev/zero".into(), Escape::Absolute));
}

#[test]
fn a_symlink_out_of_the_graph_s_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let graph = graph_reading(dir.path(), LOCATION);
    let weights = graph.with_file_name("weights/w8.bin");
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.bin"), &weights).unwrap();
    let (location, problem) = refusal(&graph);
    assert_eq!(location, "weights/w8.bin");
    let outside = std::fs::canonicalize(dir.path().join("outside.bin")).unwrap();
    assert!(
        matches!(&problem, Escape::Outside { to, .. } if *to == outside),
        "{problem:?}"
    );
    // Control: a symlink that stays inside loads.
    std::fs::remove_file(&weights).unwrap();
    std::fs::rename(
        dir.path().join("outside.bin"),
        graph.with_file_name("real.bin"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../real.bin", &weights).unwrap();
    let opts = EngineOptions {
        batch: 1,
        ..EngineOptions::default()
    };
    engine::load(EngineKind::Tract, &graph, &opts).unwrap();
}
