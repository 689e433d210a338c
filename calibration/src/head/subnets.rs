//! One head for every sub-network of a calibrated bundle: the teacher's head
//! (read from a file, or fitted on the labelled train images), transferred to
//! each sub-network on the train images and scored on the held-out ones.

use std::path::Path;

use super::{
    compare, fit_head, quality, read_head, rows, Affine, HeadError, Labels, Quality, Ridge, Route,
    Split,
};
use crate::{Calibrated, Dataset};

/// Where the teacher's head comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSource<'a> {
    /// A head trained on the teacher's features ([`read_head`]).
    File(&'a Path),
    /// Ridge regression onto the labels of the train images ([`fit_head`]).
    Fit,
}

impl HeadSource<'_> {
    /// The checks that need no features, so a bad request fails before the
    /// sub-networks run: `Fit` needs labels, `File` a readable file.
    pub fn check(self, dataset: &Dataset) -> Result<(), HeadError> {
        match self {
            HeadSource::Fit if dataset.labels.is_none() => Err(HeadError::data(
                "fitting the teacher's head",
                "the dataset has no labels (a folder without class folders, an .npz without `labels`, or --no-labels)",
            )),
            HeadSource::Fit => Ok(()),
            HeadSource::File(path) => std::fs::File::open(path)
                .map(drop)
                .map_err(|source| HeadError::Read {
                    path: path.to_owned(),
                    source,
                }),
        }
    }
}

/// How [`transfer_heads`] works.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadOptions<'a> {
    pub source: HeadSource<'a>,
    pub route: Route,
    pub ridge: Ridge,
    /// Seeds the 80/20 split of label-free data (labelled data brings its own).
    pub seed: u64,
}

/// One sub-network's head and how it does on the held-out images.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetHead {
    pub id: String,
    /// `[classes, w]`: the layer its graph gets as `logits`.
    pub folded: Affine,
    pub transferred: Quality,
    /// The teacher's head cut to the sub-network's width, for comparison.
    pub truncated: Quality,
}

/// Every sub-network's head.
#[derive(Debug, Clone, PartialEq)]
pub struct Heads {
    pub classes: usize,
    /// Images the maps (and a fitted head) were fitted on, and scored on.
    pub fitted_on: usize,
    pub scored_on: usize,
    /// The teacher's own head on the scored images (its agreement is 1).
    pub teacher: Quality,
    /// In the manifest's order. The reference (the teacher) keeps the
    /// teacher's head unchanged: a map onto itself could only blur it.
    pub subnets: Vec<SubnetHead>,
}

/// Transfers the teacher's head to every sub-network of `calibrated`, which
/// must have kept its features (`Options::keep_features`), scored on
/// `dataset`.
pub fn transfer_heads(
    calibrated: &Calibrated,
    dataset: &Dataset,
    opts: &HeadOptions<'_>,
) -> Result<Heads, HeadError> {
    opts.source.check(dataset)?;
    let features = |id: &str| {
        calibrated
            .features
            .iter()
            .find(|(f, _)| f == id)
            .map(|(_, x)| x.view())
            .ok_or_else(|| {
                HeadError::data(
                    "head transfer",
                    format!("calibration kept no features of {id} (Options::keep_features)"),
                )
            })
    };
    let teacher = features(&calibrated.reference)?;
    let (labels, (fit, score)) = match &dataset.labels {
        Some(l) => {
            let classes: Vec<i64> = l.class.iter().map(|&c| i64::from(c)).collect();
            (
                Some(Labels::new(&classes)?),
                (l.train.clone(), l.val.clone()),
            )
        }
        None => (None, crate::dataset::split(teacher.nrows(), opts.seed)),
    };
    if fit.len() < 2 || score.is_empty() {
        return Err(HeadError::data(
            "head transfer",
            format!(
                "{} images to fit on and {} to score on; needs at least 2 and 1",
                fit.len(),
                score.len()
            ),
        ));
    }
    let head = match opts.source {
        HeadSource::File(path) => read_head(path, teacher.ncols())?,
        HeadSource::Fit => {
            let labels = labels.as_ref().expect("checked: fitting needs labels");
            fit_head(rows(teacher, &fit).view(), &labels.rows(&fit)?, opts.ridge)?
        }
    };
    let split = Split {
        fit: &fit,
        score: &score,
    };
    let scored_teacher = rows(teacher, &score);
    let teacher_predictions = super::predictions(&head, scored_teacher.view())?;
    let scored_labels = labels.as_ref().map(|l| l.rows(&score)).transpose()?;
    let teacher_quality = quality(
        &head,
        scored_teacher.view(),
        &teacher_predictions,
        scored_labels.as_ref(),
    )?;
    let subnets = calibrated
        .features
        .iter()
        .map(|(id, sub)| {
            if *id == calibrated.reference {
                return Ok(SubnetHead {
                    id: id.clone(),
                    folded: head.clone(),
                    transferred: teacher_quality,
                    truncated: teacher_quality,
                });
            }
            let c = compare(
                &head,
                sub.view(),
                teacher,
                labels.as_ref(),
                split,
                opts.route,
                opts.ridge,
            )?;
            Ok(SubnetHead {
                id: id.clone(),
                folded: c.folded,
                transferred: c.transferred,
                truncated: c.truncated,
            })
        })
        .collect::<Result<_, HeadError>>()?;
    Ok(Heads {
        classes: head.outputs(),
        fitted_on: fit.len(),
        scored_on: score.len(),
        teacher: teacher_quality,
        subnets,
    })
}
