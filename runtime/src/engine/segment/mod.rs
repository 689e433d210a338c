//! Runs of a bundle graph's nodes planned and run on their own with tract
//! or ONNX Runtime, so work that several graphs share is done once
//! (calibration routes an SDR bundle this way: every path's shared prefix
//! runs once per image).
//!
//! A [`Cut`] keeps the graph's initializers as they are, external data
//! included: its weights are read from the bundle's weight files, never
//! copied.

#[cfg(feature = "ort")]
mod ort;
mod tract;

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayView4, ArrayViewD};
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::type_proto::{Tensor as TensorType, Value as Type};
use tract_onnx::pb::{GraphProto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto};
use tract_onnx::prelude::*;

use super::graph::{Graph, OUTPUTS};
use super::tract::backend;
use super::{EngineError, ExecutionProvider};

/// A bundle graph read for cutting (its interface and external data checked).
pub struct Nodes {
    graph: Graph,
}

impl Nodes {
    pub fn read(path: &Path) -> Result<Nodes, EngineError> {
        Ok(Nodes {
            graph: Graph::read(path)?,
        })
    }

    /// The nodes' names, in the graph's (topological) order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.body().node.iter().map(|n| n.name.as_str())
    }

    fn body(&self) -> &GraphProto {
        self.graph.body()
    }

    /// The whole graph as one cut (from the image to `cls_token`).
    pub fn whole(&self) -> Result<Cut, EngineError> {
        self.cut(0..self.body().node.len())
    }

    /// Nodes `range` as a graph of their own: its input the one value they
    /// read from earlier nodes (or the graph's input), its output `cls_token`
    /// if they compute it, else the one value later nodes read from them.
    pub fn cut(&self, range: Range<usize>) -> Result<Cut, EngineError> {
        let body = self.body();
        let problem = |problem: String| EngineError::Interface {
            graph: self.graph.path.clone(),
            problem,
        };
        let nodes = body
            .node
            .get(range.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| problem(format!("no nodes {range:?} to cut")))?;
        let initializers: HashSet<&str> =
            body.initializer.iter().map(|t| t.name.as_str()).collect();
        let produced: HashSet<&str> = nodes
            .iter()
            .flat_map(|n| &n.output)
            .map(String::as_str)
            .collect();
        let inputs = distinct(
            nodes
                .iter()
                .flat_map(|n| &n.input)
                .map(String::as_str)
                .filter(|v| !produced.contains(v) && !initializers.contains(v)),
        );
        let [input] = inputs[..] else {
            return Err(problem(format!(
                "nodes {range:?} read {inputs:?}; a cut reads one value"
            )));
        };
        let output = if produced.contains(OUTPUTS[0]) {
            OUTPUTS[0]
        } else {
            let read_later = distinct(
                body.node[range.end..]
                    .iter()
                    .flat_map(|n| &n.input)
                    .map(String::as_str)
                    .filter(|v| produced.contains(v)),
            );
            let [output] = read_later[..] else {
                return Err(problem(format!(
                    "later nodes read {read_later:?} from nodes {range:?}; a cut yields one value"
                )));
            };
            output
        };
        let used: HashSet<&str> = nodes
            .iter()
            .flat_map(|n| &n.input)
            .map(String::as_str)
            .collect();
        let graph = GraphProto {
            name: "cut".into(),
            node: nodes.to_vec(),
            initializer: body
                .initializer
                .iter()
                .filter(|t| used.contains(t.name.as_str()))
                .cloned()
                .collect(),
            input: vec![value_info(input)],
            output: vec![value_info(output)],
            ..GraphProto::default()
        };
        // Without the graph's own description, so equal cuts of different
        // graphs compare equal.
        let mut model = self.graph.proto.clone();
        model.graph = Some(graph);
        model.doc_string.clear();
        Ok(Cut {
            graph: self.graph.path.clone(),
            model,
        })
    }
}

/// Value names once each, sorted (a value read twice is one input).
fn distinct<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// An f32 value of unknown shape: [`Cut::plan`] gives the shape.
fn value_info(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(Type::TensorType(TensorType {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(dimension::Value::DimParam("n".into())),
                            ..Dimension::default()
                        };
                        4
                    ],
                }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

/// Some nodes of a graph as a graph of their own.
#[derive(Clone)]
pub struct Cut {
    /// The graph cut from: external data paths are relative to its folder.
    graph: PathBuf,
    model: ModelProto,
}

/// Equal cuts compute the same thing from the same weights, whichever
/// graph they were cut from.
impl PartialEq for Cut {
    fn eq(&self, other: &Cut) -> bool {
        self.model == other.model && self.graph.parent() == other.graph.parent()
    }
}

impl std::fmt::Debug for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = self.model.graph.as_ref().map_or(0, |g| g.node.len());
        write!(f, "Cut({}, {nodes} nodes)", self.graph.display())
    }
}

