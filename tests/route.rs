//! Routing an SDR bundle through the libraries: the tree of graph cuts
//! computes what every path's own graph computes, and the runtime then
//! picks the best-routed path.

mod common;

use std::num::NonZeroUsize;

use common::{export, request, subnets};
use ndarray::Array2;
use tailor::calibration::route::{self, Pass, Tree};
use tailor::calibration::{self, record, Dataset, LoadOptions, Options};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::segment::Engine;
use tailor::runtime::select::Limits;

const SDR: &str = "examples/sdr-tiny/sdr.safetensors";

fn mnist(limit: usize) -> Dataset {
    let load = LoadOptions {
        labels: true,
        seed: 0,
        limit: Some(limit),
    };
    Dataset::load(&common::fixture("examples/mnist-calib.npz"), load).unwrap()
}

#[test]
fn the_tree_computes_every_paths_cls_token_with_each_prefix_once() {
    let (_dir, dir) = export(&request(SDR));
    let bundle = Bundle::open(&dir).unwrap();
    let tree = Tree::build(&bundle).unwrap();
    // The plain trunk once for all 17 (the stem, layer1.0, layer1.1,
    // layer2.0); under it full's 4 SDR blocks and the routes' 2 + 4 + 8 + 16
    // (the last block joined with the outputs). One graph at a time: 17 × 8.
    assert_eq!(
        (tree.cuts(), tree.unshared_cuts()),
        (4 + 4 + 30, 17 * 8),
        "a trunk block not merged across the paths, or a shared prefix run twice"
    );

    // Batches of 24: the last of the 64 images is short. Three workers take
    // one batch each, finishing in any order.
    let data = mnist(64);
    let pass = Pass {
        batch: NonZeroUsize::new(24).unwrap(),
        threads: NonZeroUsize::new(3).unwrap(),
        engine: Engine::Tract,
    };
    let mut done = Vec::new();
    let routed = tree.features(&data, pass, &mut |n| done.push(n)).unwrap();
    assert_eq!(
        done.last(),
        Some(&64),
        "progress reaches every image: {done:?}"
    );
    assert_each_paths_cls_token(&bundle, &data, &routed);
}

/// Catches an ONNX Runtime cut given the wrong weights or the wrong parent's
/// value, a leaf's rows copied from the wrong batch, or ORT's inferred shapes
/// read wrong: each path's `cls_token` differs then from its whole graph's
/// on tract.
#[cfg(feature = "ort")]
#[test]
fn the_tree_on_onnx_runtime_computes_every_paths_cls_token() {
    use tailor::runtime::engine::ExecutionProvider;
    let (_dir, dir) = export(&request(SDR));
    let bundle = Bundle::open(&dir).unwrap();
    let data = mnist(64);
    let pass = Pass {
        batch: NonZeroUsize::new(24).unwrap(),
        threads: NonZeroUsize::new(2).unwrap(),
        engine: Engine::Ort(ExecutionProvider::Cpu),
    };
    let tree = Tree::build(&bundle).unwrap();
    let routed = tree.features(&data, pass, &mut |_| {}).unwrap();
    assert_each_paths_cls_token(&bundle, &data, &routed);
}

/// `routed` holds every path's `cls_token` on `data` (manifest order) as
/// its whole graph computes it on tract (`calibration::score`), within 1e-4.
fn assert_each_paths_cls_token(bundle: &Bundle, data: &Dataset, routed: &[(String, Array2<f32>)]) {
    let options = Options {
        keep_features: true,
        ..Options::default()
    };
    let graphs = calibration::score(bundle, data, &options, &mut |_| {}).unwrap();
    assert_eq!(routed.len(), 17);
    for ((id, tree_cls), (graph_id, graph_cls)) in routed.iter().zip(&graphs.features) {
        assert_eq!(id, graph_id);
        let worst = (tree_cls - graph_cls)
            .mapv(f32::abs)
            .fold(0f32, |a, &b| a.max(b));
        assert!(worst <= 1e-4, "{id}: |tree - graph| up to {worst}");
    }
    // Paths differ, so a tree that fed every leaf the same prefix fails above.
    assert!((&routed[1].1 - &routed[2].1).mapv(f32::abs).sum() > 1.0);
}

