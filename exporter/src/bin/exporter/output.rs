//! What several subcommands print alike: the sub-network table's rows,
//! counts and sizes at a glance, the dataset's description and the
//! progress bar.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tailor_calibration::Dataset;

/// A progress bar on stderr drawn with `template`, or a hidden one when
/// `hidden` (`--quiet`, or `--json`, whose reader wants stdout alone).
pub fn progress_bar(hidden: bool, length: Option<u64>, template: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// The sub-network tables' header (dry run and inspect).
pub fn table_header() -> String {
    table_row(
        [
            "id", "width", "depth", "params", "MACs", "weights", "act(b=1)",
        ]
        .map(String::from),
    )
}

/// One line of the sub-network tables (dry run and inspect).
pub fn subnet_row(
    id: &str,
    width: u32,
    depth: u32,
    params: u64,
    macs: u64,
    weight_bytes: u64,
    act_bytes: u64,
) -> String {
    table_row([
        id.to_owned(),
        width.to_string(),
        depth.to_string(),
        si(params),
        si(macs),
        human_bytes(weight_bytes),
        human_bytes(act_bytes),
    ])
}

fn table_row(cells: [String; 7]) -> String {
    let [id, width, depth, params, macs, weights, act] = cells;
    format!("{id:<12} {width:>6} {depth:>6} {params:>10} {macs:>10} {weights:>11} {act:>10}")
}

/// 1234567 -> 1.23M
fn si(v: u64) -> String {
    match v {
        0..1_000 => v.to_string(),
        1_000..1_000_000 => format!("{:.2}k", v as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}M", v as f64 / 1e6),
        _ => format!("{:.2}G", v as f64 / 1e9),
    }
}

/// 1536 -> 1.5 KiB
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `--json`'s description of the data scored: where, which, how split.
pub fn dataset_json(path: &Path, dataset: &Dataset) -> serde_json::Value {
    serde_json::json!({
        "path": path, "sha256": dataset.sha256.to_string(), "images": dataset.images.len(),
        "bytes": dataset.bytes,
        "classes": dataset.labels.as_ref().map(|l| l.names.len()),
        "train": dataset.labels.as_ref().map(|l| l.train.len()),
        "val": dataset.labels.as_ref().map(|l| l.val.len()),
    })
}
