//! Ridge least squares with an unpenalised bias, and the head fitted with it.

use nalgebra::DMatrix;
use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::{Affine, HeadError};

/// The ridge penalty, relative to the features' scale.
///
/// The fit minimises `‖X·Bᵀ + c − Y‖² + λ‖B‖²` with
/// `λ = alpha · tr(XcᵀXc) / p` (`Xc`: the centred features, `p` columns):
/// the mean eigenvalue of the centred Gram matrix, so the same `alpha` shrinks
/// features in any units alike. The default `1e-3` barely biases a
/// well-conditioned fit yet keeps rank-deficient ones solvable (LayerNorm
/// outputs sum to zero, so their Gram matrix is singular).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ridge {
    alpha: f64,
}

impl Ridge {
    /// `None` unless `alpha` is positive and finite.
    pub fn new(alpha: f64) -> Option<Ridge> {
        (alpha > 0.0 && alpha.is_finite()).then_some(Ridge { alpha })
    }

    pub fn alpha(self) -> f64 {
        self.alpha
    }

    /// The affine map from `x` `[n, p]` to `y` `[n, q]` minimising the
    /// penalised squared error, the bias unpenalised.
    pub(super) fn fit(self, x: &Array2<f64>, y: &Array2<f64>) -> Result<Affine, HeadError> {
        let (n, p) = x.dim();
        if y.nrows() != n {
            return Err(HeadError::data(
                "ridge fit",
                format!("{n} feature rows but {} target rows", y.nrows()),
            ));
        }
        if n < 2 {
            return Err(HeadError::data(
                "ridge fit",
                format!("needs at least 2 images, got {n}"),
            ));
        }
        let x_mean = mean_row(x);
        let y_mean = mean_row(y);
        let xc = x - &x_mean;
        let mut gram = to_matrix(&xc.t().dot(&xc));
        let lambda = self.alpha * gram.trace() / p as f64;
        if !(lambda > 0.0 && lambda.is_finite()) {
            return Err(HeadError::data(
                "ridge fit",
                "the features are the same for every image (or not finite)",
            ));
        }
        for i in 0..p {
            gram[(i, i)] += lambda;
        }
        let solved = gram
            .cholesky()
            .ok_or_else(|| HeadError::data("ridge fit", "the normal equations are not solvable"))?
            .solve(&to_matrix(&xc.t().dot(&(y - &y_mean))));
        // `solved` is [p, q]; the layer stores [q, p].
        let weight = from_matrix(&solved.transpose());
        let bias = &y_mean - &weight.dot(&x_mean);
        Affine::new(weight, bias)
            .ok_or_else(|| HeadError::data("ridge fit", "the solution is not finite"))
    }
}

impl Default for Ridge {
    fn default() -> Ridge {
        Ridge { alpha: 1e-3 }
    }
}

/// Class labels `0..classes` of the calibration images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    values: Vec<usize>,
    classes: usize,
}

impl Labels {
    /// Labels as datasets store them; the classes are `0..=max`.
    pub fn new(values: &[i64]) -> Result<Labels, HeadError> {
        let values = values
            .iter()
            .map(|&v| usize::try_from(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| HeadError::data("labels", "a label is negative"))?;
        let classes = values.iter().max().map_or(0, |m| m + 1);
        if classes < 2 {
            return Err(HeadError::data(
                "labels",
                "a head needs at least two classes among the labels",
            ));
        }
        Ok(Labels { values, classes })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn as_slice(&self) -> &[usize] {
        &self.values
    }

    /// The labels of images `rows`, keeping every class.
    pub fn rows(&self, rows: &[usize]) -> Result<Labels, HeadError> {
        let values = rows
            .iter()
            .map(|&r| self.values.get(r).copied())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                HeadError::data(
                    "labels",
                    format!("an image index is past the {} labels", self.values.len()),
                )
            })?;
        Ok(Labels {
            values,
            classes: self.classes,
        })
    }
}

/// A linear head on `features` `[images, D]`: ridge regression onto one-hot
/// labels, whose argmax is the predicted class.
pub fn fit_head(
    features: ArrayView2<'_, f32>,
    labels: &Labels,
    ridge: Ridge,
) -> Result<Affine, HeadError> {
    if features.nrows() != labels.values.len() {
        return Err(HeadError::data(
            "fitting a head",
            format!(
                "{} feature rows but {} labels",
                features.nrows(),
                labels.values.len()
            ),
        ));
    }
    let mut one_hot = Array2::zeros((labels.values.len(), labels.classes));
    for (row, &class) in labels.values.iter().enumerate() {
        one_hot[[row, class]] = 1.0;
    }
    ridge.fit(&features.mapv(f64::from), &one_hot)
}

/// The column means of `x`.
pub(super) fn mean_row(x: &Array2<f64>) -> Array1<f64> {
    x.mean_axis(Axis(0)).expect("at least one row")
}

/// Products stay in ndarray (its matrixmultiply kernels); nalgebra only
/// factors the small `[p, p]` matrices.
pub(super) fn to_matrix(x: &Array2<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(x.nrows(), x.ncols(), |i, j| x[[i, j]])
}

pub(super) fn from_matrix(m: &DMatrix<f64>) -> Array2<f64> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)])
}

#[cfg(test)]
mod tests {
    use ndarray::{array, Array2};

    use super::*;

    /// Deterministic, linearly independent features: a different
    /// frequency per column.
    fn features(n: usize, p: usize) -> Array2<f64> {
        Array2::from_shape_fn((n, p), |(i, j)| {
            (0.37 * (i * (j + 1) * (j + 1)) as f64).sin() + j as f64
        })
    }

    #[test]
    fn recovers_an_exact_affine_map_with_a_tiny_penalty() {
        let x = features(20, 3);
        let b = array![[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]];
        let c = array![4.0, -1.0];
        let y = x.dot(&b.t()) + &c;
        let fit = Ridge::new(1e-12).unwrap().fit(&x, &y).unwrap();
        assert!((fit.weight() - &b).iter().all(|d| d.abs() < 1e-6));
        assert!((fit.bias() - &c).iter().all(|d| d.abs() < 1e-6));
    }

    #[test]
    fn the_penalty_follows_the_features_scale() {
        // λ grows with the square of the features, so scaling the features
        // by 10 scales the fitted weights by exactly 1/10, bias unchanged.
        let x = features(12, 4);
        let y = features(12, 2).mapv(|v| v * v);
        let ridge = Ridge::default();
        let small = ridge.fit(&x, &y).unwrap();
        let large = ridge.fit(&x.mapv(|v| 10.0 * v), &y).unwrap();
        let scaled = large.weight().mapv(|v| 10.0 * v);
        assert!((small.weight() - &scaled).iter().all(|d| d.abs() < 1e-9));
        assert!((small.bias() - large.bias()).iter().all(|d| d.abs() < 1e-9));
        // The penalty is not negligible at the default: a tiny one fits differently.
        let loose = Ridge::new(1e-12).unwrap().fit(&x, &y).unwrap();
        assert!((small.weight() - loose.weight())
            .iter()
            .any(|d| d.abs() > 1e-6));
    }

    #[test]
    fn constant_features_and_bad_penalties_are_refused() {
        let x = Array2::from_elem((5, 2), 3.0);
        let y = features(5, 1);
        assert!(Ridge::default().fit(&x, &y).is_err());
        assert!(Ridge::new(0.0).is_none() && Ridge::new(f64::NAN).is_none());
    }
}
