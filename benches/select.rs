//! Start-up selection against a careful brute force, on a bundle of 90
//! sub-networks, on a quiet machine and beside bursty background load; the
//! cached boot; and the runtime's inference overhead against calling tract
//! directly.
//!
//! The careful brute force is the issue's: `runtime profile --all`, three
//! passes, the median of each candidate's p90s. Each measurement runs in a
//! fresh process with the default measuring options (warm-up, then runs for
//! at least a second), as the selection measures and as the serving process
//! runs the winner, warmed up and run after run; the passes go round-robin
//! over candidates and thread counts, so drift and bursts of load fall on
//! all alike. How often the first two passes pick the same sub-network is
//! the noise floor. (An earlier judge timed 6 rounds of 10 runs after one
//! warm-up run per process: it weighed each process's first runs at one
//! sample in ten, right where p90 sits, and agreed with itself on 9 of 16
//! limits.)
//!
//! The selection runs with the default flags but tract only (the judge is
//! tract's): the thread count is selected among 1, half and all the usable
//! CPUs, so the judge times every candidate with each of them, and its best
//! fit at a limit is the largest sub-network some thread count fits.
//!
//! Modes (`TAILOR_BENCH_MODES`, default `quiet,bursty`): `bursty` runs the
//! judge and the selections beside two bench-owned processes, each
//! alternating busy and idle for random 50-400 ms spans (a booting board),
//! bounded in time and killed when the mode ends. `TAILOR_BENCH_LIMITS`
//! (default 16) and `TAILOR_BENCH_PASSES` (default 3) shrink a quick look;
//! `TAILOR_BENCH_TRIALS=1` prints each selection's report, and
//! `TAILOR_BENCH_JUDGE=DIR` keeps the judge's figures there and reuses them
//! (for working on the selection; the published figures measure it afresh).
//!
//! With `--features ort` and `TAILOR_BENCH_AUTO=1`, each quiet limit is
//! also selected with `--engine auto`, to show the sub-network it buys
//! against tract's pick. `--auto-only` skips the brute force and the rest:
//! the limits then span tract's p90 of the cheapest and the largest
//! candidate, and each is selected with tract only and with `auto`, back to
//! back.
//!
//! `--judge-noise` measures instead how far the judge's figure for one
//! candidate lands from its typical p90 beside the bursty load
//! (`select/judge_noise.rs`).
//!
//! Usage: `cargo bench [--features ort] --bench select [-- --limits N] [--auto-only] [--judge-noise]`

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::ProgressBar;
use ndarray::Array4;
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::config::{GridRange, Overrides};
use tailor::exporter::family::vit::Geometry;
use tailor::exporter::plan::{Plan, Request, Selection};
use tailor::exporter::synthetic::write_vit_teacher;
use tailor::runtime::engine::{self, EngineKind, EngineOptions};
use tailor::runtime::manifest::Subnet;
use tailor::runtime::profile::MeasureOptions;
use tailor::runtime::select::{
    available_cpus, render_selection, thread_counts, CacheOutcome, EngineChoice, Limits, Runtime,
    RuntimeOptions,
};
use tailor::runtime::trial::{self, Isolation, Job};
use tract_onnx::prelude::*;

#[path = "select/bursts.rs"]
mod bursts;
#[path = "select/judge_noise.rs"]
mod judge_noise;

use bursts::{burst, Bursts, BURST_COMMAND};

/// A DeiT-Ti-like teacher at 64² so 90 candidates measure in seconds.
const TEACHER: Geometry = Geometry {
    max_width: 192,
    max_depth: 12,
    head_dim: 16,
    patch_size: 8,
    image_size: 64,
    ln_bias: true,
};

/// Careful brute force: passes, the issue's "3 full `runtime profile --all`
/// passes, median p90 per candidate" (`TAILOR_BENCH_PASSES` for a quick look).
const PASSES: usize = 3;
/// A pick this much over the limit (by the careful measurement) violates it.
const VIOLATION: f64 = 0.05;

