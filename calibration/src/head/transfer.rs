//! The closed-form map from a sub-network's features to the teacher's, by
//! one of two [`Route`]s.
//!
//! [`Route::Plain`] is ridge least squares from the sub-network's features
//! straight onto the teacher's. [`Route::LnKdep`] is the route the issue
//! prescribed: targets, as in Feature Distillation, are the teacher features
//! `t` whitened by a LayerNorm without affine, `z = (t − m·1) / s` with the
//! image's own mean `m` and deviation `s`. When the sub-network is narrower (`w < D`) the
//! centred targets are cut, as in KDEP, to their top `w` principal directions
//! `V` (`[D, w]`, from the SVD of the centred targets) and the fit aims at
//! `(z − z̄)·V`; the prediction is lifted back by `p·Vᵀ + z̄`. The map itself
//! is ridge least squares from the sub-network's features, with a bias.
//!
//! The head was trained on raw `t`, and LayerNorm is not affine: undoing it
//! exactly, `t = m·1 + s·z`, needs the image's own `m` and `s`, which the
//! sub-network's prediction does not carry. The best affine stand-in, in
//! least squares over the calibration images, is the ridge regression
//! `t ≈ z·Gᵀ + g` fitted on the teacher's own (`z`, `t`) pairs: when `m` and
//! `s` are the same for every image it is exactly `t = m·1 + s·z`, and
//! otherwise it keeps whatever part of `m` and `s·z` is linear in `z`. Every
//! step is affine, so sub-network features → `z` → `t` → logits folds into one
//! layer. `tools/head_reference.py ablation` compares the routes on held-out
//! images; plain least squares wins on the trained example
//! (docs/calibration.md, "Head transfer"), so it is the default.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, ArrayView2, Axis};

use super::ridge::{from_matrix, mean_row, to_matrix};
use super::{Affine, HeadError, Ridge};

/// LayerNorm's epsilon (PyTorch's default), so a constant feature vector
/// does not divide by zero.
const LAYER_NORM_EPS: f64 = 1e-5;

/// How [`Transfer::fit`] maps a sub-network's features to the teacher's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// Ridge least squares onto the raw teacher features.
    #[default]
    Plain,
    /// LayerNorm-whitened targets (FD), cut to the top `w` principal
    /// directions when narrower (KDEP), lifted back by a fitted inverse.
    LnKdep,
}

impl Route {
    const ALL: [Route; 2] = [Route::Plain, Route::LnKdep];

    /// The name on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Route::Plain => "plain",
            Route::LnKdep => "ln-kdep",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Route {
    type Err = String;

    fn from_str(s: &str) -> Result<Route, String> {
        Route::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown transfer route `{s}`: expected plain or ln-kdep"))
    }
}

/// A fitted affine map from a sub-network's features `[w]` to the teacher's
/// feature space `[D]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    map: Affine,
}

impl Transfer {
    /// Fits the map by `route` on the same images seen by the sub-network
    /// (`sub`, `[images, w]`) and the teacher (`teacher`, `[images, D]`).
    pub fn fit(
        sub: ArrayView2<'_, f32>,
        teacher: ArrayView2<'_, f32>,
        route: Route,
        ridge: Ridge,
    ) -> Result<Transfer, HeadError> {
        if sub.nrows() != teacher.nrows() {
            return Err(HeadError::data(
                "head transfer",
                format!(
                    "{} sub-network feature rows but {} teacher rows",
                    sub.nrows(),
                    teacher.nrows()
                ),
            ));
        }
        let s = sub.mapv(f64::from);
        let t = teacher.mapv(f64::from);
        if route == Route::Plain {
            return Ok(Transfer {
                map: ridge.fit(&s, &t)?,
            });
        }
        let z = layer_norm(&t);
        let to_teacher = ridge.fit(&z, &t)?;
        let to_z = if s.ncols() < t.ncols() {
            let z_mean = mean_row(&z);
            let v = principal_directions(&(&z - &z_mean), s.ncols());
            let fit = ridge.fit(&s, &(&z - &z_mean).dot(&v))?;
            let lift = Affine::new(v, z_mean).ok_or_else(|| {
                HeadError::data("head transfer", "the teacher's features are not finite")
            })?;
            fit.then(&lift)
        } else {
            ridge.fit(&s, &z)?
        };
        Ok(Transfer {
            map: to_z.then(&to_teacher),
        })
    }

    /// The map, `[D, w]`.
    pub fn map(&self) -> &Affine {
        &self.map
    }

    /// `head` (on teacher features) applied after the map: one layer from the
    /// sub-network's features to the head's outputs.
    pub fn fold(&self, head: &Affine) -> Result<Affine, HeadError> {
        if head.inputs() != self.map.outputs() {
            return Err(HeadError::data(
                "head transfer",
                format!(
                    "the head takes {} features, but the teacher's features are {} wide",
                    head.inputs(),
                    self.map.outputs()
                ),
            ));
        }
        Ok(self.map.then(head))
    }
}

/// The naive transfer: the teacher's head cut to the sub-network's `w`
/// features (`W[:, :w]`, `b`), as width slicing keeps the first channels.
pub fn truncated(head: &Affine, w: usize) -> Result<Affine, HeadError> {
    if w > head.inputs() {
        return Err(HeadError::data(
            "truncating the head",
            format!(
                "the sub-network is {w} wide, the head takes {} features",
                head.inputs()
            ),
        ));
    }
    Ok(head.first_inputs(w))
}

/// Each row of `t` minus its mean, over its deviation (no affine).
fn layer_norm(t: &Array2<f64>) -> Array2<f64> {
    let mut z = t.clone();
    for mut row in z.axis_iter_mut(Axis(0)) {
        let mean = row.mean().expect("a non-empty row");
        let var = row.mapv(|v| (v - mean).powi(2)).mean().expect("non-empty");
        let scale = (var + LAYER_NORM_EPS).sqrt();
        row.mapv_inplace(|v| (v - mean) / scale);
    }
    z
}

/// The top `k` right singular vectors of `centred` (`[n, D]`), as `[D, k]`
/// columns: eigenvectors of its Gram matrix by decreasing eigenvalue.
fn principal_directions(centred: &Array2<f64>, k: usize) -> Array2<f64> {
    let eigen = to_matrix(&centred.t().dot(centred)).symmetric_eigen();
    let mut order: Vec<usize> = (0..eigen.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let all = from_matrix(&eigen.eigenvectors);
    all.select(Axis(1), &order[..k])
}
