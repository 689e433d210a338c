//! The device's latency curve as the policy sees it: a line in MACs, fitted
//! by least squares to the candidates measured so far, with a margin saying
//! how far off the line has been.

use heapless::Vec;

/// The margin of a line that passes exactly through its points: a measured
/// latency is a percentile of a few runs, never exact.
const MIN_MARGIN: f64 = 0.02;
/// A point this much slower (relative) than the line through the others is
/// an anomaly of that one candidate (a slow kernel, a cache cliff), not a
/// trait of the device, and is left out of the fit. Noise of a few percent
/// never is.
const ANOMALY: f64 = 0.25;
/// The most points left out as anomalies; the rest of the curve must hold.
const MAX_ANOMALIES: usize = 8;
/// Anomalies are only judged against a line through at least this many points.
const MIN_POINTS_TO_JUDGE: usize = 3;

/// A candidate that ran: its MACs and its measured latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    /// The candidate's index, to name it as an anomaly.
    pub id: usize,
    pub macs: u64,
    pub latency_ms: f32,
}

/// `latency ≈ intercept + slope · macs` and the relative error to expect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LatencyModel {
    line: Line,
    margin: f64,
}

impl LatencyModel {
    /// Fits the points `points()` yields, leaving anomalies out; `None`
    /// without points.
    pub fn fit<I: Iterator<Item = Point>>(points: impl Fn() -> I) -> Option<Self> {
        let mut anomalies = Vec::<usize, MAX_ANOMALIES>::new();
        loop {
            let kept = || points().filter(|p| !anomalies.contains(&p.id));
            if !anomalies.is_full() && kept().count() > MIN_POINTS_TO_JUDGE {
                if let Some(id) = anomaly(kept) {
                    // Cannot fail: checked `is_full` above.
                    let _ = anomalies.push(id);
                    continue;
                }
            }
            let line = Line::fit(kept())?;
            let margin = if line.anchored {
                MIN_MARGIN + line.spread(kept())
            } else {
                f64::INFINITY
            };
            return Some(LatencyModel { line, margin });
        }
    }

    /// The predicted latency of a candidate with `macs` MACs.
    pub fn predict(&self, macs: u64) -> f64 {
        self.line.intercept_ms + self.line.ms_per_mac * macs as f64
    }

    /// The relative error to expect from [`Self::predict`]: infinite until two
    /// candidates of different MACs have run.
    pub fn margin(&self) -> f64 {
        self.margin
    }
}

/// The slow point whose removal leaves the others closest to a line, if it
/// is an anomaly against that line. Only slow points qualify: a candidate
/// can run far slower than its MACs say, never far faster.
fn anomaly<I: Iterator<Item = Point>>(points: impl Fn() -> I) -> Option<usize> {
    let (point, _) = points()
        .filter_map(|p| {
            let others = || points().filter(move |q| q.id != p.id);
            let line = Line::fit(others())?;
            (line.excess(&p) > ANOMALY).then(|| (p, line.spread(others())))
        })
        .min_by(|(_, a), (_, b)| a.total_cmp(b))?;
    Some(point.id)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    intercept_ms: f64,
    ms_per_mac: f64,
    /// Fitted through at least two different MACs; otherwise a ray from the
    /// origin through the mean, which over-predicts any device whose
    /// latency has a fixed overhead (a safe first guess).
    anchored: bool,
}