#[test]
fn selection_prefers_the_best_routed_path_among_equal_sizes() {
    // Routes only: every path has the same size, so nothing but the routing
    // tells them apart.
    let routes: Vec<String> = (0..16)
        .map(|k| format!("r{}.{}.{}.{}", k >> 3, (k >> 2) & 1, (k >> 1) & 1, k & 1))
        .collect();
    let ids: Vec<&str> = routes.iter().map(String::as_str).collect();
    let (_dir, dir) = export(&tailor::exporter::plan::Request {
        selection: subnets(&ids),
        ..request(SDR)
    });
    let bundle = Bundle::open(&dir).unwrap();
    let data = mnist(1000);
    let routed = route::route(&bundle, &data, "digits", Pass::default(), &mut |_| {}).unwrap();
    let ranking = route::ranking(&routed);
    // The best score, held by one path today; a retrained example may tie.
    let top = ranking[0].quality();
    let best: Vec<&str> = ranking
        .iter()
        .take_while(|s| s.quality() == top)
        .map(|s| s.id.as_str())
        .collect();
    let below = ranking
        .iter()
        .find(|s| s.quality() < top)
        .expect("the routing tells the paths apart")
        .quality();
    record::write(&bundle, &data, &routed).unwrap();

    let rt = common::quick_runtime(&dir);
    let manifest = rt.bundle().manifest();
    let calibration = manifest.calibration.as_ref().unwrap();
    assert_eq!(calibration.task, Some("digits"));
    assert_eq!(calibration.dataset_sha256, data.sha256);
    let limits = Limits::latency_ms(1e5).memory_mb(4096.0);
    // Everything fits: quality is the objective.
    let chosen = rt.select(&limits).unwrap();
    assert!(
        best.contains(&chosen.id.as_str()),
        "{} of {ranking:?}",
        chosen.id
    );
    // Only the best reaches the minimum.
    let threshold = ((top + below) / 2.0) as f32;
    let chosen = rt.select(&limits.min_quality(threshold)).unwrap();
    assert!(
        best.contains(&chosen.id.as_str()),
        "{} of {ranking:?}",
        chosen.id
    );
}

#[test]
fn routing_keeps_the_ranges_calibrate_recorded() {
    let (_dir, dir) = export(&tailor::exporter::plan::Request {
        selection: subnets(&["full", "r0.0.0.0", "r1.1.1.1"]),
        ..request(SDR)
    });
    let ranges_of = |dir: &std::path::Path| {
        let bundle = Bundle::open(dir).unwrap();
        let manifest = bundle.manifest();
        let listed = manifest.calibration.as_ref().unwrap().ranges.path;
        let text = std::fs::read(dir.join(listed)).unwrap();
        (
            listed.to_owned(),
            serde_json::from_slice::<serde_json::Value>(&text).unwrap(),
        )
    };

    // Routed first: nothing to keep, so an empty file stands in.
    let (routing, calibrating) = (mnist(60), mnist(40));
    let bundle = Bundle::open(&dir).unwrap();
    let routed = route::route(&bundle, &routing, "digits", Pass::default(), &mut |_| {}).unwrap();
    record::write(&bundle, &routing, &routed).unwrap();
    let (_, none) = ranges_of(&dir);
    assert_eq!(none["images"], 0, "route records no ranges: {none}");

    let bundle = Bundle::open(&dir).unwrap();
    let calibrated =
        calibration::score(&bundle, &calibrating, &Options::default(), &mut |_| {}).unwrap();
    record::write(&bundle, &calibrating, &calibrated).unwrap();
    let (path, recorded) = ranges_of(&dir);
    assert_eq!(recorded["images"], 40);
    assert_eq!(recorded["dataset_sha256"], calibrating.sha256.to_string());

    // Routing again replaces the scores, not the ranges (it used to list an
    // empty file in their place and delete them).
    let bundle = Bundle::open(&dir).unwrap();
    let routed = route::route(&bundle, &routing, "digits", Pass::default(), &mut |_| {}).unwrap();
    record::write(&bundle, &routing, &routed).unwrap();
    assert_eq!(ranges_of(&dir), (path, recorded));
    let bundle = Bundle::open(&dir).unwrap();
    let manifest = bundle.manifest();
    let calibration = manifest.calibration.as_ref().unwrap();
    assert_eq!(calibration.dataset_sha256, routing.sha256);
    bundle.verify_data(&calibration.ranges).unwrap();
}
