//! The checks both engines need before loading a graph: the file is ONNX, it
//! has a bundle graph's interface, and all of its external data is there.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::pb::type_proto::Value as Type;
use tract_onnx::pb::{GraphProto, ModelProto, TensorProto, ValueInfoProto};
use tract_onnx::prelude::Framework;

use super::EngineError;
use crate::fs::resolve_inside;

pub(super) use crate::interface::{LOGITS, OUTPUTS, PIXEL_VALUES as INPUT};

/// A decoded graph whose interface and external data have been checked:
/// what every engine loads.
pub struct Graph {
    pub(super) path: PathBuf,
    pub(super) proto: ModelProto,
    /// `[H, W]` of [`INPUT`].
    pub(super) image: [usize; 2],
    /// Where [`OUTPUTS`] sit among the graph's outputs.
    pub(super) outputs: [usize; 2],
    /// Where [`LOGITS`] sits, if the graph has it.
    pub(super) logits: Option<usize>,
}

impl Graph {
    /// Decodes the graph at `path` and checks it is a bundle graph whose
    /// external data is all there.
    pub fn read(path: &Path) -> Result<Graph, EngineError> {
        let graph = path.to_owned();
        if let Err(source) = fs::metadata(path) {
            return Err(EngineError::Read { graph, source });
        }
        let proto = match tract_onnx::onnx().proto_model_for_path(path) {
            Ok(proto) => proto,
            Err(e) => {
                return Err(EngineError::NotOnnx {
                    graph,
                    source: e.into(),
                })
            }
        };
        // Protobuf decodes many non-ONNX files into an empty message.
        let Some(body) = &proto.graph else {
            return Err(EngineError::NotOnnx {
                graph,
                source: "the file holds no graph".into(),
            });
        };
        let interface = |problem: String| EngineError::Interface {
            graph: graph.clone(),
            problem,
        };

        let initialized: HashSet<&str> = body.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&ValueInfoProto> = body
            .input
            .iter()
            .filter(|i| !initialized.contains(i.name.as_str()))
            .collect();
        let [input] = inputs[..] else {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(interface(format!(
                "expected the one input `{INPUT}`, found {names:?}"
            )));
        };
        if input.name != INPUT {
            return Err(interface(format!(
                "expected input `{INPUT}`, found `{}`",
                input.name
            )));
        }
        let image = image_size(input).map_err(interface)?;

        let output = |name: &str| {
            body.output
                .iter()
                .position(|o| o.name == name)
                .ok_or_else(|| interface(format!("no output `{name}`")))
        };
        let outputs = [output(OUTPUTS[0])?, output(OUTPUTS[1])?];
        let logits = body.output.iter().position(|o| o.name == LOGITS);

        // External data is read relative to the graph, and from nowhere else.
        let dir = path.parent().unwrap_or(Path::new(""));
        let root = fs::canonicalize(path.parent().unwrap_or(Path::new("."))).map_err(|source| {
            EngineError::Read {
                graph: graph.clone(),
                source,
            }
        })?;
        for tensor in &body.initializer {
            check_external_data(path, (dir, &root), tensor)?;
        }
        Ok(Graph {
            path: graph,
            proto,
            image,
            outputs,
            logits,
        })
    }

    /// The graph's nodes, inputs, outputs and initialisers.
    pub fn body(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("checked by Graph::read")
    }

    /// `[H, W]` of the input image.
    pub fn image(&self) -> [usize; 2] {
        self.image
    }
}

/// `[H, W]` of a `[batch, 3, H, W]` f32 input with fixed H and W.
fn image_size(input: &ValueInfoProto) -> Result<[usize; 2], String> {
    let bad = || format!("input `{INPUT}` must be f32 [batch, 3, H, W] with fixed H and W");
    let Some(Type::TensorType(tensor)) = input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(bad());
    };
    let dims: Vec<Option<i64>> = tensor
        .shape
        .iter()
        .flat_map(|s| &s.dim)
        .map(|d| match d.value {
            Some(Dim::DimValue(v)) => Some(v),
            _ => None,
        })
        .collect();
    match dims[..] {
        [_, Some(3), Some(h), Some(w)]
            if tensor.elem_type == DataType::Float as i32 && h > 0 && w > 0 =>
        {
            Ok([h as usize, w as usize])
        }
        _ => Err(bad()),
    }
}

/// Checks that an initializer's external data file is inside the graph's
/// directory (`dir` as given, `root` canonical), exists and is long enough.
fn check_external_data(
    graph: &Path,
    (dir, root): (&Path, &Path),
    tensor: &TensorProto,
) -> Result<(), EngineError> {
    if tensor.data_location != Some(DataLocation::External as i32) {
        return Ok(());
    }
    let field = |key: &str| {
        tensor
            .external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let malformed = |what: String| EngineError::NotOnnx {
        graph: graph.to_owned(),
        source: format!("tensor `{}`: {what}", tensor.name).into(),
    };
    let number = |key: &str| -> Result<Option<u64>, EngineError> {
        field(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| malformed(format!("external data {key} `{v}` is not a number")))
            })
            .transpose()
    };
    let location =
        field("location").ok_or_else(|| malformed("external data without a location".into()))?;
    resolve_inside(root, location).map_err(|problem| EngineError::OutsideExternalData {
        graph: graph.to_owned(),
        tensor: tensor.name.clone(),
        location: location.to_owned(),
        problem,
    })?;
    let data = dir.join(location);
    let size = match fs::metadata(&data) {
        Ok(meta) => meta.len(),
        Err(source) => {
            return Err(EngineError::MissingExternalData {
                graph: graph.to_owned(),
                data,
                tensor: tensor.name.clone(),
                source,
            });
        }
    };
    let offset = number("offset")?.unwrap_or(0);
    let end = offset.saturating_add(number("length")?.unwrap_or(0));
    if end > size {
        return Err(EngineError::TruncatedExternalData {
            graph: graph.to_owned(),
            data,
            tensor: tensor.name.clone(),
            end,
            size,
        });
    }
    Ok(())
}
