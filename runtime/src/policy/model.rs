//! The device's latency curve as the policy sees it: a non-negative sum of a
//! fixed cost, a per-MAC cost, a per-block cost and a per-block-channel cost
//! (the element-wise work MACs do not count), fitted to the candidates
//! measured so far, with a margin saying how far off it has been.
//!
//! Measured on the bench's 90-candidate ViT grid (tract, 2 cores, median p50 of 3 passes, which agree to 4.2%), leave-one-out relative error, mean / max:
//! `a + b·MACs` 15.9% / 46.6%, `+ c·depth` 10.3% / 24.1%, `+ d·depth·width` 8.2% / 17.8%; fitted to 5 random points, mean error on the rest 21.6% / 13.4% / 11.3%.

use heapless::Vec;

/// The margin's floor: a measured latency is a percentile of a few runs,
/// never exact, even when the driver reports no spread.
const MIN_MARGIN: f64 = 0.02;
/// A point this much slower (relative) than the fit through the others is
/// an anomaly of that one candidate (a slow kernel, a cache cliff), not a
/// trait of the device, and is left out of the fit. Noise of a few percent
/// never is.
const ANOMALY: f64 = 0.25;
/// The most points left out as anomalies; the rest of the curve must hold.
const MAX_ANOMALIES: usize = 8;
/// Anomalies are only judged against a fit through at least this many points.
const MIN_POINTS_TO_JUDGE: usize = 3;
/// Features: the fixed cost, MACs, depth, depth · width.
const FEATURES: usize = 4;
/// Feature subsets of more than this many features need a point more than
/// features, so the residuals can show whether they hold.
const EXACT_FEATURES: u32 = 2;
/// Features this collinear over the points (determinant of their
/// correlation matrix) cannot be told apart.
const COLLINEAR: f64 = 1e-6;

/// What the model knows of a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shape {
    pub macs: u64,
    pub depth: u32,
    pub width: u32,
}

impl Shape {
    fn features(&self) -> [f64; FEATURES] {
        let depth = f64::from(self.depth);
        [1.0, self.macs as f64, depth, depth * f64::from(self.width)]
    }
}

/// A candidate that ran: its shape, its measured latency and how uncertain
/// that latency is (relative).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    /// The candidate's index, to name it as an anomaly.
    pub id: usize,
    pub shape: Shape,
    pub latency_ms: f32,
    pub spread: f32,
}

/// The fitted curve and the relative error to expect from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LatencyModel {
    fit: Fit,
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
            let fit = Fit::new(kept)?;
            let margin = if fit.anchored {
                let spread = kept().map(|p| f64::from(p.spread)).fold(0.0, f64::max);
                MIN_MARGIN.max(spread) + fit.residual(kept())
            } else {
                f64::INFINITY
            };
            return Some(LatencyModel { fit, margin });
        }
    }

    /// The predicted latency of a candidate of this shape.
    pub fn predict(&self, shape: &Shape) -> f64 {
        self.fit.predict(shape)
    }

    /// The relative error to expect from [`Self::predict`]: the largest
    /// residual plus the points' largest spread (at least [`MIN_MARGIN`]);
    /// infinite until two candidates of different shapes have run.
    pub fn margin(&self) -> f64 {
        self.margin
    }
}

