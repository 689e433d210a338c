//! The QDQ rewrite of one graph: each MatMul/Gemm/Conv weight read through
//! a DequantizeLinear from the int8 file, each activation such a node reads
//! passed through QuantizeLinear → DequantizeLinear, and so is the output
//! of each Gemm and Conv with a stored weight. Every other node (LayerNorm,
//! Softmax, GELU, GroupNorm, residual adds) is untouched and runs in float;
//! engines fuse each DQ → product → Q group into an integer kernel.
//!
//! Why the outputs: ONNX Runtime's CPU provider fuses a Gemm or Conv into
//! QGemm/QLinearConv only when a QuantizeLinear follows it; without one it
//! dequantises the weight and runs the product in float, as fast as fp32
//! (measured on ViT-S/16, docs/precision.md). The attention MatMuls
//! (activation × activation) keep float outputs: ONNX Runtime runs them as
//! integer kernels either way (MatMulIntegerToFloat), and the scores feed
//! the Softmax, which an 8-bit step before it would coarsen.

use std::collections::{BTreeMap, HashMap, HashSet};

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

use super::activation::{Encoding, QParams};
use super::external::{dims, extent, relocated, Extent};
use super::store::{Placed, Stored};
use super::QuantError;

/// The operators whose inputs are quantised.
const OPS: [&str; 3] = ["MatMul", "Gemm", "Conv"];
/// Those whose output is quantised too, when their weight is stored.
const OUTPUT_OPS: [&str; 2] = ["Gemm", "Conv"];
/// The first opset with per-axis DequantizeLinear.
const MIN_OPSET: i64 = 13;

/// What the rewrite does with one node.
#[derive(Debug, Clone, PartialEq)]
enum NodePlan {
    /// Not a quantised operator, or one whose weight is inline in the graph
    /// (a task head's, fitted per sub-network): it stays float.
    Float,
    Quantized {
        /// Inputs read from the graph's input.
        activations: Vec<usize>,
        /// Its output is quantised too ([`OUTPUT_OPS`] with a stored
        /// weight, unless the output is the graph's).
        output: bool,
    },
}

/// One graph, read for the rewrite.
#[derive(Debug)]
pub(super) struct Scan<'m> {
    id: String,
    model: &'m ModelProto,
    /// Its initializers stored in the width's file, by name.
    external: HashMap<String, (Extent, Vec<usize>)>,
    /// The weight initializers and their channel axes.
    weights: BTreeMap<String, usize>,
    /// One per node.
    plans: Vec<NodePlan>,
}

/// Reads graph `id`, whose external data must all be in `location`.
pub(super) fn scan<'m>(
    id: &str,
    model: &'m ModelProto,
    location: &str,
) -> Result<Scan<'m>, QuantError> {
    let graph = body(id, model)?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .unwrap_or(0);
    if opset < MIN_OPSET {
        return Err(QuantError::Opset {
            graph: id.to_owned(),
            opset,
        });
    }
    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut external = HashMap::new();
    for t in &graph.initializer {
        if t.data_location.enum_value() != Ok(DataLocation::EXTERNAL) {
            continue;
        }
        external.insert(t.name.clone(), (extent(id, t, location)?, dims(t)));
    }
    let mut dynamic: HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !initializers.contains_key(n))
        .collect();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut weights = BTreeMap::new();
    let mut plans = Vec::with_capacity(graph.node.len());
    // ONNX nodes are in topological order: one pass finds what depends on the input.
    for node in &graph.node {
        let mut plan = plan(id, node, &initializers, &external, &dynamic, &mut weights)?;
        if let NodePlan::Quantized { output, .. } = &mut plan {
            *output &= node.output.len() == 1 && !outputs.contains(node.output[0].as_str());
        }
        if node.input.iter().any(|i| dynamic.contains(i.as_str())) {
            dynamic.extend(node.output.iter().map(String::as_str));
        }
        plans.push(plan);
    }
    Ok(Scan {
        id: id.to_owned(),
        model,
        external,
        weights,
        plans,
    })
}

/// How `node` is rewritten; its stored weight, if any, joins `weights`.
fn plan(
    id: &str,
    node: &NodeProto,
    initializers: &HashMap<&str, &TensorProto>,
    external: &HashMap<String, (Extent, Vec<usize>)>,
    dynamic: &HashSet<&str>,
    weights: &mut BTreeMap<String, usize>,
) -> Result<NodePlan, QuantError> {
    if !OPS.contains(&node.op_type.as_str()) {
        return Ok(NodePlan::Float);
    }
    let mut activations = Vec::new();
    let mut weight = None;
    // Inputs 0 and 1 are multiplied; a Gemm's or Conv's bias stays float.
    for (index, input) in node.input.iter().enumerate().take(2) {
        if dynamic.contains(input.as_str()) {
            activations.push(index);
        } else if initializers.contains_key(input.as_str()) {
            let Some((_, shape)) = external.get(input) else {
                return Ok(NodePlan::Float);
            };
            if index != 1 {
                return Err(QuantError::WeightPosition {
                    graph: id.to_owned(),
                    op: node.op_type.clone(),
                    node: node.name.clone(),
                    index,
                });
            }
            weight = Some((input.clone(), channel_axis(node, shape.len())));
        } else {
            return Err(QuantError::ComputedWeight {
                graph: id.to_owned(),
                op: node.op_type.clone(),
                node: node.name.clone(),
                tensor: input.clone(),
            });
        }
    }
    let output = weight.is_some() && OUTPUT_OPS.contains(&node.op_type.as_str());
    weights.extend(weight);
    Ok(NodePlan::Quantized {
        activations,
        output,
    })
}

