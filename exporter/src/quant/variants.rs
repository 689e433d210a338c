//! Int8 and fp16 variants written into a bundle: per width and precision
//! the weight file once, one graph per sub-network, and the manifest
//! listing each as a sub-network of its own (`PARENT@int8-ENCODING`,
//! `PARENT@fp16`).
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
use tailor_calibration::ranges::{Range, RangesFile, Scope};
use tailor_runtime::bundle::{Bundle, MANIFEST_JSON, MANIFEST_POSTCARD};
use tailor_runtime::manifest::{
    ActivationCalibrator, ActivationEncoding, BundleFile, Manifest, Precision, Sha256, Subnet,
    MAX_SUBNETS,
};

use super::{check, fp16_width, quantize_width, QuantError, Width};
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
        "the MSE calibrator needs samples of every activation, which the bundle's ranges file \
         does not keep for `{subnet}` (it was recorded before samples were): run \
         `{RANGES_COMMAND}` again, or use --calibrator minmax or percentile"
    )]
    MseNeedsSamples { subnet: String },
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

/// How int8 variants quantise their activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int8Options {
    pub encoding: ActivationEncoding,
    pub calibrator: ActivationCalibrator,
}

/// A kind of variant to write of every fp32 sub-network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Int8(Int8Options),
    Fp16,
}

impl Variant {
    /// The variant of `parent`: `PARENT@int8-ENCODING` or `PARENT@fp16`.
    pub fn id(self, parent: &str) -> String {
        match self {
            Variant::Int8(o) => format!("{parent}@int8-{}", o.encoding.name()),
            Variant::Fp16 => format!("{parent}@fp16"),
        }
    }

    /// The manifest's precision of the variant of `parent`.
    fn precision(self, parent: &str) -> Precision<'_> {
        match self {
            Variant::Int8(o) => Precision::Int8 {
                parent,
                encoding: o.encoding,
                calibrator: o.calibrator,
            },
            Variant::Fp16 => Precision::Fp16 { parent },
        }
    }
}

/// One variant written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: String,
    pub parent: String,
    pub variant: Variant,
    pub weight_bytes: u64,
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

/// Reads and checks every fp32 graph of `bundle` for `variants`, before
/// any data runs: a refused family or option fails here, naming itself.
pub fn check_bundle(bundle: &Bundle, variants: &[Variant]) -> Result<Checked, VariantError> {
    let int8 = int8_options(variants);
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
        if !int8.is_empty() {
            check(s.id, &model, graph_location(s)).map_err(|source| VariantError::Family {
                family: m.teacher.family.to_owned(),
                source: Box::new(source),
            })?;
        }
        models.push(model);
    }
    Ok(Checked { models })
}

/// The int8 options among `variants`.
fn int8_options(variants: &[Variant]) -> Vec<Int8Options> {
    variants
        .iter()
        .filter_map(|v| match v {
            Variant::Int8(o) => Some(*o),
            Variant::Fp16 => None,
        })
        .collect()
}

