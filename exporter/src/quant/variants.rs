//! Int8 variants written into a bundle: per width the int8 weight file
//! once, one QDQ graph per sub-network, and the manifest listing each as a
//! sub-network of its own (`PARENT@int8-ENCODING`).
//!
//! The bundle is rebuilt beside itself ([`StagedDir`]: the old files hard
//! linked, never written through) and swapped in at the end, so any failure
//! leaves it byte-identical.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use onnx_protobuf::ModelProto;
use protobuf::Message;
use tailor_calibration::ranges::{RangesFile, Scope};
use tailor_runtime::bundle::{Bundle, MANIFEST_JSON, MANIFEST_POSTCARD};
use tailor_runtime::manifest::{
    ActivationCalibrator, ActivationEncoding, BundleFile, Manifest, Precision, Sha256, Subnet,
    MAX_SUBNETS,
};

use super::{check, quantize_width, QuantError};
use crate::bundle::{BundleError, GRAPHS_DIR};
use tailor_runtime::fs::{write_unlinked, StagedDir};

/// The command that records the ranges quantisation needs.
pub const RANGES_COMMAND: &str = "exporter calibrate BUNDLE --data DATA --ranges inner";

/// Why no variant was written. The bundle is as it was.
#[derive(Debug, thiserror::Error)]
pub enum VariantError {
    #[error(
        "the {family} family cannot be quantised to int8 yet (the bundle is unchanged): {source}"
    )]
    Family {
        family: String,
        #[source]
        source: Box<QuantError>,
    },
    #[error(
        "the bundle has no activation ranges of its graphs' insides{detail}: run `{RANGES_COMMAND}` \
         first, or pass --data DATA"
    )]
    NoRanges { detail: String },
    #[error(
        "the MSE calibrator needs samples of every activation, which the ranges file does not \
         keep: use --calibrator minmax or percentile (examples/precision.rs runs the MSE search)"
    )]
    MseNeedsSamples,
    #[error("quantising width {location}")]
    Quantize {
        location: String,
        #[source]
        source: Box<QuantError>,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an ONNX graph: {reason}")]
    Graph { path: PathBuf, reason: String },
    #[error("writing the variants")]
    Write(#[from] BundleError),
    #[error("too many sub-networks for one manifest with the variants")]
    TooMany,
}

/// The variants to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VariantOptions {
    pub encoding: ActivationEncoding,
    pub calibrator: ActivationCalibrator,
}

/// One variant written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: String,
    pub parent: String,
    pub weight_bytes: u64,
}

/// `PARENT@int8-ENCODING`.
pub fn variant_id(parent: &str, encoding: ActivationEncoding) -> String {
    format!("{parent}@int8-{}", encoding.name())
}

/// A bundle's fp32 graphs, checked quantisable.
#[derive(Debug)]
pub struct Checked {
    /// In the order of the manifest's fp32 sub-networks.
    models: Vec<ModelProto>,
}

/// The fp32 sub-networks of a manifest, in its order.
fn parents<'m, 'a>(m: &'m Manifest<'a>) -> Vec<&'m Subnet<'a>> {
    m.subnets
        .iter()
        .filter(|s| s.precision == Precision::Fp32)
        .collect()
}

/// Reads and checks every fp32 graph of `bundle` for `opts`, before any
/// data runs: a refused family or option fails here, naming itself.
pub fn check_bundle(bundle: &Bundle, opts: VariantOptions) -> Result<Checked, VariantError> {
    let m = bundle.manifest();
    let mut models = Vec::new();
    for s in parents(&m) {
        let path = bundle.graph_path(s);
        let bytes = fs::read(&path).map_err(|source| VariantError::Read {
            path: path.clone(),
            source,
        })?;
        let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| VariantError::Graph {
            path,
            reason: e.to_string(),
        })?;
        check(s.id, &model, graph_location(s)).map_err(|source| VariantError::Family {
            family: m.teacher.family.to_owned(),
            source: Box::new(source),
        })?;
        models.push(model);
    }
    if opts.calibrator == ActivationCalibrator::Mse {
        return Err(VariantError::MseNeedsSamples);
    }
    Ok(Checked { models })
}