/// The slow point whose removal leaves the others closest to a fit, if it
/// is an anomaly against that fit. Only slow points qualify: a candidate
/// can run far slower than its shape says, never far faster.
fn anomaly<I: Iterator<Item = Point>>(points: impl Fn() -> I) -> Option<usize> {
    let (point, _) = points()
        .filter_map(|p| {
            let others = || points().filter(move |q| q.id != p.id);
            let fit = Fit::new(others)?;
            (fit.excess(&p) > ANOMALY).then(|| (p, fit.residual(others())))
        })
        .min_by(|(_, a), (_, b)| a.total_cmp(b))?;
    Some(point.id)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Fit {
    /// Milliseconds per unit of each feature divided by its scale.
    coefficients: [f64; FEATURES],
    /// Each feature's mean over the points (1 where that is 0), so the
    /// normal equations stay well-conditioned with MACs in the billions.
    scale: [f64; FEATURES],
    /// Determined by at least two points; otherwise a ray from the origin
    /// through the mean MACs, which over-predicts any device whose latency
    /// has a fixed overhead (a safe first guess).
    anchored: bool,
}

impl Fit {
    /// Non-negative least squares in relative error (each point weighted by
    /// 1/latency²): the least-squares fit of every subset of the features
    /// the points can determine, keeping the best with no negative
    /// coefficient (more work is never faster on one device), and among
    /// equals the one with fewer features.
    fn new<I: Iterator<Item = Point>>(points: impl Fn() -> I) -> Option<Self> {
        let (mut n, mut scale) = (0u32, [0.0; FEATURES]);
        for p in points() {
            n += 1;
            for (s, x) in scale.iter_mut().zip(p.shape.features()) {
                *s += x;
            }
        }
        if n == 0 {
            return None;
        }
        for s in &mut scale {
            *s = if *s > 0.0 { *s / f64::from(n) } else { 1.0 };
        }
        // Normal equations of the weighted, scaled design.
        let (mut gram, mut rhs) = ([[0.0; FEATURES]; FEATURES], [0.0; FEATURES]);
        for p in points() {
            let x = scaled(&p.shape, &scale);
            let y = f64::from(p.latency_ms);
            let w = 1.0 / (y * y);
            for i in 0..FEATURES {
                rhs[i] += w * x[i] * y;
                for j in 0..FEATURES {
                    gram[i][j] += w * x[i] * x[j];
                }
            }
        }
        let mut best: Option<(Fit, f64)> = None;
        let mut anchored = false;
        let by_size = (1..=FEATURES as u32)
            .flat_map(|size| (1u32..1 << FEATURES).filter(move |s| s.count_ones() == size));
        for subset in by_size {
            let size = subset.count_ones();
            if size > EXACT_FEATURES && n <= size {
                continue;
            }
            let Some(coefficients) = solve(&gram, &rhs, subset) else {
                continue;
            };
            anchored |= size >= 2;
            if coefficients.iter().any(|&c| c < 0.0) {
                continue;
            }
            let fit = Fit {
                coefficients,
                scale,
                anchored: true,
            };
            let error: f64 = points()
                .map(|p| {
                    let e = fit.excess(&p);
                    e * e
                })
                .sum();
            if best.is_none_or(|(_, e)| error < e * (1.0 - 1e-9) - 1e-15) {
                best = Some((fit, error));
            }
        }
        match best {
            Some((fit, _)) if anchored => Some(fit),
            _ => {
                // Scaled MACs average 1: the ray through the mean latency.
                let mean_ms = points().map(|p| f64::from(p.latency_ms)).sum::<f64>() / f64::from(n);
                let mut coefficients = [0.0; FEATURES];
                coefficients[1] = mean_ms;
                Some(Fit {
                    coefficients,
                    scale,
                    anchored: false,
                })
            }
        }
    }

    fn predict(&self, shape: &Shape) -> f64 {
        let x = scaled(shape, &self.scale);
        self.coefficients.iter().zip(x).map(|(c, x)| c * x).sum()
    }

    /// The largest relative deviation of any of `points` from the fit.
    fn residual(&self, points: impl Iterator<Item = Point>) -> f64 {
        points.map(|p| self.excess(&p).abs()).fold(0.0, f64::max)
    }

    /// How much slower than the fit `p` ran, relative to its measured
    /// latency (negative if faster).
    fn excess(&self, p: &Point) -> f64 {
        let y = f64::from(p.latency_ms);
        (y - self.predict(&p.shape)) / y
    }
}

fn scaled(shape: &Shape, scale: &[f64; FEATURES]) -> [f64; FEATURES] {
    let mut x = shape.features();
    for (x, s) in x.iter_mut().zip(scale) {
        *x /= s;
    }
    x
}

/// The least-squares coefficients of the features in `subset` (a bit mask),
/// zero for the others; `None` if the points cannot tell those features
/// apart: the normal equations' determinant over the product of their
/// diagonal (the determinant of the features' correlation matrix, whatever
/// their units) is below [`COLLINEAR`]. Gaussian elimination with partial
/// pivoting.
fn solve(
    gram: &[[f64; FEATURES]; FEATURES],
    rhs: &[f64; FEATURES],
    subset: u32,
) -> Option<[f64; FEATURES]> {
    let mut index = [0usize; FEATURES];
    let mut k = 0;
    for (i, slot) in (0..FEATURES)
        .filter(|i| subset & (1 << i) != 0)
        .zip(&mut index)
    {
        *slot = i;
        k += 1;
    }
    // The augmented matrix [G | r] of the subset.
    let mut m = [[0.0; FEATURES + 1]; FEATURES];
    let mut diagonal = 1.0;
    for a in 0..k {
        for b in 0..k {
            m[a][b] = gram[index[a]][index[b]];
        }
        m[a][k] = rhs[index[a]];
        diagonal *= m[a][a];
    }
    if diagonal <= 0.0 {
        return None;
    }
    let mut det = 1.0;
    for col in 0..k {
        let pivot = (col..k).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        m.swap(col, pivot);
        if m[col][col] == 0.0 {
            return None;
        }
        det *= m[col][col];
        let pivot_row = m[col];
        for row in &mut m[col + 1..k] {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..=k].iter_mut().zip(&pivot_row[col..=k]) {
                *x -= f * p;
            }
        }
    }
    if (det / diagonal).abs() < COLLINEAR {
        return None;
    }
    let mut coefficients = [0.0; FEATURES];
    for a in (0..k).rev() {
        let tail: f64 = (a + 1..k).map(|b| m[a][b] * coefficients[index[b]]).sum();
        coefficients[index[a]] = (m[a][k] - tail) / m[a][a];
    }
    Some(coefficients)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points of depth 1, width 1 from `(macs, latency_ms)`.
    fn points(samples: &[(u64, f32)]) -> impl Iterator<Item = Point> + '_ {
        samples
            .iter()
            .enumerate()
            .map(|(id, &(macs, latency_ms))| Point {
                id,
                shape: at(macs),
                latency_ms,
                spread: 0.0,
            })
    }

    fn fit(samples: &[(u64, f32)]) -> LatencyModel {
        LatencyModel::fit(|| points(samples)).unwrap()
    }

    fn at(macs: u64) -> Shape {
        Shape {
            macs,
            depth: 1,
            width: 1,
        }
    }

    #[test]
    fn no_points_no_model() {
        assert_eq!(LatencyModel::fit(|| points(&[])), None);
    }

    #[test]
    fn one_point_is_a_ray_from_the_origin_with_unknown_margin() {
        let m = fit(&[(1_000, 4.0)]);
        assert!((m.predict(&at(3_000)) - 12.0).abs() < 1e-9, "{m:?}");
        assert!(m.margin().is_infinite());
    }

    #[test]
    fn affine_points_are_fitted_exactly() {
        // 7 ms of overhead plus 2 µs per MAC.
        let samples: [(u64, f32); 4] = [(1_000, 9.0), (2_000, 11.0), (5_000, 17.0), (9_000, 25.0)];
        let m = fit(&samples);
        assert!((m.predict(&at(0)) - 7.0).abs() < 1e-6, "{m:?}");
        assert!((m.predict(&at(20_000)) - 47.0).abs() < 1e-6, "{m:?}");
        assert!((m.margin() - MIN_MARGIN).abs() < 1e-9);
    }

    #[test]
    fn per_block_cost_is_fitted_apart_from_macs() {
        // 0.5 ms per block plus 1 ms per 1000 MACs, no fixed cost: MACs
        // alone cannot say why (2 blocks, 3000 MACs) is faster than
        // (6 blocks, 2000 MACs).
        let points = [
            (2, 1_000, 2.0),
            (6, 2_000, 5.0),
            (2, 3_000, 4.0),
            (8, 5_000, 9.0),
        ];
        let m = LatencyModel::fit(|| {
            points
                .iter()
                .enumerate()
                .map(|(id, &(depth, macs, latency_ms))| Point {
                    id,
                    shape: Shape {
                        macs,
                        depth,
                        width: 3,
                    },
                    latency_ms,
                    spread: 0.0,
                })
        })
        .unwrap();
        let shape = Shape {
            macs: 10_000,
            depth: 4,
            width: 3,
        };
        assert!((m.predict(&shape) - 12.0).abs() < 1e-6, "{m:?}");
        assert!((m.margin() - MIN_MARGIN).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn features_the_points_cannot_tell_apart_fall_back_to_a_line() {
        // Depth and MACs grow together: only the line in MACs is determined.
        let samples: [(u64, f32); 5] = [
            (1_000, 3.0),
            (2_000, 5.0),
            (3_000, 7.0),
            (4_000, 9.0),
            (5_000, 11.0),
        ];
        let m = LatencyModel::fit(|| {
            samples
                .iter()
                .enumerate()
                .map(|(id, &(macs, latency_ms))| Point {
                    id,
                    shape: Shape {
                        macs,
                        depth: (macs / 1_000) as u32,
                        width: 1,
                    },
                    latency_ms,
                    spread: 0.0,
                })
        })
        .unwrap();
        let beyond = Shape {
            macs: 10_000,
            depth: 10,
            width: 1,
        };
        assert!((m.predict(&beyond) - 21.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn measured_spread_widens_the_margin() {
        let samples: [(u64, f32); 3] = [(1_000, 9.0), (2_000, 11.0), (5_000, 17.0)];
        let spread = |s: f32| {
            LatencyModel::fit(|| points(&samples).map(move |p| Point { spread: s, ..p }))
                .unwrap()
                .margin()
        };
        assert!((spread(0.0) - MIN_MARGIN).abs() < 1e-9);
        assert!((spread(0.1) - 0.1).abs() < 1e-6);
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
        assert!((m.predict(&at(6_000)) - 6.0).abs() < 1e-6, "{m:?}");
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
    fn more_work_is_never_predicted_faster() {
        let m = fit(&[(1_000, 10.0), (2_000, 8.0)]);
        assert!(m.predict(&at(10_000)) >= m.predict(&at(1_000)), "{m:?}");
        // The best non-negative fit: a constant, in relative error.
        assert!((8.0..=10.0).contains(&m.predict(&at(5_000))), "{m:?}");
    }
}
