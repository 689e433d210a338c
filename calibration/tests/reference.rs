//! k-NN and CKA against tools/knn_reference.py (numpy), on the seeded
//! feature set it wrote with its own results.

use ndarray::Array2;
use serde_json::Value;
use tailor_calibration::cka;
use tailor_calibration::knn::Knn;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/knn_cka_golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn matrix(v: &Value) -> Array2<f32> {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let cols = rows[0].len();
    Array2::from_shape_vec((rows.len(), cols), rows.concat()).unwrap()
}

fn labels(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn knn(g: &Value, k: usize) -> f64 {
    let knn = Knn { k, ..Knn::DINO };
    knn.top1(
        matrix(&g["train"]).view(),
        &labels(&g["train_labels"]),
        matrix(&g["test"]).view(),
        &labels(&g["test_labels"]),
        g["classes"].as_u64().unwrap() as usize,
    )
}

#[test]
fn knn_top1_matches_numpy_within_half_a_point() {
    // 50 test images: one misclassification moves accuracy by 2 points, so
    // a wrong k, temperature, normalisation or vote is seen.
    let g = golden();
    for (k, key) in [(20, "knn_top1"), (5, "knn_top1_k5")] {
        let want = g[key].as_f64().unwrap();
        let got = knn(&g, k);
        assert!((got - want).abs() <= 0.5, "k={k}: {got} vs numpy {want}");
    }
    assert_eq!(
        Knn::DINO,
        Knn {
            k: 20,
            temperature: 0.07
        }
    );
}

#[test]
fn linear_cka_matches_numpy_across_widths() {
    let g = golden();
    let (train, narrow) = (matrix(&g["train"]), matrix(&g["narrow"]));
    assert_eq!((train.ncols(), narrow.ncols()), (6, 4));
    let want = g["cka_train_narrow"].as_f64().unwrap();
    let got = cka::linear(train.view(), narrow.view());
    assert!((got - want).abs() < 1e-6, "{got} vs numpy {want}");
    let symmetric = cka::linear(narrow.view(), train.view());
    assert!((symmetric - want).abs() < 1e-6, "{symmetric}");
    assert!((cka::linear(train.view(), train.view()) - 1.0).abs() < 1e-9);
}
