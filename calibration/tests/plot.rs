//! The Pareto chart drawn with plotters' SVG backend, without system fonts.

use tailor_calibration::plot::{pareto_svg, Chart, Cost, PlotError, Point};

fn grid() -> Vec<Point> {
    // w32 < w48 < w64 in cost; w48-d2 is beaten by w32-d4 (cheaper, better).
    [
        ("w32-d2", 0.55e6, 0.61),
        ("w32-d4", 1.1e6, 0.74),
        ("w48-d2", 1.2e6, 0.70),
        ("w48-d4", 2.4e6, 0.80),
        ("w64-d4", 4.2e6, 0.83),
    ]
    .into_iter()
    .map(|(id, cost, quality)| Point {
        id: id.to_owned(),
        cost,
        quality,
    })
    .collect()
}

fn circles_filled(svg: &str, colour: &str) -> usize {
    svg.lines()
        .filter(|l| l.contains("<circle") && l.contains(&format!("fill=\"{colour}\"")))
        .count()
}

/// The grid's chart.
fn svg(cost: Cost, quality: &str, chosen: Option<&str>) -> String {
    pareto_svg(&Chart {
        points: &grid(),
        cost,
        quality,
        chosen,
    })
    .unwrap()
}

#[test]
fn the_front_is_highlighted_and_the_chosen_point_named() {
    let svg = svg(Cost::Macs, "k-NN accuracy", Some("w48-d4"));
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // One grey dot per sub-network and one red per front point (w48-d2 is
    // dominated), each plus its legend entry.
    assert_eq!(circles_filled(&svg, "#969696"), 5 + 1);
    assert_eq!(circles_filled(&svg, "#FF0000"), 4 + 1);
    assert!(svg.contains("chosen: w48-d4"));
    assert!(svg.contains("MACs per image") && svg.contains("k-NN accuracy"));
}

#[test]
fn latency_axis_and_no_chosen_point() {
    let svg = svg(Cost::LatencyMs, "agreement", None);
    assert!(svg.contains("measured latency (ms)"));
    assert!(!svg.contains("chosen"));
}

#[test]
fn unplottable_charts_are_errors() {
    fn chart<'a>(points: &'a [Point], chosen: Option<&'a str>) -> Chart<'a> {
        Chart {
            points,
            cost: Cost::Macs,
            quality: "q",
            chosen,
        }
    }
    assert!(matches!(
        pareto_svg(&chart(&[], None)),
        Err(PlotError::Empty)
    ));
    let mut points = grid();
    assert!(matches!(
        pareto_svg(&chart(&points, Some("w99-d9"))),
        Err(PlotError::UnknownChosen(id)) if id == "w99-d9"
    ));
    points[2].cost = 0.0;
    let err = pareto_svg(&chart(&points, None)).unwrap_err();
    assert!(err.to_string().contains("w48-d2"), "{err}");
}
