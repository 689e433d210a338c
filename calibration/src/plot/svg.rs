//! The Pareto chart drawn with plotters' SVG backend (the `plot` feature):
//! text as SVG `<text>`, no font files.

use std::path::Path;

use plotters::prelude::*;

use super::{pareto_front, Chart, Cost, PlotError, Point};

impl Cost {
    /// The horizontal axis' name.
    fn label(self) -> &'static str {
        match self {
            Cost::Macs => "MACs per image",
            Cost::LatencyMs => "measured latency (ms)",
        }
    }
}

/// The chart as an SVG document: every sub-network, the Pareto front joined
/// and highlighted, the chosen one marked and named.
pub fn pareto_svg(chart: &Chart<'_>) -> Result<String, PlotError> {
    let points = chart.points;
    if points.is_empty() {
        return Err(PlotError::Empty);
    }
    if let Some(p) = points
        .iter()
        .find(|p| !(p.cost > 0.0 && p.cost.is_finite() && p.quality.is_finite()))
    {
        return Err(PlotError::Value {
            id: p.id.clone(),
            cost: p.cost,
            quality: p.quality,
        });
    }
    let chosen = chart
        .chosen
        .map(|id| {
            points
                .iter()
                .find(|p| p.id == id)
                .ok_or_else(|| PlotError::UnknownChosen(id.to_owned()))
        })
        .transpose()?;
    let front: Vec<&Point> = pareto_front(points)
        .into_iter()
        .map(|i| &points[i])
        .collect();

    let (lo, hi) = bounds(points.iter().map(|p| p.cost));
    let (q_lo, q_hi) = bounds(points.iter().map(|p| p.quality));
    let q_pad = ((q_hi - q_lo) * 0.08).max(0.01);
    let mut svg = String::new();
    {
        let draw = |e: DrawingAreaErrorKind<_>| PlotError::Draw(e.to_string());
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let mut plot = ChartBuilder::on(&root)
            .caption(
                format!("{} against {}", chart.quality, chart.cost.label()),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (lo / 1.25..hi * 1.25).log_scale(),
                q_lo - q_pad..q_hi + q_pad,
            )
            .map_err(draw)?;
        plot.configure_mesh()
            .x_desc(chart.cost.label())
            .y_desc(chart.quality)
            .x_label_formatter(&|v| chart.cost.format(*v))
            .draw()
            .map_err(draw)?;

        let others = RGBColor(150, 150, 150);
        plot.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.cost, p.quality), 3, others.filled())),
        )
        .map_err(draw)?
        .label("sub-network")
        .legend(move |(x, y)| Circle::new((x, y), 3, others.filled()));
        plot.draw_series(LineSeries::new(
            front.iter().map(|p| (p.cost, p.quality)),
            RED.stroke_width(2),
        ))
        .map_err(draw)?;
        plot.draw_series(
            front
                .iter()
                .map(|p| Circle::new((p.cost, p.quality), 5, RED.filled())),
        )
        .map_err(draw)?
        .label("Pareto front")
        .legend(|(x, y)| Circle::new((x, y), 5, RED.filled()));
        if let Some(p) = chosen {
            plot.draw_series([EmptyElement::at((p.cost, p.quality))
                + Circle::new((0, 0), 9, BLUE.stroke_width(2))
                + Text::new(
                    format!("chosen: {}", p.id),
                    (12, -14),
                    ("sans-serif", 14).into_font().color(&BLUE),
                )])
            .map_err(draw)?
            .label("chosen")
            .legend(|(x, y)| Circle::new((x, y), 6, BLUE.stroke_width(2)));
        }
        plot.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// Writes [`pareto_svg`] to `path` whole or not at all (staged beside it).
pub fn write_svg(path: &Path, chart: &Chart<'_>) -> Result<(), PlotError> {
    let svg = pareto_svg(chart)?;
    Ok(tailor_runtime::fs::write_atomic(path, svg.as_bytes())?)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}
