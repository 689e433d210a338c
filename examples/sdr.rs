//! An SDR teacher from export to the device's choice: export every path of
//! the embedded example SDRnet, route held-out MNIST digits to them (k-NN
//! accuracy per path, each shared prefix computed once per image), print
//! the ranking, and let start-up selection pick the best-routed path that
//! fits this machine under a default budget.
//!
//!     cargo run --release --example sdr [-- LATENCY_MS [MEMORY_MB]]
//!
//! The bundle stays in `target/sdr-bundle/`.

use std::path::Path;
use std::process::ExitCode;

mod common;

use anyhow::Result;
use tailor::calibration::route::{self, Pass};
use tailor::calibration::{record, Dataset, LoadOptions};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::select::{render_selection, Limits, Runtime, RuntimeOptions};
use tailor::runtime::trial::Isolation;

/// Default budget: generous for the tiny example on any CPU, so the choice
/// is the routing's.
const DEFAULT_LATENCY_MS: f64 = 50.0;
const DEFAULT_MEMORY_MB: f64 = 512.0;
/// Held-out MNIST images with labels: the task routed to.
const TASK_DATA: &str = "examples/mnist-calib.npz";

fn main() -> ExitCode {
    common::main(sdr, (DEFAULT_LATENCY_MS, DEFAULT_MEMORY_MB))
}

fn sdr(limits: Limits) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/sdr-bundle");

    // 1. Export the whole SDRnet and every path (sdr.json lies beside it).
    common::export(&root.join("examples/sdr-tiny/sdr.safetensors"), &out)?;

    // 2. Route the task: every path's k-NN accuracy, written into the manifest.
    let load = LoadOptions {
        labels: true,
        seed: 0,
        limit: None,
    };
    let data = root.join(TASK_DATA);
    let dataset = Dataset::load(&data, load)?;
    let opened = Bundle::open(&out)?;
    let routed = route::route(&opened, &dataset, "digits", Pass::default(), &mut |p| {
        if let route::Progress::Planned { cuts, unshared } = p {
            println!(
                "routing {} digits: {cuts} blocks per image ({unshared} one graph at a time)",
                dataset.images.len()
            );
        }
    })?;
    record::write(&opened, &dataset, &routed)?;
    println!("{:<4} {:<10} {:>9}", "rank", "path", "k-NN top1");
    for (rank, s) in route::ranking(&routed).into_iter().enumerate() {
        println!("{:<4} {:<10} {:>8.1}%", rank + 1, s.id, s.quality());
    }

    // 3. Start-up selection on this machine: the best-routed path that fits.
    let options = RuntimeOptions {
        cache: None, // a fresh decision every time the example runs
        isolation: Isolation::current_exe()?,
        ..RuntimeOptions::default()
    };
    let rt = Runtime::with_options(&out, options)?;
    let manifest = rt.bundle().manifest();
    println!("\nselecting on {}:", rt.device().summary());
    let chosen = rt.select(&limits)?;
    print!("{}", render_selection(&manifest, &chosen));
    println!("the bundle stays in {}", out.display());
    Ok(())
}