fn main() -> ExitCode {
    // Selection measures candidates in children: this program re-executed.
    if let Some(code) = trial::child_main() {
        return code;
    }
    if std::env::args().nth(1).as_deref() == Some(BURST_COMMAND) {
        burst();
        return ExitCode::SUCCESS;
    }
    let mut args = std::env::args().skip(1);
    let mut sweep: usize = std::env::var("TAILOR_BENCH_LIMITS")
        .ok()
        .map(|v| v.parse().expect("TAILOR_BENCH_LIMITS=N"))
        .unwrap_or(16);
    let mut auto_only = false;
    let mut judge_noise = false;
    while let Some(a) = args.next() {
        if a == "--limits" {
            sweep = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--limits N");
        }
        auto_only |= a == "--auto-only";
        judge_noise |= a == "--judge-noise";
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
        },
        &|_| {},
    )
    .unwrap();

    let options = RuntimeOptions {
        // The careful brute force is tract's: so is the selection judged.
        engine: EngineChoice::Only(EngineKind::Tract),
        cache: None,
        isolation: Isolation::current_exe().unwrap(),
        ..RuntimeOptions::default()
    };
    let rt = Runtime::with_options(&out, options.clone()).unwrap();
    #[cfg(feature = "ort")]
    let mut auto = AutoSweep::new(&out, &options);
    let manifest = rt.bundle().manifest();
    let n = manifest.subnets.len();
    let shape = rt.input_shape(1);
    eprintln!("bundle: {n} sub-networks");
    if judge_noise {
        judge_noise::run(&manifest.subnets, |s| rt.bundle().graph_path(s), shape);
        return ExitCode::SUCCESS;
    }
    #[cfg(feature = "ort")]
    if auto_only {
        let p90 = |s: Option<&Subnet<'_>>| rt.profile(s.unwrap().id, 1).unwrap().p90_ms;
        let lo = p90(manifest.subnets.iter().min_by_key(|s| s.macs));
        let hi = p90(manifest.subnets.iter().max_by_key(|s| s.macs));
        for k in 0..sweep {
            let limit = limit_at(lo, hi, k, sweep);
            match rt.select(&Limits::latency_ms(limit).memory_mb(4096)) {
                Ok(tract) => auto.select(limit, &tract.id),
                Err(e) => eprintln!("limit {limit:.3} ms: tract: {e}"),
            }
        }
        auto.print();
        return ExitCode::SUCCESS;
    }
    #[cfg(not(feature = "ort"))]
    assert!(!auto_only, "--auto-only needs --features ort");

    let modes = std::env::var("TAILOR_BENCH_MODES").unwrap_or_else(|_| "quiet,bursty".into());
    let threads = thread_counts(available_cpus());
    let mut range = None;
    for mode in modes.split(',') {
        let bursts = match mode {
            "quiet" => None,
            "bursty" => Some(Bursts::start()),
            other => panic!("TAILOR_BENCH_MODES: unknown mode {other} (quiet, bursty)"),
        };
        let swept = sweep_mode(&rt, &manifest.subnets, shape, &threads, sweep, mode);
        drop(bursts);
        range.get_or_insert((swept.lo, swept.hi));
        #[cfg(feature = "ort")]
        if mode == "quiet" && std::env::var_os("TAILOR_BENCH_AUTO").is_some() {
            for (limit, pick) in &swept.picks {
                auto.select(*limit, pick);
            }
        }
    }
    let (lo, hi) = range.expect("at least one mode");

    // The cached boot: open the bundle and select with a decision cached,
    // against loading the winner alone.
    let cache_dir = tempfile::tempdir().unwrap();
    let cached = RuntimeOptions {
        cache: Some(cache_dir.path().join("decisions.postcard")),
        ..options
    };
    let limits = Limits::latency_ms((lo * hi).sqrt());
    let winner = Runtime::with_options(&out, cached.clone())
        .unwrap()
        .select(&limits)
        .unwrap();
    let winner_graph = rt
        .bundle()
        .graph_path(&rt.bundle().subnet(&winner.id).unwrap());
    let (mut boots, mut loads) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        let t = Instant::now();
        let hit = Runtime::with_options(&out, cached.clone())
            .unwrap()
            .select(&limits)
            .unwrap();
        boots.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(hit.cache, CacheOutcome::Hit);
        let t = Instant::now();
        drop(engine::load(EngineKind::Tract, &winner_graph, &EngineOptions::default()).unwrap());
        loads.push(t.elapsed().as_secs_f64() * 1e3);
    }
    boots.sort_by(f64::total_cmp);
    loads.sort_by(f64::total_cmp);
    let (boot_ms, load_ms) = (boots[boots.len() / 2], loads[loads.len() / 2]);

    // Inference overhead: our session vs tract called directly, same graph.
    let largest = manifest.subnets.iter().max_by_key(|s| s.macs).unwrap();
    let graph = rt.bundle().graph_path(largest);
    let ratio = overhead_vs_tract(&graph, shape);

    println!("| metric | value |");
    println!("|---|---|");
    println!("| sub-networks | {n} |");
    println!(
        "| cached boot (open + select, median of 9) | {boot_ms:.1} ms, of which the winner's load {load_ms:.1} ms: {:.1} ms beyond it (target ≤ 50) |",
        boot_ms - load_ms
    );
    println!(
        "| inference call, ours / raw tract ({}) | {ratio:.3}× |",
        largest.id
    );
    #[cfg(feature = "ort")]
    if std::env::var_os("TAILOR_BENCH_AUTO").is_some() {
        auto.print();
    }
    ExitCode::SUCCESS
}

