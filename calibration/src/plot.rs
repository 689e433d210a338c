//! Quality against cost for every sub-network: the Pareto front, as a
//! picture (`exporter calibrate --plot`, with the `plot` feature) and as a
//! table (`inspect`).

pub mod measured;
#[cfg(feature = "plot")]
mod svg;

use std::fmt::Write as _;

pub use measured::{Chosen, Plotted, Reports};
#[cfg(feature = "plot")]
pub use svg::{pareto_svg, write_svg};

/// One sub-network on the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: String,
    /// MACs, or measured latency in milliseconds (see [`Cost`]).
    pub cost: f64,
    /// Higher is better (an accuracy, an agreement, a k-NN score).
    pub quality: f64,
}

/// What the horizontal axis measures. Both are drawn on a log scale: a grid's
/// costs span orders of magnitude.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Macs,
    /// The median from a `runtime profile --json` file ([`measured`]).
    LatencyMs,
}

impl Cost {
    /// A value on the axis and in the table.
    fn format(self, v: f64) -> String {
        match self {
            Cost::Macs => si(v),
            Cost::LatencyMs => format!("{v:.3}"),
        }
    }
}

/// What to draw.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    pub points: &'a [Point],
    pub cost: Cost,
    /// The vertical axis' name, e.g. "k-NN accuracy".
    pub quality: &'a str,
    /// The id of the sub-network the runtime chose, marked on the chart.
    pub chosen: Option<&'a str>,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no sub-networks to plot")]
    Empty,
    #[error("sub-network {id}: cost {cost} and quality {quality} cannot be plotted (costs are drawn on a log scale and must be positive)")]
    Value { id: String, cost: f64, quality: f64 },
    #[error("the chosen sub-network {0} is not among the plotted ones")]
    UnknownChosen(String),
    #[error("drawing the chart: {0}")]
    Draw(String),
    /// The file's path is the caller's context.
    #[error(transparent)]
    Write(#[from] std::io::Error),
}

/// The indices of the points no other point beats, by increasing cost.
///
/// A point is dominated when another costs no more and scores no less, and
/// is strictly better in one of the two. Identical points do not dominate
/// each other, so both stay on the front; points with a non-finite value are
/// never on it.
pub fn pareto_front(points: &[Point]) -> Vec<usize> {
    let finite = |p: &Point| p.cost.is_finite() && p.quality.is_finite();
    let dominates = |q: &Point, p: &Point| {
        q.cost <= p.cost && q.quality >= p.quality && (q.cost < p.cost || q.quality > p.quality)
    };
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| finite(&points[i]))
        .filter(|&i| !points.iter().any(|q| finite(q) && dominates(q, &points[i])))
        .collect();
    front.sort_by(|&a, &b| points[a].cost.total_cmp(&points[b].cost));
    front
}

/// The chart as text, by increasing cost: `*` marks the Pareto front, `>`
/// the chosen sub-network.
pub fn pareto_table(chart: &Chart<'_>) -> String {
    let front = pareto_front(chart.points);
    let mut order: Vec<usize> = (0..chart.points.len()).collect();
    order.sort_by(|&a, &b| chart.points[a].cost.total_cmp(&chart.points[b].cost));
    let id_width = chart
        .points
        .iter()
        .map(|p| p.id.len())
        .chain(["sub-network".len()])
        .max()
        .unwrap_or_default();
    let cost = match chart.cost {
        Cost::Macs => "MACs",
        Cost::LatencyMs => "latency ms",
    };
    let mut out = format!(
        "  {:<id_width$}  {cost:>12}  {:>9}  front\n",
        "sub-network", "quality"
    );
    for i in order {
        let p = &chart.points[i];
        let mark = if chart.chosen == Some(p.id.as_str()) {
            '>'
        } else {
            ' '
        };
        let on_front = if front.contains(&i) { "*" } else { "" };
        let _ = writeln!(
            out,
            "{mark} {:<id_width$}  {:>12}  {:>9.4}  {on_front}",
            p.id,
            chart.cost.format(p.cost),
            p.quality
        );
    }
    out
}

/// `1.23G`, `450M`: MAC counts at a glance.
fn si(v: f64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    UNITS
        .iter()
        .find(|(scale, _)| v >= *scale)
        .map(|(scale, unit)| format!("{:.3}{unit}", v / scale))
        .unwrap_or_else(|| format!("{v:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(values: &[(f64, f64)]) -> Vec<Point> {
        values
            .iter()
            .enumerate()
            .map(|(i, &(cost, quality))| Point {
                id: format!("s{i}"),
                cost,
                quality,
            })
            .collect()
    }

    #[test]
    fn a_dominated_point_is_not_on_the_front() {
        // s1 costs more than s0 and scores less; s3 costs as much as s2 and
        // scores less; s4 scores as much as s2 and costs more.
        let p = points(&[(1.0, 0.5), (2.0, 0.4), (3.0, 0.9), (3.0, 0.8), (4.0, 0.9)]);
        assert_eq!(pareto_front(&p), [0, 2]);
    }

    #[test]
    fn identical_points_are_both_on_the_front_and_the_order_is_by_cost() {
        let p = points(&[(5.0, 0.9), (1.0, 0.2), (5.0, 0.9)]);
        assert_eq!(pareto_front(&p), [1, 0, 2]);
    }

    #[test]
    fn a_single_point_is_the_front_and_non_finite_points_never_are() {
        assert_eq!(pareto_front(&points(&[(2.0, 0.1)])), [0]);
        assert_eq!(pareto_front(&[]), Vec::<usize>::new());
        let p = points(&[(f64::NAN, 1.0), (2.0, 0.1), (1.0, f64::INFINITY)]);
        assert_eq!(pareto_front(&p), [1]);
    }

    #[test]
    fn the_table_marks_the_front_and_the_chosen_one_by_cost() {
        let p = points(&[(3e9, 0.9), (1e9, 0.5), (2e9, 0.4)]);
        let table = pareto_table(&Chart {
            points: &p,
            cost: Cost::Macs,
            quality: "accuracy",
            chosen: Some("s1"),
        });
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec![">", "s1", "1.000G", "0.5000", "*"],
                vec!["s2", "2.000G", "0.4000"],
                vec!["s0", "3.000G", "0.9000", "*"],
            ]
        );
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(si(553_088.0), "553.088k");
        assert_eq!(si(4.5e9), "4.500G");
        assert_eq!(si(12.0), "12");
    }
}
