//! Start-up selection against brute force, on a bundle of 90 sub-networks,
//! and the runtime's inference overhead against calling tract directly.
//!
//! Brute force is measured twice: how often it agrees with itself is the
//! noise floor any selection is judged against.
//!
//! Usage: `cargo bench --bench select [-- --limits N]`

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use ndarray::Array4;
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::config::{GridRange, Overrides};
use tailor::exporter::family::vit::Geometry;
use tailor::exporter::plan::{Plan, Request, Selection};
use tailor::exporter::synthetic::write_vit_teacher;
use tailor::runtime::engine::{self, EngineKind, EngineOptions};
use tailor::runtime::profile::MeasureOptions;
use tailor::runtime::select::{Limits, Percentile, Runtime, RuntimeOptions};
use tract_onnx::prelude::*;

/// A DeiT-Ti-like teacher at 64² so 90 candidates measure in seconds.
const TEACHER: Geometry = Geometry {
    max_width: 192,
    max_depth: 12,
    head_dim: 16,
    patch_size: 8,
    image_size: 64,
    ln_bias: true,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut sweep = 16usize;
    while let Some(a) = args.next() {
        if a == "--limits" {
            sweep = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--limits N");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher.safetensors");
    write_vit_teacher(&teacher, &TEACHER, 7).unwrap();
    let request = Request {
        teacher,
        config: None,
        overrides: Overrides {
            widths: Some(GridRange {
                start: 64,
                end: 192,
                step: Some(16),
            }),
            depths: Some(GridRange {
                start: 3,
                end: 12,
                step: None,
            }),
            head_dim: Some(TEACHER.head_dim),
            image_size: None,
        },
        selection: Selection::All,
        max_params: None,
        max_macs: None,
    };
    let plan = Plan::new(&request).unwrap();
    let out = dir.path().join("bundle");
    bundle::write(
        &plan,
        &out,
        &WriteOptions {
            force: false,
            jobs: 2,
            progress: ProgressBar::hidden(),
        },
    )
    .unwrap();

    let mut options = RuntimeOptions::for_bundle(&out);
    options.cache = None;
    options.measure = MeasureOptions {
        min_runs: 30,
        min_time: Duration::from_millis(300),
        ..MeasureOptions::default()
    };
    let rt = Runtime::with_options(&out, options).unwrap();
    let manifest = rt.bundle().manifest();
    let n = manifest.subnets.len();
    eprintln!("bundle: {n} sub-networks");

    // Brute force: measure every candidate (twice, for the noise floor).
    let brute = || {
        manifest
            .subnets
            .iter()
            .map(|s| (s.id.to_owned(), s.macs, rt.profile(s.id, 1).unwrap().p50_ms))
            .collect::<Vec<(String, u64, f64)>>()
    };
    let t0 = Instant::now();
    let truth = brute();
    let brute_s = t0.elapsed().as_secs_f64();
    let again = brute();
    let (lo, hi) = truth
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), t| (lo.min(t.2), hi.max(t.2)));
    eprintln!("brute force: {n} measured in {brute_s:.1} s; p50 from {lo:.3} to {hi:.3} ms");
    let best_of = |table: &[(String, u64, f64)], limit: f64| {
        table
            .iter()
            .filter(|t| t.2 <= limit)
            .max_by_key(|t| t.1)
            .map(|t| t.0.clone())
    };
    let mut self_agree = 0;

    let (mut same, mut within_noise, mut violations, mut times, mut counts) =
        (0, 0, 0, Vec::new(), Vec::new());
    for k in 0..sweep {
        // Limits spread geometrically from just above the fastest to the slowest.
        let limit = lo * 1.05 * (hi / (lo * 1.05)).powf(k as f64 / (sweep - 1) as f64);
        let best = truth.iter().filter(|t| t.2 <= limit).max_by_key(|t| t.1);
        if best_of(&truth, limit) == best_of(&again, limit) {
            self_agree += 1;
        }
        let t = Instant::now();
        let chosen = rt.select(
            &Limits::latency_ms(limit)
                .memory_mb(4096)
                .percentile(Percentile::P50),
        );
        times.push(t.elapsed().as_secs_f64());
        let chosen = match chosen {
            Ok(c) => c,
            Err(e) => {
                eprintln!("limit {limit:.3} ms: {e}");
                continue;
            }
        };
        counts.push(chosen.candidates_measured());
        let truth_of = |id: &str| truth.iter().find(|t| t.0 == id).unwrap();
        let (_, macs, true_ms) = truth_of(&chosen.id);
        let verdict = match best {
            Some(b) if b.0 == chosen.id => {
                same += 1;
                "same"
            }
            // Another candidate whose brute-force latency is within 5% of the limit: noise decides.
            Some(b)
                if (truth_of(&b.0).2 - limit).abs() <= 0.05 * limit
                    || (true_ms - limit).abs() <= 0.05 * limit =>
            {
                within_noise += 1;
                "differs within noise"
            }
            _ => "DIFFERENT",
        };
        if *true_ms > limit * 1.05 {
            violations += 1;
        }
        eprintln!(
            "limit {limit:7.3} ms: chose {:<9} ({macs} MACs, brute p50 {true_ms:.3} ms) after {} measurements in {:.2} s; brute force: {}: {verdict}",
            chosen.id,
            chosen.candidates_measured(),
            times.last().unwrap(),
            best.map_or("none", |b| b.0.as_str())
        );
    }
    times.sort_by(f64::total_cmp);
    counts.sort();
    let median_select = times[times.len() / 2];

    // Inference overhead: our session vs tract called directly, same graph.
    let largest = manifest.subnets.iter().max_by_key(|s| s.macs).unwrap();
    let graph = rt.bundle().graph_path(largest);
    let ratio = overhead_vs_tract(&graph, rt.input_shape(1));

    println!("| metric | value |");
    println!("|---|---|");
    println!("| sub-networks | {n} |");
    println!("| latency limits swept | {sweep} ({lo:.2} to {hi:.2} ms, p50) |");
    println!("| brute force agreeing with itself (noise floor) | {self_agree}/{sweep} |");
    println!(
        "| same choice as brute force | {same}/{sweep} ({:.0}%) |",
        100.0 * same as f64 / sweep as f64
    );
    println!("| different, within 5% noise of the limit | {within_noise}/{sweep} |");
    println!("| choices over the limit by > 5% (brute-force latency) | {violations} |");
    println!(
        "| candidates measured (median, max) | {}, {} |",
        counts[counts.len() / 2],
        counts.last().unwrap()
    );
    println!("| selection wall time (median) | {median_select:.2} s |");
    println!("| brute force wall time | {brute_s:.2} s |");
    println!(
        "| selection / brute force | {:.1}% |",
        100.0 * median_select / brute_s
    );
    println!(
        "| inference call, ours / raw tract ({}) | {ratio:.3}× |",
        largest.id
    );
}

/// Median over rounds of (our mean run time / raw tract mean run time).
fn overhead_vs_tract(graph: &Path, shape: [usize; 4]) -> f64 {
    let input = Array4::from_shape_fn(shape, |(_, c, y, x)| {
        ((c + 2 * y + 3 * x) % 17) as f32 / 17.0
    });
    let mut ours = engine::load(EngineKind::Tract, graph, &EngineOptions::default()).unwrap();
    let raw = tract_onnx::onnx()
        .model_for_path(graph)
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let raw_input: TValue = Tensor::from(input.clone()).into();
    let (rounds, iters) = (15, 30);
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(raw.run(tvec!(raw_input.clone())).unwrap());
        }
        let raw_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(ours.run(input.view()).unwrap());
        }
        ratios.push(t.elapsed().as_secs_f64() / raw_s);
    }
    ratios.sort_by(f64::total_cmp);
    ratios[rounds / 2]
}
