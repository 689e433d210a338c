//! The Pareto chart drawn with plotters' SVG backend, without system fonts.

use tailor_calibration::plot::{pareto_svg, Chart, Cost, PlotError, Point};

/// Points from (id, cost, quality).
fn points(values: &[(&str, f64, f64)]) -> Vec<Point> {
    values
        .iter()
        .map(|&(id, cost, quality)| Point {
            id: id.to_owned(),
            cost,
            quality,
        })
        .collect()
}

fn grid() -> Vec<Point> {
    // w32 < w48 < w64 in cost; w48-d2 is beaten by w32-d4 (cheaper, better).
    points(&[
        ("w32-d2", 0.55e6, 0.61),
        ("w32-d4", 1.1e6, 0.74),
        ("w48-d2", 1.2e6, 0.70),
        ("w48-d4", 2.4e6, 0.80),
        ("w64-d4", 4.2e6, 0.83),
    ])
}

/// A `<circle>` of the SVG: centre, radius, fill and stroke colours.
#[derive(Debug, Clone, PartialEq)]
struct Circle {
    centre: (i64, i64),
    r: i64,
    fill: String,
    stroke: String,
}

/// The value of `name="..."` in one SVG element.
fn attr<'a>(element: &'a str, name: &str) -> &'a str {
    let start = element.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
    let len = element[start..].find('"').unwrap();
    &element[start..start + len]
}

fn circles(svg: &str) -> Vec<Circle> {
    svg.lines()
        .filter(|l| l.trim_start().starts_with("<circle"))
        .map(|l| Circle {
            centre: (
                attr(l, "cx").parse().unwrap(),
                attr(l, "cy").parse().unwrap(),
            ),
            r: attr(l, "r").parse().unwrap(),
            fill: attr(l, "fill").to_owned(),
            stroke: attr(l, "stroke").to_owned(),
        })
        .collect()
}

/// The red line's vertices.
fn front_line(svg: &str) -> Vec<(i64, i64)> {
    let line = svg
        .lines()
        .find(|l| l.contains("<polyline") && l.contains("stroke=\"#FF0000\""))
        .unwrap();
    attr(line, "points")
        .split_whitespace()
        .map(|xy| {
            let (x, y) = xy.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

/// The ids on the front, found without the crate: by increasing cost, each
/// point that scores more than every cheaper one (the costs are distinct).
fn front_by_sweep(points: &[Point]) -> Vec<&str> {
    let mut by_cost: Vec<&Point> = points.iter().collect();
    by_cost.sort_by(|a, b| a.cost.partial_cmp(&b.cost).unwrap());
    let mut best = f64::NEG_INFINITY;
    let mut front = Vec::new();
    for p in by_cost {
        if p.quality > best {
            front.push(p.id.as_str());
            best = p.quality;
        }
    }
    front
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

/// Catches a wrong point drawn on the front with the right count (front
/// indices applied to the points sorted by cost rather than in the caller's
/// order), the front line joining other points, and the chosen mark beside
/// its point: which points are red is checked against a front found in the
/// test, each point located by its cost and quality ranks.
#[test]
fn the_front_is_highlighted_and_the_chosen_point_named() {
    // Not in cost order; w48-d2 is beaten by w32-d4 (cheaper, better) and
    // w56-d3 by w64-d2 and w48-d4.
    let points = points(&[
        ("w48-d4", 2.4e6, 0.80),
        ("w32-d2", 0.55e6, 0.61),
        ("w56-d3", 3.0e6, 0.78),
        ("w64-d4", 4.2e6, 0.83),
        ("w48-d2", 1.2e6, 0.70),
        ("w32-d4", 1.1e6, 0.74),
        ("w64-d2", 2.0e6, 0.79),
    ]);
    let svg = pareto_svg(&Chart {
        points: &points,
        cost: Cost::Macs,
        quality: "k-NN accuracy",
        chosen: Some("w56-d3"),
    })
    .unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("chosen: w56-d3"));
    assert!(svg.contains("MACs per image") && svg.contains("k-NN accuracy"));

    let circles = circles(&svg);
    let of = |fill: &str, r: i64| -> Vec<(i64, i64)> {
        circles
            .iter()
            .filter(|c| c.fill == fill && c.r == r)
            .map(|c| c.centre)
            .collect()
    };
    // One grey dot per sub-network, then the legend's.
    let grey = of("#969696", 3);
    assert_eq!(grey.len(), points.len() + 1, "{grey:?}");
    let mut dots = grey[..points.len()].to_vec();
    // Locate each point: the dots from left to right are the points by
    // increasing cost, and from the top down by decreasing quality.
    let mut by_cost: Vec<&Point> = points.iter().collect();
    by_cost.sort_by(|a, b| a.cost.partial_cmp(&b.cost).unwrap());
    dots.sort_by_key(|&(x, _)| x);
    let mut top_down: Vec<usize> = (0..dots.len()).collect();
    top_down.sort_by_key(|&i| dots[i].1);
    let mut by_quality = by_cost.clone();
    by_quality.sort_by(|a, b| b.quality.partial_cmp(&a.quality).unwrap());
    assert_eq!(
        top_down.iter().map(|&i| &by_cost[i].id).collect::<Vec<_>>(),
        by_quality.iter().map(|p| &p.id).collect::<Vec<_>>(),
        "dots {dots:?}"
    );
    let at = |centre: (i64, i64)| -> &str {
        let i = dots.iter().position(|&d| d == centre);
        i.map_or("(no point)", |i| by_cost[i].id.as_str())
    };

    // The red dots sit on exactly the front's points (plus the legend's,
    // which is on none), and the red line joins them by increasing cost.
    let red = of("#FF0000", 5);
    let mut marked: Vec<&str> = red.iter().map(|&c| at(c)).collect();
    let expected = front_by_sweep(&points);
    assert_eq!(expected, ["w32-d2", "w32-d4", "w64-d2", "w48-d4", "w64-d4"]);
    assert_eq!(
        marked.pop(),
        Some("(no point)"),
        "the legend's dot comes last"
    );
    marked.sort_by_key(|id| expected.iter().position(|e| e == id));
    assert_eq!(marked, expected, "red dots at {red:?}");
    let line: Vec<&str> = front_line(&svg).into_iter().map(at).collect();
    assert_eq!(line, expected);

    // The chosen ring is around the chosen point.
    let rings: Vec<&str> = circles
        .iter()
        .filter(|c| c.stroke == "#0000FF" && c.r == 9)
        .map(|c| at(c.centre))
        .collect();
    assert_eq!(rings, ["w56-d3"]);
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