impl Line {
    /// Least squares in one pass (Welford's centred sums, exact for MACs in
    /// the billions); the slope is kept non-negative, since more work is
    /// never faster on the same device.
    fn fit(points: impl Iterator<Item = Point>) -> Option<Self> {
        let (mut n, mut mean_x, mut mean_y, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for p in points {
            let (x, y) = (p.macs as f64, f64::from(p.latency_ms));
            n += 1.0;
            let dx = x - mean_x;
            mean_x += dx / n;
            mean_y += (y - mean_y) / n;
            sxx += dx * (x - mean_x);
            sxy += dx * (y - mean_y);
        }
        if n == 0.0 {
            return None;
        }
        if sxx > 0.0 {
            let ms_per_mac = (sxy / sxx).max(0.0);
            Some(Line {
                intercept_ms: mean_y - ms_per_mac * mean_x,
                ms_per_mac,
                anchored: true,
            })
        } else {
            let ms_per_mac = if mean_x > 0.0 { mean_y / mean_x } else { 0.0 };
            let intercept_ms = if mean_x > 0.0 { 0.0 } else { mean_y };
            Some(Line {
                intercept_ms,
                ms_per_mac,
                anchored: false,
            })
        }
    }

    /// The largest deviation of any of `points` from the line.
    fn spread(&self, points: impl Iterator<Item = Point>) -> f64 {
        points.map(|p| self.excess(&p).abs()).fold(0.0, f64::max)
    }

    /// How much slower than the line `p` ran, relative to its measured
    /// latency (negative if faster).
    fn excess(&self, p: &Point) -> f64 {
        let y = f64::from(p.latency_ms);
        (y - (self.intercept_ms + self.ms_per_mac * p.macs as f64)) / y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(samples: &[(u64, f32)]) -> impl Iterator<Item = Point> + '_ {
        samples
            .iter()
            .enumerate()
            .map(|(id, &(macs, latency_ms))| Point {
                id,
                macs,
                latency_ms,
            })
    }

    fn fit(samples: &[(u64, f32)]) -> LatencyModel {
        LatencyModel::fit(|| points(samples)).unwrap()
    }

    #[test]
    fn no_points_no_model() {
        assert_eq!(LatencyModel::fit(|| points(&[])), None);
    }

    #[test]
    fn one_point_is_a_ray_from_the_origin_with_unknown_margin() {
        let m = fit(&[(1_000, 4.0)]);
        assert!((m.predict(3_000) - 12.0).abs() < 1e-9);
        assert!(m.margin().is_infinite());
    }

    #[test]
    fn affine_points_are_fitted_exactly() {
        // 7 ms of overhead plus 2 µs per MAC.
        let samples: [(u64, f32); 4] = [(1_000, 9.0), (2_000, 11.0), (5_000, 17.0), (9_000, 25.0)];
        let m = fit(&samples);
        assert!((m.predict(0) - 7.0).abs() < 1e-6, "{m:?}");
        assert!((m.predict(20_000) - 47.0).abs() < 1e-6, "{m:?}");
        assert!((m.margin() - MIN_MARGIN).abs() < 1e-9);
    }

    #[test]
    fn scattered_points_widen_the_margin() {
        let m = fit(&[(1_000, 10.0), (2_000, 22.0), (3_000, 28.0)]);
        assert!(m.margin() > MIN_MARGIN + 0.03, "{m:?}");
    }

    #[test]
    fn an_anomalous_point_is_left_out() {
        // On the line 1 ms/1000 MACs except the third, twice as slow.
        let samples: [(u64, f32); 5] = [
            (1_000, 1.0),
            (2_000, 2.0),
            (3_000, 6.0),
            (4_000, 4.0),
            (8_000, 8.0),
        ];
        let m = fit(&samples);
        assert!((m.predict(6_000) - 6.0).abs() < 1e-6, "{m:?}");
        assert!((m.margin() - MIN_MARGIN).abs() < 1e-9);
    }

    #[test]
    fn a_fast_point_is_not_an_anomaly() {
        // The third point is half as slow as the line through the others.
        let samples: [(u64, f32); 5] = [
            (1_000, 1.0),
            (2_000, 2.0),
            (3_000, 1.5),
            (4_000, 4.0),
            (8_000, 8.0),
        ];
        let m = fit(&samples);
        assert!(m.margin() > ANOMALY, "{m:?}");
    }

    #[test]
    fn anomalies_need_enough_points_to_be_judged() {
        let samples: [(u64, f32); 3] = [(1_000, 1.0), (3_000, 6.0), (8_000, 8.0)];
        let m = fit(&samples);
        assert!(m.margin() > ANOMALY, "{m:?}");
    }

    #[test]
    fn slope_is_never_negative() {
        let m = fit(&[(1_000, 10.0), (2_000, 8.0)]);
        assert!(m.predict(10_000) >= m.predict(1_000));
        assert!((m.predict(5_000) - 9.0).abs() < 1e-9, "{m:?}");
    }
}
