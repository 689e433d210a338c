//! A task head appended to an exported sub-network graph: one `Gemm` from
//! `cls_token` to a third output, `logits` `[batch, classes]`.
//!
//! The head's weights are stored inline in the graph, not in a weight file:
//! they differ for every sub-network (each has its own fitted map), so a
//! shared file would share nothing, and inline they are covered by the
//! graph's own sha256. Every existing initializer, external-data reference
//! included, is kept as it was, so the width's weight file stays shared.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::{type_proto, ModelProto};
use protobuf::Message;
use tailor_calibration::head::{Affine, Heads};
use tailor_calibration::record::NewGraph;
use tailor_runtime::bundle::Bundle;

use super::{Attr, Dim, GraphBuilder, Value};

use tailor_runtime::interface::CLS_TOKEN;
pub use tailor_runtime::interface::LOGITS;
/// The head's initializers, named after its node.
const WEIGHT: &str = "logits.weight";
const BIAS: &str = "logits.bias";

/// Why a head could not be added to a graph. The graph file is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum HeadGraphError {
    #[error("reading graph {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("graph {path} is not an ONNX model")]
    Decode {
        path: PathBuf,
        source: protobuf::Error,
    },
    #[error("graph {path}: {problem}")]
    Interface { path: PathBuf, problem: String },
    #[error("writing graph {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// The graph file at `path` with `head` added (a head added before
/// replaced), as the bytes of a new file; the file itself is not touched.
fn with_logits(path: &Path, head: &Affine) -> Result<Vec<u8>, HeadGraphError> {
    let bytes = fs::read(path).map_err(|source| HeadGraphError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut model =
        ModelProto::parse_from_bytes(&bytes).map_err(|source| HeadGraphError::Decode {
            path: path.to_owned(),
            source,
        })?;
    append_logits(&mut model, head).map_err(|problem| HeadGraphError::Interface {
        path: path.to_owned(),
        problem,
    })?;
    model.write_to_bytes().map_err(|e| HeadGraphError::Write {
        path: path.to_owned(),
        source: io::Error::other(e),
    })
}

/// Every sub-network's graph with its head from `heads` added, for
/// [`tailor_calibration::record::write_with_graphs`] to put into `bundle` with the manifest.
pub fn graphs_with_heads(bundle: &Bundle, heads: &Heads) -> Result<Vec<NewGraph>, HeadGraphError> {
    let manifest = bundle.manifest();
    heads
        .subnets
        .iter()
        .map(|h| {
            let subnet = manifest
                .subnet(&h.id)
                .ok_or_else(|| HeadGraphError::Interface {
                    path: bundle.dir().to_owned(),
                    problem: format!("no sub-network `{}`", h.id),
                })?;
            Ok(NewGraph {
                id: h.id.clone(),
                bytes: with_logits(&bundle.graph_path(subnet), &h.folded)?,
            })
        })
        .collect()
}

/// Appends `logits = Gemm(cls_token, A, c, transB=1)` to `model`, `A` and
/// `c` being `head`'s weight `[classes, w]` and bias, after removing a head
/// appended before. Fails, leaving `model` as it was, when the graph has no
/// `[batch, w]` `cls_token` output of the head's width.
pub fn append_logits(model: &mut ModelProto, head: &Affine) -> Result<(), String> {
    let width = cls_width(model)?;
    if width != head.inputs() {
        return Err(format!(
            "`{CLS_TOKEN}` is {width} wide, but the head takes {} features",
            head.inputs()
        ));
    }
    let mut graph = model.graph.take().unwrap_or_default();
    graph.node.retain(|n| n.name != LOGITS);
    graph
        .initializer
        .retain(|t| t.name != WEIGHT && t.name != BIAS);
    graph.output.retain(|o| o.name != LOGITS);

    let classes = head.outputs();
    let mut b = GraphBuilder { graph };
    let weight: Vec<f32> = head.weight().iter().map(|&v| v as f32).collect();
    let bias: Vec<f32> = head.bias().iter().map(|&v| v as f32).collect();
    let weight = b.const_f32(WEIGHT, &[classes, width], &weight);
    let bias = b.const_f32(BIAS, &[classes], &bias);
    let cls = Value(CLS_TOKEN.to_owned());
    let logits = b.node(
        "Gemm",
        LOGITS,
        &[&cls, &weight, &bias],
        &[("transB", Attr::Int(1))],
    );
    b.output(&logits, &[Dim::Named("batch"), Dim::Fixed(classes)]);
    model.graph = protobuf::MessageField::some(b.graph);
    Ok(())
}

/// `w` of the graph's `cls_token` output, which must be `[batch, w]`.
fn cls_width(model: &ModelProto) -> Result<usize, String> {
    let output = model
        .graph
        .output
        .iter()
        .find(|o| o.name == CLS_TOKEN)
        .ok_or_else(|| format!("no output `{CLS_TOKEN}` to put a head on"))?;
    let dims: Vec<_> = match output.type_.value {
        Some(type_proto::Value::TensorType(ref t)) => {
            t.shape.dim.iter().map(|d| d.value.clone()).collect()
        }
        _ => Vec::new(),
    };
    match dims[..] {
        [Some(dimension::Value::DimParam(ref batch)), Some(dimension::Value::DimValue(w))]
            if batch == "batch" && w > 0 =>
        {
            Ok(w as usize)
        }
        _ => Err(format!("output `{CLS_TOKEN}` is not [batch, w]")),
    }
}
