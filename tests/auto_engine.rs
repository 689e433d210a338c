//! `--engine auto` when the race on the first candidate misleads: the engine
//! that lost it looks again above the winner's choice, or everywhere when
//! the winner's search ends without one. Graphs are made to fail in one
//! engine only (an op ONNX Runtime has no kernel for, an op tract lacks), so
//! the race and the searches go the same way on any machine.
#![cfg(feature = "ort")]

mod common;

use std::fs;
use std::path::Path;

use common::{export, request};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, ModelProto,
    NodeProto, TensorProto, TypeProto, ValueInfoProto,
};
use protobuf::Message;
use tailor::runtime::bundle::{MANIFEST_JSON, MANIFEST_POSTCARD};
use tailor::runtime::engine::EngineKind;
use tailor::runtime::fs::sha256_file;
use tailor::runtime::manifest::Manifest;
use tailor::runtime::profile::MeasureOptions;
use tailor::runtime::select::{Chosen, EngineChoice, Limits, Runtime, RuntimeOptions, SelectError};

const TEACHER: &str = "tests/fixtures/vit-tiny/output/eval/training_99/teacher_checkpoint.pth";

/// What breaks a graph in one engine while the other runs it.
#[derive(Clone, Copy)]
enum Breaks {
    /// `BitShift` on uint16: valid ONNX that tract computes, but ONNX
    /// Runtime has no CPU kernel for it and refuses the session.
    Ort,
    /// `Det`: ONNX Runtime computes it, tract does not implement it.
    Tract,
}

/// Adds an output to sub-network `id`'s graph that one engine cannot
/// compute, and records the graph's new hash in both manifests.
fn break_graph(bundle: &Path, id: &str, breaks: Breaks) {
    let path = bundle.join(format!("graphs/{id}.onnx"));
    let mut model = ModelProto::parse_from_bytes(&fs::read(&path).unwrap()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let (op, elem, inputs) = match breaks {
        Breaks::Ort => (
            "BitShift",
            DataType::UINT16,
            vec![("shifted", vec![2]), ("by", vec![2])],
        ),
        Breaks::Tract => ("Det", DataType::FLOAT, vec![("matrix", vec![2, 2])]),
    };
    let mut node = NodeProto::new();
    node.op_type = op.to_owned();
    node.name = "breaks".to_owned();
    node.output = vec!["breaks".to_owned()];
    for (name, dims) in inputs {
        let mut t = TensorProto::new();
        t.name = format!("breaks.{name}");
        t.data_type = elem as i32;
        t.dims = dims.iter().map(|&d| d as i64).collect();
        let count = dims.iter().product::<usize>();
        match breaks {
            Breaks::Ort => t.int32_data = (1..=count as i32).collect(),
            Breaks::Tract => t.float_data = (1..=count).map(|v| v as f32).collect(),
        }
        node.input.push(t.name.clone());
        graph.initializer.push(t);
    }
    if let Breaks::Ort = breaks {
        let mut direction = AttributeProto::new();
        direction.name = "direction".to_owned();
        direction.type_ = AttributeType::STRING.into();
        direction.s = b"LEFT".to_vec();
        node.attribute.push(direction);
    }
    graph.node.push(node);
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = elem as i32;
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor));
    let mut output = ValueInfoProto::new();
    output.name = "breaks".to_owned();
    output.type_ = Some(ty).into();
    graph.output.push(output);
    fs::write(&path, model.write_to_bytes().unwrap()).unwrap();

    let sha = sha256_file(&path).unwrap();
    let json = fs::read_to_string(bundle.join(MANIFEST_JSON)).unwrap();
    let mut manifest = Manifest::from_json(&json).unwrap();
    let subnet = manifest.subnets.iter_mut().find(|s| s.id == id).unwrap();
    subnet.onnx_sha256 = sha;
    fs::write(bundle.join(MANIFEST_JSON), manifest.to_json()).unwrap();
    fs::write(bundle.join(MANIFEST_POSTCARD), manifest.to_postcard()).unwrap();
}