/// The output-channel axis of `node`'s weight (input 1) of rank `rank`:
/// Conv `[M, C, kh, kw]` 0; Gemm 0 when `transB` (PyTorch's `[out, in]`),
/// else 1; MatMul `[.., K, N]` the last.
fn channel_axis(node: &NodeProto, rank: usize) -> usize {
    match node.op_type.as_str() {
        "Gemm" => {
            let trans_b = node
                .attribute
                .iter()
                .any(|a| a.name == "transB" && a.i != 0);
            usize::from(!trans_b)
        }
        "MatMul" => rank.saturating_sub(1),
        _ => 0,
    }
}

impl Scan<'_> {
    /// Adds the stored tensors this graph reads to the width's `stored`.
    pub fn collect(&self, stored: &mut BTreeMap<Extent, Stored>) -> Result<(), QuantError> {
        for (name, (extent, dims)) in &self.external {
            let axis = self.weights.get(name).copied();
            let entry = stored.entry(*extent).or_insert_with(|| Stored {
                name: name.clone(),
                dims: dims.clone(),
                axis,
            });
            match (entry.axis, axis) {
                (Some(a), Some(b)) if a != b => {
                    return Err(QuantError::Conflict {
                        offset: extent.offset,
                        length: extent.length,
                        first: entry.name.clone(),
                        first_axis: entry.axis,
                        second: name.clone(),
                        second_axis: axis,
                    })
                }
                // A weight in any graph is int8 in the file; graphs that
                // read it otherwise dequantise it too.
                (None, Some(_)) => entry.axis = axis,
                _ => {}
            }
        }
        Ok(())
    }

    /// The activations to quantise, each once, in graph order: the
    /// products' inputs and the outputs of [`OUTPUT_OPS`].
    pub fn activations(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        let graph = self.model.graph.as_ref().expect("checked by scan");
        graph
            .node
            .iter()
            .zip(&self.plans)
            .flat_map(|(node, plan)| match plan {
                NodePlan::Float => Vec::new(),
                NodePlan::Quantized {
                    activations,
                    output,
                } => activations
                    .iter()
                    .map(|&i| node.input[i].as_str())
                    .chain(output.then_some(node.output[0].as_str()))
                    .collect(),
            })
            .filter(|name| seen.insert(*name))
            .collect()
    }

    /// The graph reading the int8 file laid out as `placed`, each activation
    /// quantised with `qparams[name]`.
    pub fn rewrite(
        &self,
        placed: &BTreeMap<Extent, Placed>,
        qparams: &HashMap<&str, QParams>,
    ) -> Result<ModelProto, QuantError> {
        let graph = self.model.graph.as_ref().expect("checked by scan");
        let mut out = Emitter {
            graph: &self.id,
            taken: graph
                .initializer
                .iter()
                .map(|t| t.name.as_str())
                .chain(graph.input.iter().map(|i| i.name.as_str()))
                .chain(
                    graph
                        .node
                        .iter()
                        .flat_map(|n| &n.output)
                        .map(String::as_str),
                )
                .collect(),
            fresh: HashSet::new(),
            initializers: Vec::with_capacity(graph.initializer.len()),
            nodes: Vec::with_capacity(2 * graph.node.len()),
        };
        for t in &graph.initializer {
            let Some((extent, _)) = self.external.get(&t.name) else {
                out.initializers.push(t.clone());
                continue;
            };
            out.weight(t, &placed[extent])?;
        }
        let range = |x: &str| {
            qparams.get(x).ok_or_else(|| QuantError::NoRange {
                graph: self.id.clone(),
                tensor: x.to_owned(),
            })
        };
        // Tensors passed through a Q → DQ pair, to their dequantised names.
        // A product's input is read dequantised by the products only; a
        // product's quantised output by every node after it.
        let mut dequantized: HashMap<&str, String> = HashMap::new();
        let mut requantized: HashSet<&str> = HashSet::new();
        for (original, plan) in graph.node.iter().zip(&self.plans) {
            let mut n = original.clone();
            for (input, read) in original.input.iter().zip(&mut n.input) {
                if requantized.contains(input.as_str()) {
                    read.clone_from(&dequantized[input.as_str()]);
                }
            }
            let NodePlan::Quantized {
                activations,
                output,
            } = plan
            else {
                out.nodes.push(n);
                continue;
            };
            for &i in activations {
                let x = original.input[i].as_str();
                if !dequantized.contains_key(x) {
                    let dq = out.pair(x, range(x)?)?;
                    dequantized.insert(x, dq);
                }
                n.input[i].clone_from(&dequantized[x]);
            }
            out.nodes.push(n);
            if *output {
                let y = original.output[0].as_str();
                let dq = out.pair(y, range(y)?)?;
                dequantized.insert(y, dq);
                requantized.insert(y);
            }
        }
        let mut model = self.model.clone();
        let body: &mut GraphProto = model.graph.as_mut().expect("checked by scan");
        body.initializer = out.initializers;
        body.node = out.nodes;
        Ok(model)
    }
}