/// The engine that plans and runs cuts, each run on the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    #[default]
    Tract,
    /// ONNX Runtime (feature `ort`, the library `ORT_DYLIB_PATH` names) on
    /// this provider: a cut the provider gets no node of is an error, never
    /// a quiet CPU run.
    Ort(ExecutionProvider),
}

impl Cut {
    /// Plans the cut on `engine` for an input of `shape` (its first axis the
    /// batch).
    pub fn plan(&self, shape: &[usize], engine: Engine) -> Result<Plan, EngineError> {
        let (planned, output) = match engine {
            Engine::Tract => {
                let (plan, output) = tract::plan(self, shape)?;
                (Planned::Tract(plan), output)
            }
            #[cfg(feature = "ort")]
            Engine::Ort(provider) => {
                let (plan, output) = ort::Plan::new(self, shape, provider)?;
                (Planned::Ort(plan), output)
            }
            #[cfg(not(feature = "ort"))]
            Engine::Ort(_) => return Err(EngineError::NotBuilt(super::EngineKind::Ort)),
        };
        Ok(Plan {
            graph: self.graph.clone(),
            planned,
            output,
        })
    }

    /// Why a planned cut's output cannot be passed on.
    fn unfixed_output(&self) -> EngineError {
        EngineError::Interface {
            graph: self.graph.clone(),
            problem: "a cut's output is not f32 of a fixed shape".into(),
        }
    }
}

/// A planned cut; [`Plan::spawn`] gives the state that runs it.
pub struct Plan {
    graph: PathBuf,
    planned: Planned,
    output: Vec<usize>,
}

/// A cut as its engine planned it.
enum Planned {
    Tract(Arc<TypedRunnableModel>),
    #[cfg(feature = "ort")]
    Ort(ort::Plan),
}

impl Plan {
    /// The output's shape for the planned input.
    pub fn output_shape(&self) -> &[usize] {
        &self.output
    }

    pub fn spawn(&self) -> Result<Run, EngineError> {
        let state = match &self.planned {
            Planned::Tract(plan) => {
                State::Tract(plan.spawn().map_err(|e| backend(&self.graph, e))?)
            }
            #[cfg(feature = "ort")]
            Planned::Ort(plan) => State::Ort(plan.spawn(&self.graph)?),
        };
        Ok(Run {
            graph: self.graph.clone(),
            state,
        })
    }
}

/// Runs one planned cut, reusing its buffers across images.
pub struct Run {
    graph: PathBuf,
    state: State,
}

enum State {
    Tract(TypedSimpleState),
    #[cfg(feature = "ort")]
    Ort(ort::Run),
}

/// A value passed from one cut to the next without leaving the engine
/// (either engine's cuts read the other's, at the cost of a copy into
/// tract).
pub struct Activation(Value);

enum Value {
    Tract(TValue),
    #[cfg(feature = "ort")]
    Ort(::ort::value::DynValue),
}

impl Activation {
    /// A batch of preprocessed images, `[batch, 3, H, W]`, as a tract
    /// tensor: ONNX Runtime reads it in place.
    pub fn pixels(pixels: ArrayView4<'_, f32>) -> Activation {
        Activation(Value::Tract(
            Tensor::from(pixels.as_standard_layout().into_owned()).into_tvalue(),
        ))
    }

    /// The value as an array.
    pub fn to_array(&self) -> ArrayD<f32> {
        self.view().to_owned()
    }

    /// The value in place, in standard layout.
    fn view(&self) -> ArrayViewD<'_, f32> {
        match &self.0 {
            Value::Tract(tensor) => tensor.to_plain_array_view::<f32>().ok(),
            #[cfg(feature = "ort")]
            Value::Ort(value) => value.try_extract_array::<f32>().ok(),
        }
        .expect("cuts are planned with f32 outputs")
    }
}

impl Run {
    pub fn run(&mut self, input: &Activation) -> Result<Activation, EngineError> {
        let value = match &mut self.state {
            State::Tract(state) => Value::Tract(tract::run(state, &self.graph, input)?),
            #[cfg(feature = "ort")]
            State::Ort(run) => Value::Ort(run.run(&self.graph, input)?),
        };
        Ok(Activation(value))
    }
}
