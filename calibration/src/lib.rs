//! Calibration of a bundle on the user's data: a quality score per
//! sub-network (k-NN accuracy with labels, CKA fidelity to the largest
//! without) and activation ranges, written back into the bundle's manifest;
//! one task head for every sub-network ([`head`]); the Pareto picture
//! ([`plot`]).
//!
//! [`score`] runs every sub-network over a [`Dataset`]; [`record::write`]
//! puts the result into the bundle atomically.

pub mod cka;
pub mod dataset;
pub mod features;
pub mod head;
pub mod knn;
pub mod npz;
pub mod plot;
pub mod ranges;
pub mod record;
pub mod route;

use std::collections::BTreeMap;

use ndarray::Array2;
use tailor_runtime::bundle::{Bundle, BundleError};
use tailor_runtime::engine::{EngineError, EngineKind, EngineOptions};
use tailor_runtime::manifest::{Manifest, QualityMetric, Subnet};

pub use dataset::{Dataset, DatasetError, LoadOptions};
use features::{extract, rows};
use ranges::{RangesFile, Scope};

/// Which engine computes the features.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub engine: EngineKind,
    /// `batch` is the images per run.
    pub engine_options: EngineOptions,
    /// Keep every sub-network's features in [`Calibrated::features`] (to
    /// cross-check the metrics; they take images × width floats each).
    pub keep_features: bool,
    /// Which tensors' ranges to record; [`Scope::Inner`] runs tract.
    pub ranges: Scope,
}

/// What [`score`] is doing, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// Sub-network `index` of `total` starts.
    Subnet {
        id: &'a str,
        index: usize,
        total: usize,
    },
    /// `done` of `total` images of the current sub-network ran.
    Images { done: usize, total: usize },
}

/// One sub-network's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub id: String,
    /// Weighted k-NN top-1 accuracy in percent; `None` without labels.
    pub knn_top1: Option<f64>,
    /// Linear CKA of `cls_token` with the reference's.
    pub fidelity: f64,
}

impl Scores {
    /// The score the runtime ranks by, in `metric`.
    pub fn quality(&self) -> f64 {
        self.knn_top1.unwrap_or(self.fidelity)
    }
}

/// Every sub-network's scores and ranges over one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibrated {
    /// k-NN accuracy with labels, CKA fidelity without.
    pub metric: QualityMetric,
    /// The largest sub-network (most parameters): fidelity's reference.
    pub reference: String,
    /// In the manifest's order.
    pub scores: Vec<Scores>,
    /// `None` when none were recorded ([`route::route`]): the bundle keeps
    /// the ranges it has.
    pub ranges: Option<RangesFile>,
    /// `cls_token` per image of each sub-network, in the manifest's order,
    /// when [`Options::keep_features`] asked for them.
    pub features: Vec<(String, Array2<f32>)>,
    /// The task the scores are for ([`route::route`] names it).
    pub task: Option<String>,
}

/// Why calibration stopped. The bundle is untouched.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("running {id} over the dataset")]
    Engine { id: String, source: EngineError },
    /// The engine cannot start for any sub-network (no library, no provider).
    #[error("starting the engine")]
    EngineSetup(#[source] EngineError),
    #[error("{0} has no sub-networks")]
    NoSubnets(std::path::PathBuf),
    #[error("the dataset holds no images")]
    NoImages,
    #[error("the bundle has no sub-network `{0}` to replace the graph of")]
    UnknownSubnet(String),
    #[error("{0} is not an SDR bundle (its teacher family is `{1}`): route scores an SDR teacher's paths; `exporter calibrate` scores any bundle")]
    NotSdr(std::path::PathBuf, String),
    #[error("routing needs labels: the dataset has none (an image folder with one sub-folder per class, or an .npz with `labels`)")]
    NoLabels,
    #[error("inner activation ranges are recorded with tract, not {0}: choose --engine tract")]
    InnerNeedsTract(EngineKind),
    #[error("writing {path}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl CalibrationError {
    /// `source` while running sub-network `id`: the sub-network is named
    /// only when the failure can be its own.
    pub fn engine(id: &str, source: EngineError) -> CalibrationError {
        if source.is_systematic() {
            CalibrationError::EngineSetup(source)
        } else {
            CalibrationError::Engine {
                id: id.to_owned(),
                source,
            }
        }
    }
}

