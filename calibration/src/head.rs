//! One task head for every sub-network, in closed form.
//!
//! A user trains one linear head on the teacher's features ([`read_head`], or
//! [`fit_head`] on labelled features). [`Transfer::fit`] maps a sub-network's
//! `cls_token` into the teacher's feature space in closed form (a [`Route`]:
//! plain ridge least squares, or Feature Distillation's whitened targets
//! with KDEP's SVD-truncated targets when the sub-network is narrower), and
//! [`Transfer::fold`] folds map and head into one [`Affine`] layer the
//! exporter appends to the graph. [`truncated`] is the naive alternative it
//! is measured against ([`compare`]); [`transfer_heads`] does it all for a
//! calibrated bundle.
//!
//! Features come in as `[images, width]` f32 views; everything is computed
//! in f64.

mod file;
mod quality;
mod ridge;
mod subnets;
mod transfer;

use ndarray::{Array1, Array2, ArrayView2, Axis};

pub use file::read_head;
pub use quality::{compare, predictions, quality, Comparison, Quality, Split};
pub use ridge::{fit_head, Labels, Ridge};
pub use subnets::{transfer_heads, HeadOptions, HeadSource, Heads, SubnetHead};
pub use transfer::{truncated, Route, Transfer};

/// An affine layer `y = x·Wᵀ + b`: a task head, a feature map, or both
/// folded into one.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    /// `[outputs, inputs]`, as a linear layer stores it.
    weight: Array2<f64>,
    /// `[outputs]`.
    bias: Array1<f64>,
}

impl Affine {
    /// `weight` `[outputs, inputs]` and `bias` `[outputs]`; `None` when the
    /// bias length is not the weight's row count or a value is not finite.
    pub fn new(weight: Array2<f64>, bias: Array1<f64>) -> Option<Affine> {
        let finite = weight.iter().chain(&bias).all(|v| v.is_finite());
        (bias.len() == weight.nrows() && finite).then_some(Affine { weight, bias })
    }

    /// The width of the features it takes.
    pub fn inputs(&self) -> usize {
        self.weight.ncols()
    }

    /// The number of values it gives (classes, for a head).
    pub fn outputs(&self) -> usize {
        self.weight.nrows()
    }

    pub fn weight(&self) -> &Array2<f64> {
        &self.weight
    }

    pub fn bias(&self) -> &Array1<f64> {
        &self.bias
    }

    /// `x·Wᵀ + b` for each row of `x` (`[images, inputs]`).
    pub fn apply(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f64>, HeadError> {
        if x.ncols() != self.inputs() {
            return Err(HeadError::data(
                "applying a head",
                format!(
                    "the features are {} wide, the layer takes {}",
                    x.ncols(),
                    self.inputs()
                ),
            ));
        }
        Ok(x.mapv(f64::from).dot(&self.weight.t()) + &self.bias)
    }

    /// `next` applied after `self`, as one layer.
    ///
    /// # Panics
    /// If `next` does not take `self`'s outputs.
    fn then(&self, next: &Affine) -> Affine {
        assert_eq!(next.inputs(), self.outputs(), "composed widths");
        Affine {
            weight: next.weight.dot(&self.weight),
            bias: next.weight.dot(&self.bias) + &next.bias,
        }
    }

    /// The first `w` input columns: the layer seen by a `w`-wide prefix of
    /// its features.
    fn first_inputs(&self, w: usize) -> Affine {
        Affine {
            weight: self.weight.slice(ndarray::s![.., ..w]).to_owned(),
            bias: self.bias.clone(),
        }
    }
}

/// Why a head could not be read, fitted or transferred.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("reading head file {path}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("head file {path}: {problem}")]
    Format {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error(
        "head file {path} takes {found} features, but the teacher's features are {expected} wide"
    )]
    Width {
        path: std::path::PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("{what}: {problem}")]
    Data { what: &'static str, problem: String },
}

impl HeadError {
    fn data(what: &'static str, problem: impl Into<String>) -> HeadError {
        HeadError::Data {
            what,
            problem: problem.into(),
        }
    }
}

/// Rows `rows` of `x`.
fn rows<T: Clone>(x: ArrayView2<'_, T>, rows: &[usize]) -> Array2<T> {
    x.select(Axis(0), rows)
}
