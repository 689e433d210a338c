//! Inference speed of tract against ONNX Runtime on the graphs the exporter
//! writes, with the machine's sgemm peak as the yardstick, all in one run.
//!
//! Rows: ViT-S/16 (w384-d12), the ViT-B/16 sub-network of a ViT-L teacher
//! (w768-d12) and the narrowest ViT-L sub-network (w384-d24: POA's smallest
//! width at full depth), each at batch 1 and 8, on 1 and 2 threads. Within a
//! row both engines are loaded through the runtime's own `engine::load` and
//! timed round by round, alternating which goes first, so drift and other
//! load hit both alike; each figure is a median over the rounds and the ratio
//! is the median of the per-round ratios.
//!
//! The peak is numpy's float32 matrix product (OpenBLAS) of two 2048² matrices
//! in a Python child with the row's thread count, measured before every row:
//! an engine-independent, hand-tuned BLAS, in a process of its own so no
//! engine's thread pool competes with it. Its median per thread count is the
//! row's baseline.
//!
//! Usage: `ORT_DYLIB_PATH=... cargo bench --features ort --bench engines [-- --rounds N --batch N]`
//! (needs `python3` with numpy; `PYTHON` names another interpreter).

use std::process::Command;
use std::time::Instant;

use ndarray::Array4;
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::config::Overrides;
use tailor::exporter::family::SubnetSpec;
use tailor::exporter::plan::{Plan, Request, Selection};
use tailor::exporter::synthetic::{write_vit_teacher, VIT_L16};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::{self, EngineKind, EngineOptions, Session};

/// The benchmarked sub-networks and what they are.
fn models() -> [(&'static str, SubnetSpec); 3] {
    [
        ("ViT-S/16", SubnetSpec::single(384, 12)),
        ("ViT-B/16 of ViT-L", SubnetSpec::single(768, 12)),
        ("narrowest ViT-L", SubnetSpec::single(384, 24)),
    ]
}
const BATCHES: [usize; 2] = [1, 8];
const THREADS: [usize; 2] = [1, 2];

/// numpy's sgemm on `n`² matrices: prints the median GFLOP/s of 5 products.
const SGEMM: &str = "
import sys, time, numpy as np
n = 2048
a = np.random.rand(n, n).astype(np.float32)
b = np.random.rand(n, n).astype(np.float32)
a @ b
t = []
for _ in range(5):
    s = time.perf_counter(); a @ b; t.append(time.perf_counter() - s)
t.sort()
print(2 * n**3 / t[2] / 1e9)
";

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut rounds, mut batches) = (5usize, BATCHES.to_vec());
    while let Some(a) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok());
        match a.as_str() {
            "--rounds" => rounds = value().expect("--rounds N"),
            // Only the rows of one batch size (the batch-8 rows take most of the time).
            "--batch" => batches = vec![value().expect("--batch N")],
            _ => {} // cargo bench passes --bench
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("vit-l.safetensors");
    write_vit_teacher(&teacher, &VIT_L16, 11).unwrap();
    let request = Request {
        teacher,
        config: None,
        overrides: Overrides {
            head_dim: Some(VIT_L16.head_dim),
            ..Overrides::default()
        },
        selection: Selection::List(models().iter().map(|(_, s)| *s).collect()),
        max_params: None,
        max_macs: None,
    };
    let out = dir.path().join("bundle");
    let write = WriteOptions {
        force: false,
        jobs: 2,
    };
    bundle::write(&Plan::new(&request).unwrap(), &out, &write, &|_| {}).unwrap();
    let bundle = Bundle::open(&out).unwrap();

    let mut rows = Vec::new();
    let mut peaks: [Vec<f64>; 2] = Default::default();
    // Batch outermost: the batch-1 rows, the target, come first.
    for batch in batches {
        for (name, spec) in models() {
            let subnet = bundle.subnet(&spec.id()).unwrap();
            let graph = bundle.graph_path(&subnet);
            for threads in THREADS {
                peaks[threads - 1].push(sgemm_gflops(threads));
                let opts = EngineOptions {
                    threads: Some(threads),
                    batch,
                    ..EngineOptions::default()
                };
                let mut tract = engine::load(EngineKind::Tract, &graph, &opts).unwrap();
                let mut ort = engine::load(EngineKind::Ort, &graph, &opts).unwrap();
                let row = Row::measure(&mut *tract, &mut *ort, rounds);
                let gflop = 2.0 * subnet.macs as f64 * batch as f64 / 1e9;
                eprintln!(
                    "{name} ({}) b{batch} t{threads}: tract {:.1} ms, ort {:.1} ms, peak {:.0} GFLOP/s",
                    subnet.id,
                    row.tract_ms,
                    row.ort_ms,
                    peaks[threads - 1].last().unwrap()
                );
                rows.push((name, subnet.id.to_owned(), batch, threads, gflop, row));
            }
        }
    }

    let peak = |threads: usize| median(&mut peaks[threads - 1].clone());
    println!(
        "sgemm peak (numpy, 2048², median of {} runs each): {:.0} GFLOP/s on 1 thread, {:.0} GFLOP/s on 2",
        peaks[0].len(),
        peak(1),
        peak(2)
    );
    println!();
    println!("| model | batch | threads | tract p50 (ms) | ORT p50 (ms) | tract / peak | ORT / peak | tract / ORT throughput |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, id, batch, threads, gflop, row) in rows {
        let share = |ms: f64| 100.0 * gflop / (ms / 1e3) / peak(threads);
        println!(
            "| {name} ({id}) | {batch} | {threads} | {:.1} | {:.1} | {:.0}% | {:.0}% | {:.2}× |",
            row.tract_ms,
            row.ort_ms,
            share(row.tract_ms),
            share(row.ort_ms),
            row.tract_over_ort
        );
    }
}

/// One row's medians over interleaved rounds.
struct Row {
    tract_ms: f64,
    ort_ms: f64,
    /// Median over rounds of tract's throughput / ONNX Runtime's.
    tract_over_ort: f64,
}

impl Row {
    fn measure(tract: &mut dyn Session, ort: &mut dyn Session, rounds: usize) -> Row {
        let input = Array4::from_shape_fn(tract.input_shape(), |(_, c, y, x)| {
            ((c + 2 * y + 3 * x) % 17) as f32 / 17.0 - 0.5
        });
        let time = |session: &mut dyn Session| {
            let t = Instant::now();
            std::hint::black_box(session.run(input.view()).unwrap());
            t.elapsed().as_secs_f64() * 1e3
        };
        // One untimed run each: the first run pays for allocation.
        time(tract);
        time(ort);
        let (mut t, mut o) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                t.push(time(tract));
                o.push(time(ort));
            } else {
                o.push(time(ort));
                t.push(time(tract));
            }
        }
        let mut ratios: Vec<f64> = o.iter().zip(&t).map(|(o, t)| o / t).collect();
        Row {
            tract_ms: median(&mut t),
            ort_ms: median(&mut o),
            tract_over_ort: median(&mut ratios),
        }
    }
}

/// numpy's sgemm throughput on `threads` threads, in a child process.
fn sgemm_gflops(threads: usize) -> f64 {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-c", SGEMM])
        .env("OPENBLAS_NUM_THREADS", threads.to_string())
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {python} for the sgemm peak: {e}"));
    assert!(
        out.status.success(),
        "{python} could not measure the sgemm peak (is numpy installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a GFLOP/s figure")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
