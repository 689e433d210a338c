//! The histogram of path accuracies (`exporter route --plot`), as SDR's
//! figure draws it: how many paths reach each accuracy, the whole net marked.

use std::io;
use std::path::Path;

use plotters::prelude::*;
use tailor_runtime::fs::write_atomic;

use crate::plot::PlotError;
use crate::Scores;

/// Bars of this many percentage points.
const BIN: f64 = 1.0;

/// The SVG of the paths' k-NN accuracies in bins of [`BIN`] points; the
/// sub-network `marked` (the whole SDRnet) is drawn as a line, not counted.
pub fn svg(scores: &[Scores], marked: &str, task: &str) -> Result<String, PlotError> {
    let paths: Vec<f64> = scores
        .iter()
        .filter(|s| s.id != marked)
        .map(Scores::quality)
        .collect();
    if paths.is_empty() {
        return Err(PlotError::Empty);
    }
    if let Some(s) = scores.iter().find(|s| !s.quality().is_finite()) {
        return Err(PlotError::Value {
            id: s.id.clone(),
            cost: 0.0,
            quality: s.quality(),
        });
    }
    let bin = |q: f64| (q / BIN).floor() as i64;
    let all = scores.iter().map(|s| bin(s.quality()));
    let (lo, hi) = (
        all.clone().min().unwrap_or(0) - 1,
        all.max().unwrap_or(0) + 2,
    );
    let mut counts = vec![0u32; (hi - lo) as usize];
    for &q in &paths {
        counts[(bin(q) - lo) as usize] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1) + 1;
    let whole = scores.iter().find(|s| s.id == marked);
    // The whole net's line is named in the caption, so the chart needs no
    // legend.
    let caption = match whole {
        Some(w) => format!(
            "{} paths routed to {task} (red line: {marked}, {:.1}%)",
            paths.len(),
            w.quality()
        ),
        None => format!("{} paths routed to {task}", paths.len()),
    };
    let mut svg = String::new();
    {
        let draw = |e: DrawingAreaErrorKind<_>| PlotError::Draw(e.to_string());
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let (x_lo, x_hi) = (lo as f64 * BIN, hi as f64 * BIN);
        let mut plot = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(50)
            .build_cartesian_2d(x_lo..x_hi, 0u32..top)
            .map_err(draw)?;
        plot.configure_mesh()
            .x_desc("k-NN top-1 accuracy (%)")
            .y_desc("paths")
            .draw()
            .map_err(draw)?;
        let bars = RGBColor(90, 120, 200);
        plot.draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| {
                    let x = (lo + i as i64) as f64 * BIN;
                    Rectangle::new([(x, 0), (x + BIN, c)], bars.filled())
                }),
        )
        .map_err(draw)?;
        if let Some(w) = whole {
            let q = w.quality();
            plot.draw_series(LineSeries::new([(q, 0), (q, top)], RED.stroke_width(2)))
                .map_err(draw)?;
        }
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// Why the histogram was not written.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("writing {path}")]
    Write {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

/// Writes [`svg`] to `path` whole or not at all.
pub fn write(
    path: &Path,
    scores: &[Scores],
    marked: &str,
    task: &str,
) -> Result<(), HistogramError> {
    let svg = svg(scores, marked, task)?;
    write_atomic(path, svg.as_bytes()).map_err(|source| HistogramError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(values: &[(&str, f64)]) -> Vec<Scores> {
        values
            .iter()
            .map(|&(id, q)| Scores {
                id: id.into(),
                knn_top1: Some(q),
                fidelity: 1.0,
            })
            .collect()
    }

    #[test]
    fn paths_in_one_bin_make_one_bar_and_the_whole_net_is_a_line() {
        let s = scores(&[("full", 70.2), ("r0", 61.2), ("r1", 61.7), ("r2", 65.0)]);
        let svg = svg(&s, "full", "digits").unwrap();
        // Bars are filled with `bars`' colour, #5A78C8.
        assert_eq!(svg.matches("#5A78C8").count(), 2, "two bars: {svg}");
        assert!(svg.contains("red line: full, 70.2%"), "{svg}");
        assert!(svg.contains("3 paths routed to digits"), "{svg}");
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        let s = scores(&[("full", 70.0)]);
        assert!(matches!(svg(&s, "full", "t"), Err(PlotError::Empty)));
        let s = scores(&[("full", 70.0), ("r0", f64::NAN)]);
        assert!(matches!(svg(&s, "full", "t"), Err(PlotError::Value { .. })));
    }
}
