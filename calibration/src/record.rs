//! Writing calibration results into a bundle: the ranges file, replaced
//! graphs (with a task head), then both manifests with every sub-network's
//! quality and the dataset's identity.
//!
//! The bundle is rebuilt beside itself (`StagedDir::linked`: the old files
//! hard linked, never written through) and swapped in whole, so a failure or
//! a kill leaves it as it was or as it was meant to be. New files are named
//! by their content. The weights are untouched: the bundle still verifies,
//! and its identity (the manifest's sha256, the runtime's cache key) changes
//! with the scores.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tailor_runtime::bundle::{Bundle, MANIFEST_JSON, MANIFEST_POSTCARD};
use tailor_runtime::fs::{sha256, write_unlinked, StagedDir};
use tailor_runtime::manifest::{BundleFile, Calibration, Sha256};

use crate::npz::{self, Member};
use crate::ranges::RangesFile;
use crate::{Calibrated, CalibrationError, Dataset};

/// The ranges files live here, relative to the bundle.
pub const CALIBRATION_DIR: &str = "calibration";

/// A sub-network's graph to replace, e.g. with a `logits` output added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGraph {
    pub id: String,
    /// The whole ONNX file.
    pub bytes: Vec<u8>,
}

/// Writes `calibrated` (scored on `dataset`) into `bundle`'s directory and
/// returns the path of the ranges file the manifest lists.
pub fn write(
    bundle: &Bundle,
    dataset: &Dataset,
    calibrated: &Calibrated,
) -> Result<PathBuf, CalibrationError> {
    write_with_graphs(bundle, dataset, calibrated, &[])
}

/// [`write`], also replacing the graphs of `graphs`' sub-networks: each new
/// graph goes beside the old one as `ID.SHA256-PREFIX.onnx` (its external
/// data paths stay valid), and the manifest lists it with its sha256.
pub fn write_with_graphs(
    bundle: &Bundle,
    dataset: &Dataset,
    calibrated: &Calibrated,
    graphs: &[NewGraph],
) -> Result<PathBuf, CalibrationError> {
    let dir = bundle.dir();
    let old = bundle.manifest();
    // Ranges not recorded: the bundle keeps its own (they name their
    // dataset), or gets an empty file if it has none.
    let ranges = match (&calibrated.ranges, &old.calibration) {
        (None, Some(previous)) => Ranges::Kept(previous.ranges.clone()),
        (Some(ranges), _) => Ranges::new(ranges),
        (None, None) => Ranges::new(&RangesFile::none(dataset.sha256)),
    };
    let mut new_graphs = Vec::with_capacity(graphs.len());
    for graph in graphs {
        let subnet = old
            .subnet(&graph.id)
            .ok_or_else(|| CalibrationError::UnknownSubnet(graph.id.clone()))?;
        let sha256 = sha256(&graph.bytes);
        let rel = Path::new(subnet.onnx).with_file_name(format!(
            "{}.{}.onnx",
            graph.id,
            &sha256.to_string()[..16]
        ));
        new_graphs.push((graph, rel.to_string_lossy().into_owned(), sha256));
    }
    let mut manifest = old.clone();
    for subnet in &mut manifest.subnets {
        let scores = calibrated.scores.iter().find(|s| s.id == subnet.id);
        subnet.quality = scores.map(|s| s.quality() as f32);
        subnet.fidelity = scores.map(|s| s.fidelity as f32);
        if let Some((_, rel, sha256)) = new_graphs.iter().find(|(g, ..)| g.id == subnet.id) {
            subnet.onnx = rel;
            subnet.onnx_sha256 = *sha256;
        }
    }
    manifest.calibration = Some(Calibration {
        quality_metric: calibrated.metric,
        dataset_sha256: dataset.sha256,
        dataset_images: u32::try_from(dataset.images.len()).unwrap_or(u32::MAX),
        ranges: ranges.listed(),
        task: calibrated.task.as_deref(),
    });

    // Refused before anything is written if a symlinked directory of the
    // bundle would lead a new file outside it.
    inside(bundle, CALIBRATION_DIR)?;
    // The bundle rebuilt beside itself (hard links to its files), the new
    // files put in, the stale ones left out, then swapped in whole: a kill
    // leaves the old bundle or the new one, both manifests included.
    let staging =
        StagedDir::linked(dir, &[MANIFEST_JSON, MANIFEST_POSTCARD]).map_err(write_err(dir))?;
    let put = |rel: &str, bytes: &[u8]| {
        let path = staging.path().join(rel);
        write_unlinked(&path, bytes).map_err(write_err(&path))
    };
    let calibration_dir = staging.path().join(CALIBRATION_DIR);
    fs::create_dir_all(&calibration_dir).map_err(write_err(&calibration_dir))?;
    if let Ranges::New { rel, json, .. } = &ranges {
        inside(bundle, rel)?;
        put(rel, json)?;
    }
    for (graph, rel, _) in &new_graphs {
        inside(bundle, rel)?;
        put(rel, &graph.bytes)?;
    }
    let mut stale: Vec<&str> = old.subnets.iter().map(|s| s.onnx).collect();
    stale.extend(old.calibration.as_ref().map(|c| c.ranges.path));
    let now = ranges.listed().path;
    for rel in stale {
        if rel != now && !manifest.subnets.iter().any(|s| s.onnx == rel) {
            let path = staging.path().join(rel);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_err(&path)(e)),
                _ => {}
            }
        }
    }
    put(MANIFEST_JSON, &manifest.to_json())?;
    put(MANIFEST_POSTCARD, &manifest.to_postcard())?;
    staging.commit().map_err(write_err(dir))?;
    Ok(dir.join(now))
}

