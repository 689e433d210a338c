//! The human report of a selection (`runtime select` without `--json`).

use std::fmt::Write;

use super::{CacheOutcome, Chosen, Stage, MB};
use crate::manifest::Manifest;

/// The human report of a selection: the limits, every candidate measured
/// with its prediction and verdict, the confirmation and the choice.
pub fn render_selection(m: &Manifest<'_>, c: &Chosen) -> String {
    let mut out = String::new();
    let p = c.percentile.value();
    let _ = writeln!(
        out,
        "limits: p{p} latency <= {:.2} ms at batch {}, memory <= {:.0} MB; engine {} on {} thread{}",
        c.limits.latency_ms,
        c.limits.batch,
        c.limits.memory_bytes as f64 / MB,
        c.engine,
        c.threads,
        if c.threads == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "measured beside: {}", c.load);
    if c.cache == CacheOutcome::Hit {
        let _ = writeln!(out, "decision from the cache (same device, clocks, engine, bundle, limits and options): nothing measured");
    } else {
        for t in &c.engine_trials {
            let result = match (&t.measured, &t.note) {
                (Some(m), _) => format!("p{p} {:.3} ms", m.percentile_ms(c.percentile)),
                (None, note) => note.clone().unwrap_or_default(),
            };
            let _ = writeln!(out, "engine {} on {}: {result}", t.engine, t.id);
        }
        let _ = writeln!(
            out,
            "measured {} of {} candidates:",
            c.candidates_measured(),
            m.subnets.len()
        );
        let _ = writeln!(
            out,
            "  {:<12} {:<8} {:<6} {:>7} {:>10} {:>10} {:>10} {:>9}  verdict",
            "id",
            "stage",
            "engine",
            "threads",
            "predicted",
            format!("p{p} ms"),
            "upper ms",
            "peak MB"
        );
        for t in &c.trials {
            let predicted = t.predicted_ms.map_or("-".into(), |v| format!("{v:.3}"));
            let (lat, upper, mem) =
                t.measured
                    .as_ref()
                    .map_or(("-".into(), "-".into(), "-".into()), |m| {
                        (
                            format!("{:.3}", m.percentile_ms(c.percentile)),
                            format!("{:.3}", m.upper_ms(c.percentile)),
                            format!("{:.1}", m.peak_mb),
                        )
                    });
            let verdict = match (&t.note, t.fits) {
                (Some(note), _) => note.clone(),
                (None, true) => "fits".into(),
                (None, false) => "over the limits".into(),
            };
            let stage = match t.stage {
                Stage::Search => "search",
                Stage::Confirm => "confirm",
            };
            let _ = writeln!(
                out,
                "  {:<12} {stage:<8} {:<6} {:>7} {predicted:>10} {lat:>10} {upper:>10} {mem:>9}  {verdict}",
                t.id,
                t.engine.to_string(),
                t.threads
            );
        }
    }
    let _ = writeln!(
        out,
        "chosen: {} (width {}, depth {}): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, peak {:.1} MB{}; selection took {:.0} ms ({})",
        c.id,
        c.width,
        c.depth,
        c.measured.p50_ms,
        c.measured.p90_ms,
        c.measured.p99_ms,
        c.measured.peak_mb,
        if c.noisy { " (noisy)" } else { "" },
        c.selection_ms,
        match c.cache {
            CacheOutcome::Hit => "cache hit".to_owned(),
            CacheOutcome::Miss => "cache miss, decision cached".to_owned(),
            CacheOutcome::Disabled => "cache disabled".to_owned(),
            CacheOutcome::Unwritable => "cache miss, cache not writable".to_owned(),
            CacheOutcome::Shipped => format!(
                "shipped decision confirmed: {} candidate measured, decision cached",
                c.candidates_measured()
            ),
        }
    );
    out
}
