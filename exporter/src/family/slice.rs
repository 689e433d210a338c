//! How a family cuts one teacher tensor for one width: ranges of its 2-D
//! view and a scale, streamed run by run so slices are never materialised.

use std::ops::Range;

/// Row ranges × column ranges of a tensor's 2-D view, times a scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    view_cols: usize,
    rows: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
    scale: f32,
    shape: Vec<usize>,
}

impl Cut {
    /// `rows × cols` of the tensor seen as rows of `view_cols` elements,
    /// times `scale`, shaped `shape`.
    pub fn matrix(
        view_cols: usize,
        rows: Vec<Range<usize>>,
        cols: Vec<Range<usize>>,
        scale: f32,
        shape: Vec<usize>,
    ) -> Cut {
        Cut {
            view_cols,
            rows,
            cols,
            scale,
            shape,
        }
    }

    /// The first `n` elements of a vector.
    #[allow(clippy::single_range_in_vec_init)]
    pub fn prefix(n: usize) -> Cut {
        Cut {
            view_cols: 0,
            rows: vec![0..1],
            cols: vec![0..n],
            scale: 1.0,
            shape: vec![n],
        }
    }

    /// The first `n` per-channel parameters of an `NCHW` layer, shaped
    /// `[n, 1, 1]` to broadcast over the map.
    pub fn channels(n: usize) -> Cut {
        Cut {
            shape: vec![n, 1, 1],
            ..Cut::prefix(n)
        }
    }

    /// The whole tensor of `shape`, unscaled (layers no width touches).
    pub fn whole(shape: &[usize]) -> Cut {
        Cut {
            shape: shape.to_vec(),
            ..Cut::prefix(shape.iter().product())
        }
    }

    /// Contiguous runs of the tensor's elements, in output order.
    pub fn runs(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.rows
            .iter()
            .flat_map(|r| r.clone())
            .flat_map(move |row| {
                self.cols.iter().map(move |col| {
                    row * self.view_cols + col.start..row * self.view_cols + col.end
                })
            })
    }

    /// The factor every element is multiplied by (a = D/w, or 1).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The sliced tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements in the sliced tensor.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One teacher tensor of a width slice: its canonical name and its cut.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorCut {
    pub name: String,
    pub cut: Cut,
}

/// A tensor a family computes from several teacher tensors, stored as is.
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Computed {
    pub fn new(name: &str, shape: Vec<usize>, data: Vec<f32>) -> Computed {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}");
        Computed {
            name: name.to_owned(),
            shape,
            data,
        }
    }
}