/// The ranges file the new manifest lists.
enum Ranges<'a> {
    /// Written, named by its content.
    New {
        json: Vec<u8>,
        rel: String,
        sha256: Sha256,
    },
    /// The bundle's, left as it is.
    Kept(BundleFile<'a>),
}

impl Ranges<'_> {
    fn new(file: &RangesFile) -> Self {
        let json = serde_json::to_vec_pretty(file).expect("ranges always encode");
        let sha256 = sha256(&json);
        // Named by content: the previous manifest's file stays valid until
        // the new manifest replaces it.
        let rel = format!(
            "{CALIBRATION_DIR}/ranges-{}.json",
            &sha256.to_string()[..16]
        );
        Ranges::New { json, rel, sha256 }
    }

    fn listed(&self) -> BundleFile<'_> {
        match self {
            Ranges::New { json, rel, sha256 } => BundleFile {
                path: rel,
                bytes: json.len() as u64,
                sha256: *sha256,
            },
            Ranges::Kept(file) => file.clone(),
        }
    }
}

/// Writes every kept sub-network's `cls_token`, the labels and the k-NN
/// split as an `.npz`, for `tools/knn_reference.py check`: members named by
/// sub-network id, `reference` (the fidelity reference's features again),
/// `labels`, `train` and `val` (image indices).
pub fn write_features(
    path: &Path,
    dataset: &Dataset,
    calibrated: &Calibrated,
) -> Result<(), CalibrationError> {
    let to_i64 = |v: &[usize]| v.iter().map(|&i| i as i64).collect::<Vec<_>>();
    let (labels, train, val) = match &dataset.labels {
        Some(l) => (
            l.class.iter().map(|&c| i64::from(c)).collect(),
            to_i64(&l.train),
            to_i64(&l.val),
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let shapes: Vec<[usize; 2]> = calibrated
        .features
        .iter()
        .map(|(_, f)| [f.nrows(), f.ncols()])
        .collect();
    let mut members = Vec::new();
    for ((id, features), shape) in calibrated.features.iter().zip(&shapes) {
        let data = features.as_slice().expect("features are contiguous");
        members.push((id.as_str(), Member::F32 { shape, data }));
        if *id == calibrated.reference {
            members.push(("reference", Member::F32 { shape, data }));
        }
    }
    let (n, t, v) = ([labels.len()], [train.len()], [val.len()]);
    members.push((
        "labels",
        Member::I64 {
            shape: &n,
            data: &labels,
        },
    ));
    members.push((
        "train",
        Member::I64 {
            shape: &t,
            data: &train,
        },
    ));
    members.push((
        "val",
        Member::I64 {
            shape: &v,
            data: &val,
        },
    ));
    npz::write(path, &members).map_err(write_err(path))
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> CalibrationError + '_ {
    move |source| CalibrationError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Refuses the new file `rel` if a symlinked directory of `bundle` would
/// lead it outside.
fn inside(bundle: &Bundle, rel: &str) -> Result<(), CalibrationError> {
    bundle
        .inside(rel)
        .map(drop)
        .map_err(|escape| CalibrationError::Write {
            path: bundle.dir().join(rel),
            source: io::Error::other(escape),
        })
}
