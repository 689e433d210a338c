//! Routing every path of the SDR example over 1,000 MNIST digits: the tree
//! of graph cuts (each shared prefix once per image) against running each
//! sub-network's whole graph over the same images, on tract, one thread, in
//! the same process, the variants alternating, median of the runs:
//!
//! - `tree bN`: `Tree::features` at batch N (preprocessing timed);
//! - `graphs bN`: each graph as one cut (the same planning and engine as
//!   the tree's cuts, nothing shared) at batch N;
//! - `sessions`: each graph through the runtime's engine session, as
//!   `exporter calibrate` runs it (tract runs a batch image by image);
//! - with `--features ort`, `tree ort b32` and `graphs ort b32`: the same
//!   on ONNX Runtime (CPU, one thread, the library `ORT_DYLIB_PATH` names).
//!
//! Every variant's time includes preprocessing the images once (the
//! baselines' is measured once per run and added).
//!
//! Usage: `cargo bench [--features ort] --bench route [-- --runs N]`

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{Array4, Axis};
use tailor::calibration::route::{Pass, Tree};
use tailor::calibration::{Dataset, LoadOptions};
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::plan::{Plan, Request};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::segment::{Activation, Cut, Engine, Nodes};
use tailor::runtime::engine::{self, EngineKind, EngineOptions, ExecutionProvider};

fn main() -> anyhow::Result<()> {
    let runs: usize = match std::env::args().skip_while(|a| a != "--runs").nth(1) {
        Some(n) => n.parse()?,
        None => 3,
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("bundle");
    let plan = Plan::new(&Request::all(
        root.join("examples/sdr-tiny/sdr.safetensors"),
    ))?;
    let write = WriteOptions {
        force: false,
        jobs: 2,
    };
    bundle::write(&plan, &out, &write, &|_| {})?;
    let bundle = Bundle::open(&out)?;
    let load = LoadOptions {
        labels: true,
        seed: 0,
        limit: None,
    };
    let data = Dataset::load(&root.join("examples/mnist-calib.npz"), load)?;
    let side = bundle.manifest().teacher.config.image_size() as usize;
    let opts = EngineOptions {
        threads: Some(1),
        batch: 1,
        ..EngineOptions::default()
    };
    let manifest = bundle.manifest();
    let tree = Tree::build(&bundle)?;
    eprintln!(
        "{} sub-networks, {} images: {} cuts in the tree, {} one graph at a time",
        manifest.subnets.len(),
        data.images.len(),
        tree.cuts(),
        tree.unshared_cuts()
    );
    let graphs: Vec<Cut> = manifest
        .subnets
        .iter()
        .map(|s| Nodes::read(&bundle.graph_path(s))?.whole())
        .collect::<Result<_, _>>()?;
    let mut times: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for run in 0..runs {
        // Each baseline needs the images preprocessed once, as the tree
        // does inside its clock: this run's cost is added to theirs.
        let start = Instant::now();
        let pixels: Vec<Array4<f32>> = data
            .images
            .iter()
            .map(|image| {
                let mut p = Array4::zeros((1, 3, side, side));
                image.preprocess_into(p.index_axis_mut(Axis(0), 0));
                p
            })
            .collect();
        let preprocessing = start.elapsed();
        record(&mut times, "preprocessing".into(), preprocessing, run);
        for (engine, batch) in variants() {
            let start = Instant::now();
            let pass = Pass {
                batch: NonZeroUsize::new(batch).expect("batches are positive"),
                threads: NonZeroUsize::MIN,
                engine,
            };
            tree.features(&data, pass, &mut |_| {})?;
            let tree_time = start.elapsed();

            let batched: Vec<Activation> = pixels
                .chunks(batch)
                .filter(|c| c.len() == batch)
                .map(|c| {
                    let views: Vec<_> = c.iter().map(|p| p.view()).collect();
                    Ok(Activation::pixels(
                        ndarray::concatenate(Axis(0), &views)?.view(),
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            let start = Instant::now();
            for graph in &graphs {
                let mut state = graph.plan(&[batch, 3, side, side], engine)?.spawn()?;
                for p in &batched {
                    state.run(p)?;
                }
            }
            // Whole batches only: scaled to every image.
            let graph_time = start
                .elapsed()
                .mul_f64(pixels.len() as f64 / (batched.len() * batch) as f64)
                + preprocessing;
            let variant = label(engine, batch);
            record(&mut times, format!("tree {variant}"), tree_time, run);
            record(&mut times, format!("graphs {variant}"), graph_time, run);
        }

        let start = Instant::now();
        for subnet in &manifest.subnets {
            let mut session = engine::load(EngineKind::Tract, &bundle.graph_path(subnet), &opts)?;
            for p in &pixels {
                session.run(p.view())?;
            }
        }
        let sessions = start.elapsed() + preprocessing;
        record(&mut times, "sessions".into(), sessions, run);
    }
    let median: BTreeMap<String, f64> = times
        .iter_mut()
        .map(|(k, t)| (k.clone(), median(t).as_secs_f64()))
        .collect();
    println!(
        "median of {runs} runs, {} images (preprocessing them, in every time: {:.2} s):",
        data.images.len(),
        median["preprocessing"]
    );
    for (engine, batch) in variants() {
        let variant = label(engine, batch);
        let (tree, graphs) = (
            median[&format!("tree {variant}")],
            median[&format!("graphs {variant}")],
        );
        println!(
            "{variant:>6}: tree {tree:.2} s, each graph on its own {graphs:.2} s: {:.2}x; sessions {:.2} s: {:.2}x; tract's tree at b{batch}: {:.2}x",
            graphs / tree,
            median["sessions"],
            median["sessions"] / tree,
            median[&format!("tree b{batch}")] / tree,
        );
    }
    Ok(())
}

/// The engines and batch sizes the tree and the whole graphs run at: tract
/// at 1 and 32, ONNX Runtime (CPU) at 32 when built.
fn variants() -> Vec<(Engine, usize)> {
    let mut variants = vec![(Engine::Tract, 1), (Engine::Tract, 32)];
    if cfg!(feature = "ort") {
        variants.push((Engine::Ort(ExecutionProvider::Cpu), 32));
    }
    variants
}

/// `b32` on tract, `ort b32` on ONNX Runtime.
fn label(engine: Engine, batch: usize) -> String {
    match engine {
        Engine::Tract => format!("b{batch}"),
        Engine::Ort(_) => format!("ort b{batch}"),
    }
}

fn record(times: &mut BTreeMap<String, Vec<Duration>>, key: String, t: Duration, run: usize) {
    eprintln!("run {}: {key} {:.2} s", run + 1, t.as_secs_f64());
    times.entry(key).or_default().push(t);
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
