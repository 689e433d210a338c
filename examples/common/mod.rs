//! What the examples share: the entry point and the budget arguments.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::plan::{Plan, Request};
use tailor::runtime::select::Limits;
use tailor::runtime::trial;

/// Runs `example`, or the measurement child this process was started as
/// (candidates are measured in children: the example re-executed).
pub fn main(example: fn(Limits) -> Result<()>, default: (f64, f64)) -> ExitCode {
    if let Some(code) = trial::child_main() {
        return code;
    }
    match budget(default).and_then(example) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `[LATENCY_MS [MEMORY_MB]]` from the command line, else `default`.
fn budget((latency_ms, memory_mb): (f64, f64)) -> Result<Limits> {
    let mut args = std::env::args().skip(1);
    let mut number = |name: &str, default: f64| -> Result<f64> {
        args.next()
            .map(|a| a.parse().with_context(|| name.to_owned()))
            .unwrap_or(Ok(default))
    };
    let latency_ms = number("LATENCY_MS", latency_ms)?;
    let memory_mb = number("MEMORY_MB", memory_mb)?;
    Ok(Limits::latency_ms(latency_ms).memory_mb(memory_mb))
}

/// Exports every sub-network of `teacher` into `out` (replacing it) and
/// says what was written.
pub fn export(teacher: &Path, out: &Path) -> Result<()> {
    let plan = Plan::new(&Request::all(teacher))?;
    let options = WriteOptions {
        force: true,
        jobs: 2,
    };
    let summary = bundle::write(&plan, out, &options, &|_| {})?;
    println!(
        "exported {} sub-networks of {} into {} ({} files, {:.2} MiB)\n",
        summary.subnets,
        plan.teacher().display(),
        out.display(),
        summary.files,
        summary.bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