/// Runs every sub-network of `bundle` over `dataset` (each file verified
/// against the manifest first) and scores it.
pub fn score(
    bundle: &Bundle,
    dataset: &Dataset,
    opts: &Options,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Calibrated, CalibrationError> {
    if dataset.images.is_empty() {
        return Err(CalibrationError::NoImages);
    }
    if opts.ranges == Scope::Inner && opts.engine != EngineKind::Tract {
        return Err(CalibrationError::InnerNeedsTract(opts.engine));
    }
    let manifest = bundle.manifest();
    let subnets = &manifest.subnets;
    // The reference runs first, so every other one is compared as it ends.
    let reference = reference(&manifest, bundle)?;
    let order = std::iter::once(reference).chain(subnets.iter().filter(|s| s.id != reference.id));
    let total = dataset.images.len();
    let mut reference_features = None;
    let mut scored = BTreeMap::new();
    let mut graph_ranges = BTreeMap::new();
    let mut graph_samples = BTreeMap::new();
    let mut kept = BTreeMap::new();
    for (index, subnet) in order.enumerate() {
        progress(Progress::Subnet {
            id: subnet.id,
            index,
            total: subnets.len(),
        });
        bundle.verify(subnet)?;
        let features = extract(
            &bundle.graph_path(subnet),
            dataset,
            opts.engine,
            &opts.engine_options,
            opts.ranges,
            &mut |done| progress(Progress::Images { done, total }),
        )
        .map_err(|source| CalibrationError::engine(subnet.id, source))?;
        let cls = features.cls_token;
        let (knn_top1, fidelity) =
            measure(&cls, reference_features.as_ref().unwrap_or(&cls), dataset);
        scored.insert(subnet.id, (knn_top1, fidelity));
        if opts.keep_features {
            kept.insert(subnet.id, cls.clone());
        }
        if let Some(r) = features.ranges {
            graph_ranges.insert(subnet.id.to_owned(), r);
        }
        if !features.samples.is_empty() {
            graph_samples.insert(subnet.id.to_owned(), features.samples);
        }
        reference_features.get_or_insert(cls);
    }
    Ok(Calibrated {
        metric: metric(dataset),
        reference: reference.id.to_owned(),
        scores: subnets
            .iter()
            .map(|s| {
                let (knn_top1, fidelity) = scored[s.id];
                Scores {
                    id: s.id.to_owned(),
                    knn_top1,
                    fidelity,
                }
            })
            .collect(),
        ranges: Some(RangesFile {
            format: ranges::FORMAT,
            percentile: ranges::PERCENTILE,
            images: total,
            dataset_sha256: dataset.sha256,
            scope: opts.ranges,
            subnets: graph_ranges,
            samples: graph_samples,
        }),
        features: subnets
            .iter()
            .filter_map(|s| Some((s.id.to_owned(), kept.remove(s.id)?)))
            .collect(),
        task: None,
    })
}

/// The largest sub-network (most parameters, then MACs): fidelity's reference.
fn reference<'m, 'a>(
    manifest: &'m Manifest<'a>,
    bundle: &Bundle,
) -> Result<&'m Subnet<'a>, CalibrationError> {
    // Never a variant: an int8 or fp16 one ties with its parent on size,
    // and fidelity measures what is lost against full precision.
    manifest
        .subnets
        .iter()
        .filter(|s| s.parent().is_none())
        .max_by_key(|s| (s.params, s.macs))
        .ok_or_else(|| CalibrationError::NoSubnets(bundle.dir().to_owned()))
}

/// What `quality` is on `dataset`: k-NN accuracy with labels, fidelity without.
fn metric(dataset: &Dataset) -> QualityMetric {
    match dataset.labels {
        Some(_) => QualityMetric::KnnTop1,
        None => QualityMetric::CkaFidelity,
    }
}

/// One sub-network's k-NN top-1 (with labels) and CKA fidelity to the
/// reference's features: the one scoring of `calibrate` and `route`.
fn measure(cls: &Array2<f32>, reference: &Array2<f32>, dataset: &Dataset) -> (Option<f64>, f64) {
    let fidelity = cka::linear(reference.view(), cls.view());
    let knn_top1 = dataset.labels.as_ref().map(|l| {
        let labels = |idx: &[usize]| idx.iter().map(|&i| l.class[i]).collect::<Vec<_>>();
        knn::Knn::DINO.top1(
            rows(cls, &l.train).view(),
            &labels(&l.train),
            rows(cls, &l.val).view(),
            &labels(&l.val),
            l.names.len(),
        )
    });
    (knn_top1, fidelity)
}
