//! `runtime cache export`: this board's cached decisions in one file, to
//! ship in the packs of identical boards (`exporter pack --decisions`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tailor_runtime::select::{MemoryLimit, ShippedDecisions};
use tailor_runtime::{cache, outln};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Write every cached decision, with its key, to one file for
    /// `exporter pack --decisions FILE`: boards whose key matches then
    /// measure only the shipped winner on their first boot.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The file to write (replaced whole, atomically).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// The decision cache to read [default: where `select` keeps it; a
    /// service's is /var/cache/tailor/decisions.postcard].
    #[arg(long, value_name = "FILE")]
    cache: Option<PathBuf>,
}

pub fn run(command: CacheCommand) -> Result<()> {
    match command {
        CacheCommand::Export(args) => export(args),
    }
}

fn export(args: ExportArgs) -> Result<()> {
    let cache = args.cache.or_else(cache::default_path).context(
        "no decision cache: pass --cache FILE ($TAILOR_CACHE_DIR, $CACHE_DIRECTORY, $XDG_CACHE_HOME and $HOME are unset)",
    )?;
    let decisions = ShippedDecisions::from_cache(&cache)?;
    decisions.write(&args.to)?;
    for (key, id) in decisions.winners() {
        let memory = match key.limits.memory {
            MemoryLimit::Bytes(b) => format!("{:.0} MB", b as f64 / (1024.0 * 1024.0)),
            MemoryLimit::FractionOfAvailable(f) => format!("{f} of the memory"),
        };
        outln!(
            "{id:<12} p{} <= {} ms, batch {}, memory {memory}; {}, power mode {}, bundle {:.12}",
            key.limits.percentile.value(),
            key.limits.latency_ms,
            key.limits.batch,
            key.engine,
            key.power_mode.as_deref().unwrap_or("none"),
            key.bundle.to_string(),
        )?;
    }
    outln!(
        "exported {} decisions from {} to {}",
        decisions.len(),
        cache.display(),
        args.to.display()
    )?;
    let tensorrt = cache.with_file_name("tensorrt");
    if tensorrt.is_dir() {
        outln!(
            "TensorRT's caches are in {}: ship them too with exporter pack --trt-cache DIR",
            tensorrt.display()
        )?;
    }
    Ok(())
}
