//! `exporter`: slice a POA teacher checkpoint into a bundle of per-budget
//! ONNX graphs, or show what a bundle holds.
//!
//! One module per subcommand in [`commands`], each holding its arguments,
//! their help and its handler; the tables and sizes they print in
//! [`output`].

mod commands;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tailor_runtime::stdout;

use commands::{calibrate, export, inspect, pack, quantize, route};

/// Slice a POA elastic teacher into standalone per-budget ONNX graphs.
///
/// Reads the checkpoint as POA training wrote it (`teacher_checkpoint.pth`,
/// or a plain state dict, .pth or .safetensors; fp32/fp16/bf16), finds its
/// `config.yaml` from POA's output layout, and writes a bundle: one ONNX
/// graph per sub-network, each width's weights stored once and shared by
/// all its depths, and a manifest with every sub-network's size,
/// cost and hashes.
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:
  exporter --all-subnets work_dirs/vit/eval/training_276799/teacher_checkpoint.pth -o bundle/
  exporter --subnets 384x12,768x12,1024x24 teacher.safetensors --config config.yaml -o bundle/
  exporter --all-subnets teacher.pth --max-params 30M --max-macs 6G -o bundle/
  exporter --all-subnets teacher.pth --dry-run
  exporter inspect bundle/
  exporter calibrate bundle/ --data images/
  exporter pack bundle/ --target jetson-orin-nano --latency-ms 25 -o tailor-orin.tar.gz"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    // Without a subcommand: the export.
    #[command(flatten)]
    export: export::ExportArgs,
}

// The subcommands, in `--help`'s order; each one's help is on its arguments.
#[derive(Debug, Subcommand)]
enum Command {
    Inspect(inspect::InspectArgs),
    Pack(pack::PackArgs),
    Calibrate(calibrate::CalibrateArgs),
    Route(route::RouteArgs),
    Quantize(quantize::QuantizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Inspect(args)) => inspect::run(args),
        Some(Command::Pack(args)) => pack::run(args),
        Some(Command::Calibrate(args)) => calibrate::run(args),
        Some(Command::Route(args)) => route::run(args),
        Some(Command::Quantize(args)) => quantize::run(args),
        None => export::run(cli.export),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `exporter inspect B | head`: the reader has what it wanted.
        Err(e) if stdout::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
