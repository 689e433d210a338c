//! Cuts committed to ONNX Runtime from memory, their external data read
//! from the graph's folder (nothing is written or copied into the bundle).

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use prost::Message;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::type_proto::Value as Type;
use tract_onnx::pb::{ModelProto, TensorShapeProto, ValueInfoProto};

use super::{Activation, Cut, Value};
use crate::engine::ort::{backend, commit, Model};
use crate::engine::{EngineError, EngineOptions, ExecutionProvider};

/// A cut encoded for one input shape, with the options each worker's
/// session is committed with.
pub(super) struct Plan {
    model: Vec<u8>,
    opts: EngineOptions,
    /// The session planning committed, for the first spawn to take (a
    /// commit of an example graph costs ~10 of its batch-32 runs).
    planned: Mutex<Option<Session>>,
}

impl Plan {
    /// Commits the cut once, to check its provider and read the output's
    /// shape ONNX Runtime infers from the fixed input.
    pub fn new(
        cut: &Cut,
        shape: &[usize],
        provider: ExecutionProvider,
    ) -> Result<(Plan, Vec<usize>), EngineError> {
        let model = with_input_shape(&cut.model, shape).encode_to_vec();
        let opts = EngineOptions {
            threads: Some(1),
            provider,
            ..EngineOptions::default()
        };
        let session = commit(&cut.graph, Model::Memory(&model), &opts)?.session;
        let output = match session.outputs().first().map(|o| o.dtype()) {
            Some(ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape,
                ..
            }) => shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
            _ => None,
        }
        .ok_or_else(|| cut.unfixed_output())?;
        let planned = Mutex::new(Some(session));
        Ok((
            Plan {
                model,
                opts,
                planned,
            },
            output,
        ))
    }

    /// A session of its own: ONNX Runtime runs a session for one caller.
    pub fn spawn(&self, graph: &Path) -> Result<Run, EngineError> {
        let planned = self
            .planned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let session = match planned {
            Some(session) => session,
            None => commit(graph, Model::Memory(&self.model), &self.opts)?.session,
        };
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_owned())
            .ok_or_else(|| EngineError::Interface {
                graph: graph.to_owned(),
                problem: "a cut without an output".into(),
            })?;
        Ok(Run { session, output })
    }
}

/// The cut's model with its input fixed to `shape` and its output's shape
/// left to ONNX Runtime (the cut declares neither).
fn with_input_shape(model: &ModelProto, shape: &[usize]) -> ModelProto {
    let fixed = TensorShapeProto {
        dim: shape
            .iter()
            .map(|&d| Dimension {
                value: Some(dimension::Value::DimValue(d as i64)),
                ..Dimension::default()
            })
            .collect(),
    };
    let mut model = model.clone();
    for body in model.graph.iter_mut() {
        for shape in body.input.iter_mut().filter_map(tensor_shape) {
            *shape = Some(fixed.clone());
        }
        for shape in body.output.iter_mut().filter_map(tensor_shape) {
            *shape = None;
        }
    }
    model
}

/// The shape of a tensor value (`None` inside: not declared).
fn tensor_shape(value: &mut ValueInfoProto) -> Option<&mut Option<TensorShapeProto>> {
    let Type::TensorType(tensor) = value.r#type.as_mut()?.value.as_mut()?;
    Some(&mut tensor.shape)
}

/// One worker's session of a planned cut.
pub(super) struct Run {
    session: Session,
    /// The cut's one output.
    output: String,
}

impl Run {
    /// Runs the session on `input`, a tract tensor read in place.
    pub fn run(&mut self, graph: &Path, input: &Activation) -> Result<DynValue, EngineError> {
        let input: SessionInputValue<'_> = match &input.0 {
            Value::Ort(value) => value.into(),
            Value::Tract(_) => TensorRef::from_array_view(input.view())
                .map_err(|e| backend(graph, e))?
                .into(),
        };
        let mut outputs = self.session.run([input]).map_err(|e| backend(graph, e))?;
        outputs.remove(&self.output).ok_or_else(|| {
            backend(
                graph,
                ort::Error::new(format!("no output `{}`", self.output)),
            )
        })
    }
}
