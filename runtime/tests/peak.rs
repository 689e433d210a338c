//! The measured peak includes the load: where out-of-memory really happens.
//! Alone in its test binary, because the process-wide high-water mark is
//! reset by any measurement running beside it.

use std::path::Path;
use std::time::Duration;

use ndarray::Array4;
use tailor_runtime::engine::{self, EngineKind, EngineOptions};
use tailor_runtime::profile::{self, MeasureOptions, MemorySource};

#[test]
fn the_peak_counts_memory_used_only_while_loading() {
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine/tiny.onnx");
    let options = EngineOptions {
        batch: 2,
        ..EngineOptions::default()
    };
    let input = Array4::<f32>::zeros((2, 3, 4, 4));
    let opts = MeasureOptions {
        warmup_runs: 0,
        min_runs: 3,
        min_time: Duration::ZERO,
        max_runs: 3,
    };
    const HOG_MB: usize = 64;
    let before = rss_mb();
    let (_, m) = profile::measure(
        || {
            // A load that touches 64 MB and frees it before returning (glibc
            // maps an allocation this large, so the free unmaps it).
            let hog = std::hint::black_box(vec![1u8; HOG_MB << 20]);
            drop(hog);
            engine::load(EngineKind::Tract, &graph, &options)
        },
        input.view(),
        &opts,
    )
    .unwrap();
    // Linux lets a process reset its own high-water mark; without that only
    // RSS samples between steps are taken, and this peak is invisible.
    assert_eq!(m.memory, MemorySource::HighWaterMark, "clear_refs refused");
    // A peak window opened after the load (or a peak taken from RSS after
    // it) misses the 64 MB: the session itself holds far less.
    assert!(m.rss_mb < before + 32.0, "{m:?}");
    assert!(
        m.peak_mb >= before + (HOG_MB - 4) as f64,
        "before {before} MB: {m:?}"
    );
}

/// This process's resident set now, in MB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb / 1024.0
}