/// Selects with `engine` under a generous budget, quick measurements, no cache.
fn select(bundle: &Path, engine: EngineChoice) -> Result<Chosen, SelectError> {
    let options = RuntimeOptions {
        cache: None,
        engine,
        measure: MeasureOptions {
            min_runs: 5,
            min_time: std::time::Duration::ZERO,
            ..MeasureOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let rt = Runtime::with_options(bundle, options).unwrap();
    rt.select(&Limits::latency_ms(1e5).memory_mb(4096.0))
}

/// The width-32 column of the tiny teacher: three sizes, ranked by depth.
fn column() -> (tempfile::TempDir, std::path::PathBuf) {
    let mut req = request(TEACHER);
    req.selection = common::subnets(&["32x2", "32x3", "32x4"]);
    export(&req)
}

#[test]
fn the_race_loser_takes_a_better_candidate_the_winner_cannot_run() {
    let (_dir, bundle) = column();
    // ONNX Runtime cannot run the first candidate, so tract wins the race;
    // tract cannot run the largest, so its own search settles on w32-d3.
    break_graph(&bundle, "w32-d2", Breaks::Ort);
    break_graph(&bundle, "w32-d4", Breaks::Tract);
    let chosen = select(&bundle, EngineChoice::Auto).unwrap();
    let raced: Vec<(bool, bool)> = chosen
        .engine_trials
        .iter()
        .map(|t| (t.engine.starts_with("tract "), t.measured.is_some()))
        .collect();
    assert_eq!(
        raced,
        [(true, true), (false, false)],
        "{:?}",
        chosen.engine_trials
    );
    // Without the second look: w32-d3 with tract.
    assert_eq!(chosen.id, "w32-d4", "{:?}", chosen.notes);
    assert!(chosen.engine.starts_with("ort "), "{}", chosen.engine);
    // ONNX Runtime was asked about tract's choice (which it could run with
    // more headroom) and w32-d4 only: nothing ranked below the choice can
    // beat it.
    let ort_tried: Vec<&str> = chosen
        .trials
        .iter()
        .filter(|t| t.engine == EngineKind::Ort)
        .map(|t| t.id.as_str())
        .collect();
    assert!(
        ort_tried.contains(&"w32-d4")
            && ort_tried.iter().all(|&id| id == "w32-d3" || id == "w32-d4"),
        "{ort_tried:?}"
    );
    // Both searches confirmed a winner (w32-d3 with tract, w32-d4 with ONNX
    // Runtime): the count covers both, not the last search's alone.
    assert!(chosen.confirmed.as_ref().unwrap().confirmations >= 2);
    assert!(
        chosen
            .notes
            .iter()
            .any(|n| n.contains("ranked above") && n.contains("w32-d3")),
        "{:?}",
        chosen.notes
    );
}

#[test]
fn the_race_loser_searches_everything_when_the_winner_finds_nothing() {
    let (_dir, bundle) = column();
    // tract wins the race, then fails on both larger candidates: the same
    // failure twice in a row ends its search without a choice.
    break_graph(&bundle, "w32-d2", Breaks::Ort);
    break_graph(&bundle, "w32-d3", Breaks::Tract);
    break_graph(&bundle, "w32-d4", Breaks::Tract);
    let chosen = select(&bundle, EngineChoice::Auto).unwrap();
    assert_eq!(
        (chosen.id.as_str(), chosen.engine.split(' ').next()),
        ("w32-d4", Some("ort")),
        "{:?}",
        chosen.notes
    );
    assert!(
        chosen.notes.iter().any(|n| n.contains("ended")),
        "{:?}",
        chosen.notes
    );
}

#[test]
fn an_explicit_engine_gets_no_second_look() {
    let (_dir, bundle) = column();
    break_graph(&bundle, "w32-d4", Breaks::Tract);
    let chosen = select(&bundle, EngineChoice::Only(EngineKind::Tract)).unwrap();
    // The fixture is sound: tract alone cannot take w32-d4.
    assert_eq!(chosen.id, "w32-d3");
    assert!(chosen.trials.iter().all(|t| t.engine == EngineKind::Tract));
}