/// Writes `variants` of every fp32 sub-network of `bundle` (as
/// [`check_bundle`] read it) and swaps the bundle with them in. Int8 ones
/// need `ranges` (recorded with `--ranges inner`). A variant already there
/// with the same id is replaced.
pub fn write_variants(
    bundle: &Bundle,
    checked: &Checked,
    ranges: Option<&RangesFile>,
    variants: &[Variant],
) -> Result<Vec<Written>, VariantError> {
    let m = bundle.manifest();
    let parents = parents(&m);
    let models = &checked.models;
    let int8 = int8_options(variants);
    let subnet_ranges = if int8.is_empty() {
        Vec::new()
    } else {
        inner_ranges(ranges, &parents)?
    };
    let samples: Vec<_> = parents
        .iter()
        .map(|s| ranges.and_then(|r| r.samples.get(s.id)))
        .collect();
    if int8
        .iter()
        .any(|o| o.calibrator == ActivationCalibrator::Mse)
    {
        if let Some(i) = samples.iter().position(Option::is_none) {
            return Err(VariantError::MseNeedsSamples {
                subnet: parents[i].id.to_owned(),
            });
        }
    }

    let staging = StagedDir::linked(bundle.dir(), &[MANIFEST_JSON, MANIFEST_POSTCARD])
        .map_err(write_err(bundle.dir()))?;
    let graphs_dir = staging.path().join(GRAPHS_DIR);
    // The sub-networks of each width, by the fp32 weight file they read.
    let mut widths: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in parents.iter().enumerate() {
        widths.entry(graph_location(s)).or_default().push(i);
    }
    let mut written = Vec::with_capacity(parents.len() * variants.len());
    for (location, members) in &widths {
        let fp32_path = graphs_dir.join(location);
        let fp32 = fs::read(&fp32_path).map_err(|source| VariantError::Read {
            path: fp32_path,
            source,
        })?;
        for &variant in variants {
            let width = match variant {
                Variant::Int8(o) => {
                    let subnets: Vec<super::Subnet<'_>> = members
                        .iter()
                        .map(|&i| super::Subnet {
                            id: parents[i].id,
                            model: &models[i],
                            ranges: subnet_ranges[i],
                            samples: samples[i],
                        })
                        .collect();
                    quantize_width(
                        &fp32,
                        location,
                        &subnets,
                        o.calibrator.into(),
                        o.encoding.into(),
                    )
                }
                Variant::Fp16 => {
                    let subnets: Vec<_> = members
                        .iter()
                        .map(|&i| (parents[i].id, &models[i]))
                        .collect();
                    fp16_width(&fp32, location, &subnets)
                }
            }
            .map_err(|source| VariantError::Quantize {
                location: (*location).to_owned(),
                source: Box::new(source),
            })?;
            written.extend(stage_width(
                &graphs_dir,
                &width,
                members.iter().map(|&i| (i, parents[i])),
                variant,
                fp32.len(),
            )?);
        }
    }

    let mut manifest = m.clone();
    manifest
        .subnets
        .retain(|s| !written.iter().any(|v| v.id == s.id));
    for v in &written {
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
        subnet.precision = v.variant.precision(parents[v.parent].id);
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
    Ok(written
        .iter()
        .map(|v| Written {
            parent: parents[v.parent].id.to_owned(),
            id: v.id.clone(),
            variant: v.variant,
            weight_bytes: v.weight_bytes,
        })
        .collect())
}

/// Each fp32 sub-network's ranges of its inner activations.
fn inner_ranges<'r>(
    ranges: Option<&'r RangesFile>,
    parents: &[&Subnet<'_>],
) -> Result<Vec<&'r BTreeMap<String, Range>>, VariantError> {
    let Some(ranges) = ranges.filter(|r| r.scope == Scope::Inner) else {
        return Err(VariantError::NoRanges {
            detail: ranges
                .map(|_| " (only the graphs' inputs and outputs were recorded)".into())
                .unwrap_or_default(),
        });
    };
    parents
        .iter()
        .map(|s| {
            ranges
                .subnets
                .get(s.id)
                .ok_or_else(|| VariantError::NoRanges {
                    detail: format!(" for `{}`", s.id),
                })
        })
        .collect()
}

/// Writes `width`'s weight file and its graphs (one per member: index
/// into the fp32 sub-networks, and the sub-network) into the staged
/// graphs directory.
fn stage_width<'s, 'a: 's>(
    graphs_dir: &Path,
    width: &Width,
    members: impl Iterator<Item = (usize, &'s Subnet<'a>)>,
    variant: Variant,
    fp32_bytes: usize,
) -> Result<Vec<NewVariant>, VariantError> {
    let weights = NewFile {
        path: format!("{GRAPHS_DIR}/{}", width.location),
        bytes: width.bytes.len() as u64,
        sha256: put(&graphs_dir.join(&width.location), &width.bytes)?,
    };
    let mut staged = Vec::new();
    for ((parent, subnet), graph) in members.zip(&width.graphs) {
        let id = variant.id(subnet.id);
        let path = graphs_dir.join(format!("{id}.onnx"));
        let bytes = graph.write_to_bytes().map_err(|e| VariantError::Graph {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        staged.push(NewVariant {
            graph: NewFile {
                path: format!("{GRAPHS_DIR}/{id}.onnx"),
                bytes: bytes.len() as u64,
                sha256: put(&path, &bytes)?,
            },
            id,
            parent,
            variant,
            weights: weights.clone(),
            // The parent's bytes in the variant file's proportion.
            weight_bytes: subnet.weight_bytes * weights.bytes / fp32_bytes.max(1) as u64,
        });
    }
    Ok(staged)
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
    variant: Variant,
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