/// Quantises every fp32 sub-network of `bundle` (as [`check_bundle`] read
/// it) with `ranges` (recorded with `--ranges inner`) and swaps the bundle
/// with the variants in. A variant already there with the same id is
/// replaced.
pub fn write_variants(
    bundle: &Bundle,
    checked: &Checked,
    ranges: &RangesFile,
    opts: VariantOptions,
) -> Result<Vec<Written>, VariantError> {
    let m = bundle.manifest();
    let parents = parents(&m);
    let models = &checked.models;
    if ranges.scope != Scope::Inner {
        return Err(VariantError::NoRanges {
            detail: " (only the graphs' inputs and outputs were recorded)".into(),
        });
    }
    let mut subnet_ranges = Vec::with_capacity(parents.len());
    for s in &parents {
        subnet_ranges.push(
            ranges
                .subnets
                .get(s.id)
                .ok_or_else(|| VariantError::NoRanges {
                    detail: format!(" for `{}`", s.id),
                })?,
        );
    }

    let staging = StagedDir::linked(bundle.dir(), &[MANIFEST_JSON, MANIFEST_POSTCARD])
        .map_err(write_err(bundle.dir()))?;
    let graphs_dir = staging.path().join(GRAPHS_DIR);
    // The sub-networks of each width, by the fp32 weight file they read.
    let mut widths: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in parents.iter().enumerate() {
        widths.entry(graph_location(s)).or_default().push(i);
    }
    let mut variants = Vec::with_capacity(parents.len());
    for (location, members) in &widths {
        let fp32_path = graphs_dir.join(location);
        let fp32 = fs::read(&fp32_path).map_err(|source| VariantError::Read {
            path: fp32_path,
            source,
        })?;
        let subnets: Vec<super::Subnet<'_>> = members
            .iter()
            .map(|&i| super::Subnet {
                id: parents[i].id,
                model: &models[i],
                ranges: subnet_ranges[i],
                samples: None,
            })
            .collect();
        let width = quantize_width(
            &fp32,
            location,
            &subnets,
            opts.calibrator.into(),
            opts.encoding.into(),
        )
        .map_err(|source| VariantError::Quantize {
            location: (*location).to_owned(),
            source: Box::new(source),
        })?;
        let weights = NewFile {
            path: format!("{GRAPHS_DIR}/{}", width.location),
            bytes: width.bytes.len() as u64,
            sha256: put(&graphs_dir.join(&width.location), &width.bytes)?,
        };
        for (&parent, graph) in members.iter().zip(&width.graphs) {
            let id = variant_id(parents[parent].id, opts.encoding);
            let path = graphs_dir.join(format!("{id}.onnx"));
            let bytes = graph.write_to_bytes().map_err(|e| VariantError::Graph {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            variants.push(NewVariant {
                graph: NewFile {
                    path: format!("{GRAPHS_DIR}/{id}.onnx"),
                    bytes: bytes.len() as u64,
                    sha256: put(&path, &bytes)?,
                },
                id,
                parent,
                weights: weights.clone(),
                // The parent's bytes in the int8 file's proportion.
                weight_bytes: parents[parent].weight_bytes * weights.bytes
                    / fp32.len().max(1) as u64,
            });
        }
    }

    let mut manifest = m.clone();
    manifest
        .subnets
        .retain(|s| !variants.iter().any(|v| v.id == s.id));
    for v in &variants {
        let mut subnet = parents[v.parent].clone();
        subnet.id = &v.id;
        subnet.onnx = &v.graph.path;
        subnet.onnx_sha256 = v.graph.sha256;
        subnet.weights.clear();
        let _ = subnet.weights.push(BundleFile {
            path: &v.weights.path,
            bytes: v.weights.bytes,
            sha256: v.weights.sha256,
        });
        subnet.weight_bytes = v.weight_bytes;
        subnet.quality = None;
        subnet.fidelity = None;
        subnet.precision = Precision::Int8 {
            parent: parents[v.parent].id,
            encoding: opts.encoding,
            calibrator: opts.calibrator,
        };
        manifest.subnets.push(subnet);
    }
    if manifest.subnets.len() > MAX_SUBNETS {
        return Err(VariantError::TooMany);
    }
    put(&staging.path().join(MANIFEST_JSON), &manifest.to_json())?;
    put(
        &staging.path().join(MANIFEST_POSTCARD),
        &manifest.to_postcard(),
    )?;
    staging.commit().map_err(write_err(bundle.dir()))?;
    Ok(variants
        .iter()
        .map(|v| Written {
            parent: parents[v.parent].id.to_owned(),
            id: v.id.clone(),
            weight_bytes: v.weight_bytes,
        })
        .collect())
}

/// A file written into the staged bundle.
#[derive(Debug, Clone)]
struct NewFile {
    /// Relative to the bundle.
    path: String,
    bytes: u64,
    sha256: Sha256,
}

/// A variant whose files are staged.
struct NewVariant {
    id: String,
    /// Index into the fp32 sub-networks.
    parent: usize,
    graph: NewFile,
    weights: NewFile,
    weight_bytes: u64,
}

/// The fp32 weight file as sub-network `s`'s graph names it (relative to
/// the graphs).
fn graph_location<'a>(s: &Subnet<'a>) -> &'a str {
    let path = s.weights.first().map_or("", |w| w.path);
    path.strip_prefix(GRAPHS_DIR)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path)
}

/// [`write_unlinked`]: `bytes` at `path` as a new file, with its sha256.
fn put(path: &Path, bytes: &[u8]) -> Result<Sha256, VariantError> {
    write_unlinked(path, bytes).map_err(write_err(path))?;
    Ok(tailor_runtime::fs::sha256(bytes))
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}
