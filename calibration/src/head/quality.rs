//! How well a head does on a sub-network: accuracy against labels, and
//! agreement with the teacher head's predictions when there are none.

use ndarray::{ArrayView2, Axis};

use super::{rows, truncated, Affine, HeadError, Labels, Ridge, Route, Transfer};

/// A head's quality on a set of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// The fraction of images whose predicted class is the teacher head's.
    pub agreement: f64,
    /// The fraction predicted right, when labels were given.
    pub accuracy: Option<f64>,
}

/// The closed-form transfer against the truncated head on one sub-network.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The teacher's head folded with the map fitted on [`Split::fit`]: the
    /// layer the sub-network's graph gets.
    pub folded: Affine,
    /// [`Comparison::folded`] on [`Split::score`].
    pub transferred: Quality,
    /// [`truncated`] on [`Split::score`] (nothing is fitted).
    pub truncated: Quality,
}

/// The images a map is fitted on and the images that grade it.
///
/// A split by row parity is not enough: a dataset stored class by class in
/// turn (digits 0, 1, ..., 9, 0, ...) puts disjoint classes in the even and
/// odd rows, and a map fitted on one half then grades the other on classes
/// it never saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split<'a> {
    pub fit: &'a [usize],
    pub score: &'a [usize],
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

/// Fits the transfer from sub-network features `sub` (`[images, w]`) to the
/// teacher's `teacher` (`[images, D]`) on `split.fit`, folds it with the
/// teacher's `head`, and scores it and the truncated head on `split.score`
/// against the teacher head's predictions (and `labels`, given for every
/// image).
pub fn compare(
    head: &Affine,
    sub: ArrayView2<'_, f32>,
    teacher: ArrayView2<'_, f32>,
    labels: Option<&Labels>,
    split: Split<'_>,
    route: Route,
    ridge: Ridge,
) -> Result<Comparison, HeadError> {
    if split.score.is_empty() {
        return Err(HeadError::data(
            "comparing heads",
            "no images to score the heads on",
        ));
    }
    let n = sub.nrows().min(teacher.nrows());
    if let Some(&i) = split.fit.iter().chain(split.score).find(|&&i| i >= n) {
        return Err(HeadError::data(
            "comparing heads",
            format!("image {i} of the split is past the {n} images"),
        ));
    }
    let scored_sub = rows(sub, split.score);
    let teacher_predictions = predictions(head, rows(teacher, split.score).view())?;
    let labels = labels.map(|l| l.rows(split.score)).transpose()?;
    let naive = quality(
        &truncated(head, sub.ncols())?,
        scored_sub.view(),
        &teacher_predictions,
        labels.as_ref(),
    )?;
    let folded = Transfer::fit(
        rows(sub, split.fit).view(),
        rows(teacher, split.fit).view(),
        route,
        ridge,
    )?
    .fold(head)?;
    Ok(Comparison {
        transferred: quality(
            &folded,
            scored_sub.view(),
            &teacher_predictions,
            labels.as_ref(),
        )?,
        truncated: naive,
        folded,
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
