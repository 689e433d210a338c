//! How well a head does on a sub-network: accuracy against labels, and
//! agreement with the teacher head's predictions when there are none.

use ndarray::{ArrayView2, Axis};

use super::{rows, truncated, Affine, HeadError, Labels, Ridge, Transfer};

/// A head's quality on a set of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// The fraction of images whose predicted class is the teacher head's.
    pub agreement: f64,
    /// The fraction predicted right, when labels were given.
    pub accuracy: Option<f64>,
}

/// The closed-form transfer against the truncated head on one sub-network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// [`Transfer`], cross-fitted: each half of the images (even and odd
    /// rows) is scored by the map fitted on the other half, so no image
    /// grades a fit it took part in.
    pub transferred: Quality,
    /// [`truncated`]: nothing is fitted, so it is scored on every image.
    pub truncated: Quality,
}

/// The class `head` predicts for each row of `features` (argmax; the first
/// of equal scores).
pub fn predictions(head: &Affine, features: ArrayView2<'_, f32>) -> Result<Vec<usize>, HeadError> {
    Ok(head
        .apply(features)?
        .axis_iter(Axis(0))
        .map(|scores| {
            scores
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect())
}

/// `head`'s quality on `features`, against the teacher head's predictions
/// on the same images (and `labels`, if any).
pub fn quality(
    head: &Affine,
    features: ArrayView2<'_, f32>,
    teacher_predictions: &[usize],
    labels: Option<&Labels>,
) -> Result<Quality, HeadError> {
    score(&predictions(head, features)?, teacher_predictions, labels)
}

/// Scores the transferred and the truncated head on sub-network features
/// `sub` (`[images, w]`), the teacher's features `teacher` (`[images, D]`)
/// of the same images and the teacher's `head`.
pub fn compare(
    head: &Affine,
    sub: ArrayView2<'_, f32>,
    teacher: ArrayView2<'_, f32>,
    labels: Option<&Labels>,
    ridge: Ridge,
) -> Result<Comparison, HeadError> {
    let n = sub.nrows();
    if n < 4 {
        return Err(HeadError::data(
            "comparing heads",
            format!("cross-fitting needs at least 4 images, got {n}"),
        ));
    }
    let teacher_predictions = predictions(head, teacher)?;
    let naive = quality(
        &truncated(head, sub.ncols())?,
        sub,
        &teacher_predictions,
        labels,
    )?;

    let halves: [Vec<usize>; 2] = [(0..n).step_by(2).collect(), (1..n).step_by(2).collect()];
    let mut predicted = vec![0; n];
    for (scored, fitted) in [(&halves[0], &halves[1]), (&halves[1], &halves[0])] {
        let transfer = Transfer::fit(
            rows(sub, fitted).view(),
            rows(teacher, fitted).view(),
            ridge,
        )?;
        let folded = transfer.fold(head)?;
        for (&row, class) in scored
            .iter()
            .zip(predictions(&folded, rows(sub, scored).view())?)
        {
            predicted[row] = class;
        }
    }
    Ok(Comparison {
        transferred: score(&predicted, &teacher_predictions, labels)?,
        truncated: naive,
    })
}

fn score(
    predicted: &[usize],
    teacher_predictions: &[usize],
    labels: Option<&Labels>,
) -> Result<Quality, HeadError> {
    let fraction = |truth: &[usize], what: &str| {
        if truth.len() != predicted.len() {
            return Err(HeadError::data(
                "scoring a head",
                format!("{} images but {} {what}", predicted.len(), truth.len()),
            ));
        }
        let hits = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
        Ok(hits as f64 / predicted.len() as f64)
    };
    Ok(Quality {
        agreement: fraction(teacher_predictions, "teacher predictions")?,
        accuracy: labels
            .map(|l| fraction(l.as_slice(), "labels"))
            .transpose()?,
    })
}