/// The rewritten graph's initializers and nodes as they are emitted, and
/// the names they take.
struct Emitter<'a> {
    graph: &'a str,
    /// The original graph's names.
    taken: HashSet<&'a str>,
    /// The names the rewrite added.
    fresh: HashSet<String>,
    initializers: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
}

impl Emitter<'_> {
    /// `name`, refused if the graph already has it.
    fn claim(&mut self, name: String) -> Result<String, QuantError> {
        if self.taken.contains(name.as_str()) || !self.fresh.insert(name.clone()) {
            return Err(QuantError::NameTaken {
                graph: self.graph.to_owned(),
                name,
            });
        }
        Ok(name)
    }

    /// Stored initializer `t` as the int8 file places it: a float tensor
    /// relocated, or a weight's int8 values, scales and zero points read
    /// through a DequantizeLinear whose output keeps the weight's name.
    fn weight(&mut self, t: &TensorProto, place: &Placed) -> Result<(), QuantError> {
        match place {
            Placed::Float(place) => {
                self.initializers
                    .push(relocated(t, &t.name, DataType::FLOAT, &t.dims, place));
            }
            Placed::Weight {
                values,
                scales,
                zero_points,
                axis,
                channels,
            } => {
                let q = self.claim(format!("{}.quantized", t.name))?;
                let s = self.claim(format!("{}.scale", t.name))?;
                let z = self.claim(format!("{}.zero_point", t.name))?;
                let per_channel = [*channels as i64];
                self.initializers
                    .push(relocated(t, &q, DataType::INT8, &t.dims, values));
                self.initializers
                    .push(relocated(t, &s, DataType::FLOAT, &per_channel, scales));
                self.initializers
                    .push(relocated(t, &z, DataType::INT8, &per_channel, zero_points));
                let mut dq = node(
                    "DequantizeLinear",
                    &format!("{}.dequantize", t.name),
                    [q, s, z],
                    &t.name,
                );
                dq.attribute.push(axis_attribute(*axis));
                self.nodes.push(dq);
            }
        }
        Ok(())
    }

    /// `x → QuantizeLinear → DequantizeLinear` with `p`; returns the
    /// dequantised tensor's name.
    fn pair(&mut self, x: &str, p: &QParams) -> Result<String, QuantError> {
        let s = self.claim(format!("{x}.scale"))?;
        let z = self.claim(format!("{x}.zero_point"))?;
        let q = self.claim(format!("{x}.quantized"))?;
        let dq = self.claim(format!("{x}.dequantized"))?;
        self.initializers.push(scalar_scale(&s, p.scale));
        self.initializers.push(scalar_zero_point(&z, p));
        self.nodes.push(node(
            "QuantizeLinear",
            &format!("{x}.quantize"),
            [x.to_owned(), s.clone(), z.clone()],
            &q,
        ));
        self.nodes.push(node(
            "DequantizeLinear",
            &format!("{x}.dequantize"),
            [q, s, z],
            &dq,
        ));
        Ok(dq)
    }
}

pub(super) fn body<'m>(id: &str, model: &'m ModelProto) -> Result<&'m GraphProto, QuantError> {
    model.graph.as_ref().ok_or_else(|| QuantError::NoGraph {
        graph: id.to_owned(),
    })
}

fn scalar_scale(name: &str, scale: f32) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_owned();
    t.data_type = DataType::FLOAT as i32;
    t.float_data = vec![scale];
    t
}

/// The zero point's type is the quantised tensor's: int8 or uint8.
fn scalar_zero_point(name: &str, p: &QParams) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_owned();
    t.data_type = match p.encoding {
        Encoding::S8 => DataType::INT8,
        Encoding::U8 => DataType::UINT8,
    } as i32;
    t.int32_data = vec![p.zero_point];
    t
}

pub(super) fn node<const N: usize>(
    op: &str,
    name: &str,
    inputs: [String; N],
    output: &str,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.to_owned();
    n.name = name.to_owned();
    n.input = inputs.into();
    n.output = vec![output.to_owned()];
    n
}

fn axis_attribute(axis: usize) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = "axis".to_owned();
    a.type_ = AttributeType::INT.into();
    a.i = axis as i64;
    a
}
