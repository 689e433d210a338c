//! Cuts of a bundle graph (`engine::segment`): chained, they compute what
//! the graph computes through an engine session; a range that does not
//! read or yield exactly one value is refused, naming the graph.

use std::path::PathBuf;

use ndarray::Array4;
use tailor_runtime::engine::segment::{Activation, Engine, Nodes};
use tailor_runtime::engine::{self, EngineError, EngineKind, EngineOptions};

/// A ViT graph the exporter wrote (the CLI tests' committed bundle): 71
/// nodes, the first nine embed the patches into `tokens.rows`.
fn graph() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny/graphs/w32-d2.onnx")
}

fn pixels(batch: usize) -> Array4<f32> {
    Array4::from_shape_fn((batch, 3, 32, 32), |(b, c, y, x)| {
        ((b + 3 * c + 5 * y + 7 * x) % 23) as f32 / 11.5 - 1.0
    })
}

#[test]
fn chained_cuts_compute_the_graphs_cls_token() {
    assert_chained_cuts_compute_the_graphs_cls_token(Engine::Tract, Engine::Tract);
}

/// The graph cut in two, the embedding planned on `first` and the blocks on
/// `then`, run on two images: the graph's own `cls_token` (tract's session).
fn assert_chained_cuts_compute_the_graphs_cls_token(first: Engine, then: Engine) {
    let nodes = Nodes::read(&graph()).unwrap();
    let total = nodes.names().count();
    assert_eq!(nodes.names().nth(9), Some("blocks.0.norm1"));
    let (embed, blocks) = (nodes.cut(0..9).unwrap(), nodes.cut(9..total).unwrap());
    let embed = embed.plan(&[2, 3, 32, 32], first).unwrap();
    assert_eq!(embed.output_shape(), [2 * 17, 32], "tokens as rows");
    let blocks = blocks.plan(embed.output_shape(), then).unwrap();
    assert_eq!(blocks.output_shape(), [2, 32]);

    let x = pixels(2);
    let tokens = embed
        .spawn()
        .unwrap()
        .run(&Activation::pixels(x.view()))
        .unwrap();
    let cls = blocks.spawn().unwrap().run(&tokens).unwrap().to_array();
    let opts = EngineOptions {
        batch: 2,
        ..EngineOptions::default()
    };
    let mut session = engine::load(EngineKind::Tract, &graph(), &opts).unwrap();
    let expected = session.run(x.view()).unwrap().cls_token;
    let worst = (&cls - &expected.into_dyn())
        .mapv(f32::abs)
        .fold(0f32, |a, &b| a.max(b));
    assert!(
        worst < 1e-5,
        "{first:?} then {then:?}: chained cuts differ from the graph by {worst}"
    );
    assert!(nodes.whole().unwrap() != nodes.cut(0..9).unwrap());
}

/// ONNX Runtime tests need `--features ort` and `ORT_DYLIB_PATH` (see
/// .ci/ort_lib.sh); without the variable they fail rather than pass unrun.
#[cfg(feature = "ort")]
mod ort {
    use super::*;
    use tailor_runtime::engine::ExecutionProvider;

    const ORT_CPU: Engine = Engine::Ort(ExecutionProvider::Cpu);

    /// Catches an ORT cut committed without its external data, a wrong
    /// inferred output shape, and values passed between the engines in the
    /// wrong layout (each engine reads the other's activation).
    #[test]
    fn chained_cuts_compute_the_graphs_cls_token_on_onnx_runtime_and_across_engines() {
        for (first, then) in [
            (ORT_CPU, ORT_CPU),
            (Engine::Tract, ORT_CPU),
            (ORT_CPU, Engine::Tract),
        ] {
            assert_chained_cuts_compute_the_graphs_cls_token(first, then);
        }
    }

    /// A provider this library lacks is an error naming the graph, not a
    /// cut quietly run on the CPU.
    #[test]
    fn a_cut_on_a_missing_provider_is_refused_not_run_on_the_cpu() {
        let cut = Nodes::read(&graph()).unwrap().cut(0..9).unwrap();
        let cuda = Engine::Ort(ExecutionProvider::Cuda);
        match cut.plan(&[2, 3, 32, 32], cuda).err() {
            Some(EngineError::ProviderFallback {
                graph: g,
                requested,
                ..
            }) => assert_eq!((g, requested), (graph(), ExecutionProvider::Cuda)),
            other => panic!("expected a provider fallback, got {other:?}"),
        }
    }
}

#[test]
fn a_cut_reads_one_value_and_yields_one() {
    let nodes = Nodes::read(&graph()).unwrap();
    // The attention's MatMuls read q, k.t and v from earlier nodes.
    let names: Vec<&str> = nodes.names().collect();
    let scores = names
        .iter()
        .position(|n| *n == "blocks.0.attn.scores")
        .unwrap();
    match nodes.cut(scores..scores + 4) {
        Err(EngineError::Interface { graph: g, problem }) => {
            assert_eq!(g, graph());
            assert!(problem.contains("a cut reads one value"), "{problem}");
        }
        other => panic!("expected an interface error, got {other:?}"),
    }
    // The Split's three outputs are read by later nodes.
    let split = names
        .iter()
        .position(|n| *n == "blocks.0.attn.qkv.split")
        .unwrap();
    match nodes.cut(9..split + 1) {
        Err(EngineError::Interface { problem, .. }) => {
            assert!(problem.contains("a cut yields one value"), "{problem}")
        }
        other => panic!("expected an interface error, got {other:?}"),
    }
    assert!(matches!(
        nodes.cut(5..5),
        Err(EngineError::Interface { .. })
    ));
}
