//! Linear CKA (centred kernel alignment, Kornblith et al. 2019) between two
//! feature matrices of the same images: how much of one representation's
//! geometry the other keeps, in [0, 1], whatever their widths.

use ndarray::{Array2, ArrayView2, Axis};

/// `‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)` of the column-centred features, in f64
/// (sums over thousands of images lose digits in f32). Rows are images.
/// 0 when either matrix is constant.
pub fn linear(x: ArrayView2<'_, f32>, y: ArrayView2<'_, f32>) -> f64 {
    assert_eq!(
        x.nrows(),
        y.nrows(),
        "CKA compares features of the same images"
    );
    let (x, y) = (centred(x), centred(y));
    let cross = frobenius_squared(&y.t().dot(&x));
    let norms = (frobenius_squared(&x.t().dot(&x)) * frobenius_squared(&y.t().dot(&y))).sqrt();
    if norms > 0.0 {
        cross / norms
    } else {
        0.0
    }
}

fn centred(x: ArrayView2<'_, f32>) -> Array2<f64> {
    let x = x.mapv(f64::from);
    let mean = x.mean_axis(Axis(0)).expect("CKA needs at least one image");
    x - mean
}

fn frobenius_squared(m: &Array2<f64>) -> f64 {
    m.iter().map(|v| v * v).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn invariant_to_rotation_and_scale_not_to_information() {
        let x = array![[1.0f32, 0.0], [0.0, 2.0], [3.0, 1.0], [-1.0, 1.0]];
        assert!((linear(x.view(), x.view()) - 1.0).abs() < 1e-12);
        // A rotation and a scale keep the geometry.
        let rotated = x.dot(&array![[0.0f32, 3.0], [-3.0, 0.0]]);
        assert!((linear(x.view(), rotated.view()) - 1.0).abs() < 1e-6);
        // Dropping a column loses part of it (width 2 against width 1).
        let first = x.slice(ndarray::s![.., 0..1]).to_owned();
        let cka = linear(x.view(), first.view());
        assert!(cka > 0.1 && cka < 0.99, "{cka}");
        // Constant features carry nothing.
        let constant = ndarray::Array2::<f32>::ones((4, 3));
        assert_eq!(linear(x.view(), constant.view()), 0.0);
    }
}
