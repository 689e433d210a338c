//! `exporter inspect`: what a bundle holds, its files optionally verified,
//! and the Pareto table once calibration scored it.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tailor_calibration::plot::{pareto_front, pareto_table, Chart, Cost, Point};
use tailor_runtime::bundle::Bundle;
use tailor_runtime::manifest::{Manifest, Precision, Subnet};
use tailor_runtime::outln;

use crate::output::{subnet_row, table_header};

/// Show what a bundle holds (and optionally verify every file's sha256).
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle directory.
    bundle: PathBuf,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
    /// Check every graph and weight file against the manifest's sha256.
    #[arg(long)]
    verify: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let bundle = Bundle::open(&args.bundle)?;
    let m = bundle.manifest();
    if args.verify {
        for s in &m.subnets {
            bundle.verify(s)?;
        }
        if let Some(c) = &m.calibration {
            bundle.verify_data(&c.ranges)?;
        }
    }
    // Quality against MACs, once calibration has scored the sub-networks.
    let points: Option<Vec<Point>> = m.calibration.as_ref().map(|_| {
        m.subnets
            .iter()
            .filter_map(|s| {
                Some(Point {
                    id: s.id.to_owned(),
                    cost: s.macs as f64,
                    quality: f64::from(s.quality?),
                })
            })
            .collect()
    });
    if args.json {
        let mut out = serde_json::to_value(&m)?;
        // Each scored variant's quality against its parent's, as the table shows it.
        for (s, json) in m.subnets.iter().zip(
            out["subnets"]
                .as_array_mut()
                .expect("a manifest lists its sub-networks"),
        ) {
            if let Some(drop) = quality_drop(&m, s) {
                json["quality_drop"] = drop.into();
            }
        }
        if let Some(points) = &points {
            // By increasing MACs, as on the chart.
            out["pareto_front"] = pareto_front(points)
                .into_iter()
                .map(|i| points[i].id.as_str())
                .collect();
        }
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(());
    }
    outln!(
        "bundle {}: {} sub-networks of {} {} ({})",
        args.bundle.display(),
        m.subnets.len(),
        m.teacher.family,
        m.teacher.file,
        m.teacher.config
    )?;
    outln!("teacher sha256 {}", m.teacher.sha256)?;
    match &m.calibration {
        Some(c) => outln!(
            "calibrated on {} images (dataset sha256 {}): quality is {}",
            c.dataset_images,
            c.dataset_sha256,
            c.quality_metric.name()
        )?,
        None => outln!("not calibrated: quality unknown (exporter calibrate)")?,
    }
    outln!(
        "{}  {:<9} {:>8} {:>8} {:>6}  graph",
        table_header(),
        "precision",
        "quality",
        "fidelity",
        "drop"
    )?;
    for s in &m.subnets {
        let row = subnet_row(
            s.id,
            s.width,
            s.depth,
            s.params,
            s.macs,
            s.weight_bytes,
            s.activation_bytes,
        );
        let score = |v: Option<f32>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        // A variant's quality against its fp32 parent's, once both are scored.
        let drop = quality_drop(&m, s).map_or("-".to_owned(), |d| format!("{d:+.2}"));
        let precision = match &s.precision {
            Precision::Fp32 | Precision::Fp16 { .. } => s.precision.name().to_owned(),
            Precision::Int8 { encoding, .. } => format!("int8-{}", encoding.name()),
        };
        outln!(
            "{row}  {precision:<9} {:>8} {:>8} {drop:>6}  {}",
            score(s.quality),
            score(s.fidelity),
            s.onnx
        )?;
    }
    if let (Some(points), Some(c)) = (&points, &m.calibration) {
        let chart = Chart {
            points,
            cost: Cost::Macs,
            quality: c.quality_metric.name(),
            chosen: None,
        };
        outln!(
            "\n{} against MACs (* marks the Pareto front: the sub-networks no other beats on both):",
            c.quality_metric.name()
        )?;
        outln!(@no_newline "{}", pareto_table(&chart))?;
    }
    if args.verify {
        outln!("verified: every graph, weight and calibration file matches its sha256")?;
    }
    Ok(())
}

/// A variant's quality minus its fp32 parent's, once both are scored: not
/// stored, so re-scoring either keeps it true.
fn quality_drop(m: &Manifest<'_>, s: &Subnet<'_>) -> Option<f32> {
    Some(s.quality? - m.subnet(s.parent()?)?.quality?)
}