/// What one mode's sweep found: the judged range and each limit's pick.
struct Swept {
    lo: f64,
    hi: f64,
    #[cfg_attr(not(feature = "ort"), allow(dead_code))]
    picks: Vec<(f64, String)>,
}

/// The careful brute force with every thread count, twice, then a fresh
/// selection at each of `sweep` limits; prints the mode's table.
fn sweep_mode(
    rt: &Runtime,
    subnets: &[Subnet<'_>],
    shape: [usize; 4],
    threads: &[usize],
    sweep: usize,
    mode: &str,
) -> Swept {
    let load_before = loadavg();
    let t0 = Instant::now();
    let judge = judged(rt, subnets, shape, threads, mode);
    let careful_s = t0.elapsed().as_secs_f64();
    let pass = |k: usize| -> Vec<Careful> {
        judge
            .iter()
            .map(|c| Careful {
                p90: c.p90s[k],
                ..c.clone()
            })
            .collect()
    };
    let (pass_a, pass_b) = (pass(0), pass(1));
    // Each candidate at its fastest thread count spans the limits.
    let fastest = |id: &str| {
        judge
            .iter()
            .filter(|c| c.id == id)
            .map(|c| c.p90)
            .fold(f64::MAX, f64::min)
    };
    let (lo, hi) = subnets.iter().fold((f64::MAX, 0f64), |(lo, hi), s| {
        let p90 = fastest(s.id);
        (lo.min(p90), hi.max(p90))
    });
    eprintln!(
        "{mode}: careful brute force: {} candidates x threads {threads:?}, {} passes, in {careful_s:.1} s; p90 from {lo:.3} to {hi:.3} ms",
        subnets.len(),
        passes()
    );

    let (mut self_agree, mut violations, mut near_best, mut wrong_nothing) = (0, 0, 0, 0);
    let (mut times, mut counts, mut rows, mut picks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in 0..sweep {
        let limit = limit_at(lo, hi, k, sweep);
        let (best_a, best_b) = (best_within(&pass_a, limit), best_within(&pass_b, limit));
        if best_a.map(|c| &c.id) == best_b.map(|c| &c.id) {
            self_agree += 1;
        }
        let best = best_within(&judge, limit);
        let t = Instant::now();
        let chosen = rt.select(&Limits::latency_ms(limit).memory_mb(4096));
        times.push(t.elapsed().as_secs_f64());
        let best_cell = best.map_or("none".into(), |b| {
            format!("{} on {} ({:.3})", b.id, b.threads, b.p90)
        });
        let chosen = match chosen {
            Ok(c) => c,
            Err(e) => {
                if best.is_some() {
                    wrong_nothing += 1;
                }
                eprintln!("{mode}: limit {limit:.3} ms: {e}");
                rows.push(format!(
                    "| {limit:.3} | error: {e} | | {best_cell} | | {:.2} s |",
                    times.last().unwrap()
                ));
                continue;
            }
        };
        if std::env::var_os("TAILOR_BENCH_TRIALS").is_some() {
            eprint!("{}", render_selection(&rt.bundle().manifest(), &chosen));
        }
        counts.push(chosen.candidates_measured());
        let pick = judge
            .iter()
            .find(|c| c.id == chosen.id && c.threads == chosen.threads)
            .unwrap();
        let over = pick.p90 / limit - 1.0;
        if over > VIOLATION {
            violations += 1;
        }
        let share = best.map_or(1.0, |b| pick.macs as f64 / b.macs as f64);
        if share >= 0.9 {
            near_best += 1;
        }
        eprintln!(
            "{mode}: limit {limit:7.3} ms: chose {} on {} (careful p90 {:.3} ms, {:+.1}% of the limit, {:.0}% of the best's MACs) after {} candidates in {:.2} s; careful best {best_cell}",
            chosen.id,
            chosen.threads,
            pick.p90,
            100.0 * over,
            100.0 * share,
            chosen.candidates_measured(),
            times.last().unwrap(),
        );
        rows.push(format!(
            "| {limit:.3} | {} on {} | {:.3} ({:+.1}%) | {best_cell} | {:.0}% | {:.2} s |",
            chosen.id,
            chosen.threads,
            pick.p90,
            100.0 * over,
            100.0 * share,
            times.last().unwrap()
        ));
        picks.push((limit, chosen.id.clone()));
    }
    times.sort_by(f64::total_cmp);
    counts.sort();
    let median_select = times[times.len() / 2];
    let load_after = loadavg();

    println!("### {mode}");
    println!();
    println!("| limit (ms, p90) | pick (threads) | careful p90 of the pick (vs limit) | careful best (threads, p90) | pick / best MACs | selection time |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    println!("| metric ({mode}) | value |");
    println!("|---|---|");
    println!("| load average (1 min) before / after the mode | {load_before} / {load_after} |");
    println!(
        "| latency limits swept | {sweep} ({lo:.2} to {hi:.2} ms, p90 at the fastest thread count) |"
    );
    println!("| careful brute force agreeing with itself (noise floor) | {self_agree}/{sweep} |");
    println!("| picks over the limit by > 5% (careful p90) | {violations}/{sweep} (target 0) |");
    println!(
        "| picks with ≥ 90% of the careful best's MACs | {near_best}/{sweep} (target ≥ {}) |",
        sweep - sweep / 8
    );
    println!(
        "| \"nothing fits\" where the judge found a fit | {wrong_nothing}/{sweep} (target 0) |"
    );
    if let (Some(median), Some(max)) = (counts.get(counts.len() / 2), counts.last()) {
        println!("| candidates measured (median, max) | {median}, {max} |");
    }
    println!("| selection wall time, confirmation included (median) | {median_select:.2} s |");
    println!(
        "| careful brute force wall time (threads {threads:?}, {} passes) | {careful_s:.1} s |",
        passes()
    );
    println!(
        "| selection / careful brute force | {:.1}% (target ≤ 15%) |",
        100.0 * median_select / careful_s
    );
    println!();
    Swept { lo, hi, picks }
}

/// The 1-minute load average, as `/proc/loadavg` writes it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Each limit's pick with `--engine auto` next to tract's.
#[cfg(feature = "ort")]
struct AutoSweep {
    rt: Runtime,
    rows: Vec<String>,
    /// Limits where auto's pick has at least the MACs of tract's.
    not_smaller: usize,
}

#[cfg(feature = "ort")]
impl AutoSweep {
    fn new(bundle: &Path, tract: &RuntimeOptions) -> AutoSweep {
        let options = RuntimeOptions {
            engine: EngineChoice::Auto,
            ..tract.clone()
        };
        AutoSweep {
            rt: Runtime::with_options(bundle, options).unwrap(),
            rows: Vec::new(),
            not_smaller: 0,
        }
    }

    fn select(&mut self, limit: f64, tract_pick: &str) {
        let manifest = self.rt.bundle().manifest();
        let macs = |id: &str| manifest.subnet(id).unwrap().macs;
        match self.rt.select(&Limits::latency_ms(limit).memory_mb(4096)) {
            Ok(pick) => {
                if macs(&pick.id) >= macs(tract_pick) {
                    self.not_smaller += 1;
                }
                self.rows.push(format!(
                    "| {limit:.3} | {tract_pick} | {} ({}) | {:.0}% |",
                    pick.id,
                    pick.engine,
                    100.0 * macs(&pick.id) as f64 / macs(tract_pick) as f64
                ));
            }
            Err(e) => self
                .rows
                .push(format!("| {limit:.3} | {tract_pick} | error: {e} | |")),
        }
    }

    fn print(&self) {
        println!();
        println!("| limit (ms, p90) | tract only | auto (engine) | auto / tract MACs |");
        println!("|---|---|---|---|");
        for row in &self.rows {
            println!("{row}");
        }
        println!();
        println!(
            "auto's pick at least as large as tract's: {}/{}",
            self.not_smaller,
            self.rows.len()
        );
    }
}

/// One candidate with one thread count as the careful brute force
/// measured it.
#[derive(Debug, Clone)]
struct Careful {
    id: String,
    threads: usize,
    macs: u64,
    /// Each pass's p90.
    p90s: Vec<f64>,
    /// The judge's figure: the median of the passes' p90s.
    p90: f64,
}

impl Careful {
    fn new(id: String, threads: usize, macs: u64, p90s: Vec<f64>) -> Careful {
        Careful {
            id,
            threads,
            macs,
            p90: median(&p90s),
            p90s,
        }
    }
}

/// `runtime profile --all` with each thread count, [`passes`] times: every
/// candidate measured with the default measuring options in a fresh
/// process, as the selection measures it and as the server then runs it
/// (warmed up, run after run), round-robin over candidates and thread
/// counts so drift and bursts of load fall on all of them alike.
fn careful(
    rt: &Runtime,
    subnets: &[Subnet<'_>],
    shape: [usize; 4],
    threads: &[usize],
) -> Vec<Careful> {
    let isolation = Isolation::current_exe().unwrap();
    let setups: Vec<(&Subnet<'_>, usize)> = subnets
        .iter()
        .flat_map(|s| threads.iter().map(move |&t| (s, t)))
        .collect();
    let mut p90s = vec![Vec::new(); setups.len()];
    let passes = passes();
    let bar = ProgressBar::new((passes * setups.len()) as u64);
    for _ in 0..passes {
        for ((subnet, threads), p90s) in setups.iter().zip(&mut p90s) {
            let graph = rt.bundle().graph_path(subnet);
            p90s.push(fresh_p90(&isolation, &graph, *threads, shape));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    setups
        .iter()
        .zip(p90s)
        .map(|(&(s, threads), p90s)| Careful::new(s.id.to_owned(), threads, s.macs, p90s))
        .collect()
}

/// One fresh job's p90 of `graph` with tract on `threads`, with the default
/// measuring options: one measurement of the careful brute force.
fn fresh_p90(isolation: &Isolation, graph: &Path, threads: usize, shape: [usize; 4]) -> f64 {
    let job = Job {
        graphs: vec![graph.to_owned()],
        engine: EngineKind::Tract,
        options: EngineOptions {
            threads: Some(threads),
            ..EngineOptions::default()
        },
        measure: MeasureOptions::default(),
        input_shape: shape,
    };
    trial::measure(isolation, &job).unwrap()[0].p90_ms
}

/// The careful brute force, or with `TAILOR_BENCH_JUDGE=DIR` the one
/// measured before and kept there (`judge-MODE.json`): for working on the
/// selection, never for the published figures, whose judge is measured in
/// the same run.
fn judged(
    rt: &Runtime,
    subnets: &[Subnet<'_>],
    shape: [usize; 4],
    threads: &[usize],
    mode: &str,
) -> Vec<Careful> {
    let Some(dir) = std::env::var_os("TAILOR_BENCH_JUDGE") else {
        return careful(rt, subnets, shape, threads);
    };
    let path = Path::new(&dir).join(format!("judge-{mode}.json"));
    let kept = std::fs::read(&path).ok().map(|bytes| {
        let rows: Vec<(String, usize, u64, Vec<f64>)> = serde_json::from_slice(&bytes).unwrap();
        eprintln!("{mode}: the judge kept in {}", path.display());
        rows.into_iter()
            .map(|(id, threads, macs, p90s)| Careful::new(id, threads, macs, p90s))
            .collect()
    });
    kept.unwrap_or_else(|| {
        let judge = careful(rt, subnets, shape, threads);
        let rows: Vec<(&str, usize, u64, &[f64])> = judge
            .iter()
            .map(|c| (c.id.as_str(), c.threads, c.macs, c.p90s.as_slice()))
            .collect();
        std::fs::write(&path, serde_json::to_vec(&rows).unwrap()).unwrap();
        judge
    })
}

/// The middle value (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    (sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0
}

/// Passes of the careful brute force.
fn passes() -> usize {
    std::env::var("TAILOR_BENCH_PASSES")
        .ok()
        .map_or(PASSES, |v| {
            let n = v.parse().expect("TAILOR_BENCH_PASSES=N");
            assert!(
                n >= 2,
                "TAILOR_BENCH_PASSES: at least 2 (one to judge the other)"
            );
            n
        })
}

/// Limit `k` of `sweep`, spread geometrically from just above `lo` to `hi`.
fn limit_at(lo: f64, hi: f64, k: usize, sweep: usize) -> f64 {
    lo * 1.05 * (hi / (lo * 1.05)).powf(k as f64 / (sweep - 1) as f64)
}

/// The candidate with the most MACs whose p90 is within `limit`.
fn best_within(table: &[Careful], limit: f64) -> Option<&Careful> {
    table
        .iter()
        .filter(|c| c.p90 <= limit)
        .max_by_key(|c| c.macs)
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
