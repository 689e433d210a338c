//! Routing a task to an SDR bundle: every path's `cls_token` computed by one
//! pass over the path tree ([`tree`]), scored exactly as `calibrate` scores a
//! sub-network (weighted k-NN top-1 on the seeded split), ranked best first,
//! and drawn as the histogram of path accuracies (`histogram`, with the
//! `plot` feature).

#[cfg(feature = "plot")]
pub mod histogram;
pub mod tree;

use tailor_runtime::bundle::Bundle;

use crate::{measure, metric, reference, Calibrated, CalibrationError, Dataset, Scores};
pub use tree::{Pass, Tree};

/// What [`route`] is doing, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The graphs are read and cut: `cuts` cuts run per image where the
    /// paths one by one would run `unshared`.
    Planned { cuts: usize, unshared: usize },
    /// `done` of `total` images went through the tree.
    Images { done: usize, total: usize },
}

/// Scores every sub-network of the SDR `bundle` on the labelled `dataset`
/// for `task`, running the tree as `pass` says; the result goes
/// into the bundle with [`crate::record::write`], which keeps the ranges an
/// earlier `exporter calibrate` recorded (route records none).
pub fn route(
    bundle: &Bundle,
    dataset: &Dataset,
    task: &str,
    pass: Pass,
    progress: &mut dyn FnMut(Progress),
) -> Result<Calibrated, CalibrationError> {
    let manifest = bundle.manifest();
    if manifest.teacher.family != "sdr" {
        return Err(CalibrationError::NotSdr(
            bundle.dir().to_owned(),
            manifest.teacher.family.to_owned(),
        ));
    }
    if dataset.images.is_empty() {
        return Err(CalibrationError::NoImages);
    }
    if dataset.labels.is_none() {
        return Err(CalibrationError::NoLabels);
    }
    let reference = reference(&manifest, bundle)?.id;
    let tree = Tree::build(bundle)?;
    progress(Progress::Planned {
        cuts: tree.cuts(),
        unshared: tree.unshared_cuts(),
    });
    let total = dataset.images.len();
    let features = tree.features(dataset, pass, &mut |done| {
        progress(Progress::Images { done, total })
    })?;
    let reference_features = features
        .iter()
        .find(|(id, _)| id == reference)
        .map(|(_, f)| f)
        .expect("the tree yields every sub-network");
    let scores = features
        .iter()
        .map(|(id, cls)| {
            let (knn_top1, fidelity) = measure(cls, reference_features, dataset);
            Scores {
                id: id.clone(),
                knn_top1,
                fidelity,
            }
        })
        .collect();
    Ok(Calibrated {
        metric: metric(dataset),
        reference: reference.to_owned(),
        scores,
        ranges: None,
        features,
        task: Some(task.to_owned()),
    })
}

/// The scores best first (ties by id), for the ranking print.
pub fn ranking(calibrated: &Calibrated) -> Vec<&Scores> {
    let mut ranked: Vec<&Scores> = calibrated.scores.iter().collect();
    ranked.sort_by(|a, b| b.quality().total_cmp(&a.quality()).then(a.id.cmp(&b.id)));
    ranked
}
