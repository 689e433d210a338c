//! Routing every path of the SDR example over 1,000 MNIST digits: the tree
//! of graph cuts (each shared prefix once per image) against running each
//! sub-network's own graph over the same images, same engine (tract), one
//! thread, batch 1, in the same process, alternating, median of the runs.
//! The baseline's images are preprocessed before its clock starts; the
//! tree's preprocessing is timed.
//!
//! Usage: `cargo bench --bench route [-- --runs N]`

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use ndarray::Array4;
use tailor::calibration::route::Tree;
use tailor::calibration::{Dataset, LoadOptions};
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::plan::{Plan, Request, Selection};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::{self, EngineKind, EngineOptions};

fn main() -> anyhow::Result<()> {
    let runs: usize = match std::env::args().skip_while(|a| a != "--runs").nth(1) {
        Some(n) => n.parse()?,
        None => 3,
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("bundle");
    let plan = Plan::new(&Request {
        teacher: root.join("examples/sdr-tiny/sdr.safetensors"),
        config: None,
        overrides: Default::default(),
        selection: Selection::All,
        max_params: None,
        max_macs: None,
    })?;
    let write = WriteOptions {
        force: false,
        jobs: 2,
        progress: ProgressBar::hidden(),
    };
    bundle::write(&plan, &out, &write)?;
    let bundle = Bundle::open(&out)?;
    let load = LoadOptions {
        labels: true,
        seed: 0,
        limit: None,
    };
    let data = Dataset::load(&root.join("examples/mnist-calib.npz"), load)?;
    let side = bundle.manifest().teacher.config.image_size() as usize;
    let pixels: Vec<Array4<f32>> = data
        .images
        .iter()
        .map(|image| {
            let mut p = Array4::zeros((1, 3, side, side));
            image.preprocess_into(p.index_axis_mut(ndarray::Axis(0), 0));
            p
        })
        .collect();
    let opts = EngineOptions {
        threads: Some(1),
        batch: 1,
        ..EngineOptions::default()
    };
    let manifest = bundle.manifest();
    let (mut tree_times, mut graph_times) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let start = Instant::now();
        let tree = Tree::build(&bundle)?;
        tree.features(&data, &mut |_| {})?;
        tree_times.push(start.elapsed());
        if run == 0 {
            eprintln!(
                "{} sub-networks, {} images: {} cuts per image in the tree, {} one graph at a time",
                manifest.subnets.len(),
                data.images.len(),
                tree.len(),
                tree.unshared_len()
            );
        }

        let start = Instant::now();
        for subnet in &manifest.subnets {
            let mut session = engine::load(EngineKind::Tract, &bundle.graph_path(subnet), &opts)?;
            for p in &pixels {
                session.run(p.view())?;
            }
        }
        graph_times.push(start.elapsed());
        eprintln!(
            "run {}: tree {:.2} s, graphs {:.2} s",
            run + 1,
            tree_times[run].as_secs_f64(),
            graph_times[run].as_secs_f64()
        );
    }
    let (tree, graphs) = (median(&mut tree_times), median(&mut graph_times));
    println!(
        "median of {runs}: tree {:.2} s, each graph on its own {:.2} s: {:.2}x",
        tree.as_secs_f64(),
        graphs.as_secs_f64(),
        graphs.as_secs_f64() / tree.as_secs_f64()
    );
    Ok(())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
