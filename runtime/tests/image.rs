//! Preprocessing against an independent golden: `runtime::image` on real
//! photographs against Pillow's resize, torchvision's crop and numpy's
//! normalisation (tools/preprocess_reference.py).
#![cfg(feature = "std")]

mod photos;

use ndarray::{Array4, Zip};
use tailor_runtime::image::load_png;

/// Both sides compute the same bilinear weights, the runtime in float32,
/// Pillow in double on float32 planes: they differ by float32 rounding,
/// at most 7.2e-7 here (3 ulps of values near 2). The bugs this guards
/// against move values by whole grey levels (1 / 255 / 0.229 ≈ 0.017
/// normalised) and more: a crop one pixel off moves a photograph's edges
/// by tens of them.
const TOLERANCE: f32 = 1e-5;

fn max_diff(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    Zip::from(a)
        .and(b)
        .fold(0.0, |m, x, y| f32::max(m, (x - y).abs()))
}

#[test]
fn photographs_preprocess_as_pillow_and_torchvision_do() {
    for name in photos::NAMES {
        let got = load_png(&photos::png(name), photos::SIDE).unwrap();
        let want = photos::expected(name);
        // Fails on mean and std swapped, BGR for RGB, the crop off centre
        // by a pixel, HWC read as CHW, the long side rounded instead of
        // truncated, the crop offset rounded half up, an antialiasing
        // filter or nearest-neighbour sampling.
        let diff = max_diff(&got, &want);
        assert!(diff <= TOLERANCE, "{name}: off by {diff}");
    }
}

#[test]
fn a_photograph_shrunk_far_differs_from_pillows_antialiased_resize_as_documented() {
    // docs/runtime.md: no antialiasing, so a photograph shrunk far differs
    // from torchvision's transform. chelsea is shrunk 2.7 times; the plain
    // bilinear sample (what the runtime does, checked exactly above) and
    // Pillow's antialiased resize differ by 0.100 on average and up to
    // 0.756 (44 grey levels, in the cat's fur) in normalised units.
    let got = load_png(&photos::png("chelsea"), photos::SIDE).unwrap();
    let antialiased = photos::tensor("chelsea.antialiased.f32");
    let mean = (&got - &antialiased).mapv(f32::abs).mean().unwrap();
    assert!(mean <= 0.11, "mean difference {mean}, measured 0.100");
}
