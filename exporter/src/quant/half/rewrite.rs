//! One graph in float16: its stored tensors read from the fp16 file, each
//! node computing in the form its operator allows, and a Cast wherever a
//! tensor meets a node that wants the other form.
//!
//! The forms: products, activations and pooling compute in float16;
//! LayerNorm, Softmax and reductions in float32 (their sums and exponentials
//! overflow float16's ±65504), as does the arithmetic that reads their
//! results (the rest of a decomposed GroupNorm: centring, square, variance,
//! division) and data movement that carries them, until a float16 operator
//! reads them. Constants inline in the graph stay float32 (engines fold
//! their Casts); the graph's inputs and outputs stay float32.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::type_proto::Value as TypeValue;
use onnx_protobuf::{AttributeProto, ModelProto, NodeProto};

use super::super::external::{extent, relocated};
use super::super::graph::{body, node};
use super::super::QuantError;
use super::Placed;

/// The float type a tensor holds or a node computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Form {
    Half,
    Single,
}

impl Form {
    fn data_type(self) -> DataType {
        match self {
            Form::Half => DataType::FLOAT16,
            Form::Single => DataType::FLOAT,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Form::Half => "fp16",
            Form::Single => "fp32",
        }
    }
}

/// How an operator treats float tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Computes in float16: products, activations, pooling.
    Half,
    /// Computes in float32: its sums or exponentials overflow float16.
    Single,
    /// Elementwise arithmetic: float32 when it reads a float32 result,
    /// else float16.
    Arithmetic,
    /// Moves values without arithmetic: in its data input's form.
    Movement,
    /// Compares (float32), its output not a float.
    Compare,
    /// Reads only its input's shape.
    Shape,
}

fn role(op: &str) -> Option<Role> {
    Some(match op {
        "Gemm" | "MatMul" | "Conv" | "Erf" | "Relu" | "Sigmoid" | "Tanh" | "MaxPool"
        | "AveragePool" | "GlobalAveragePool" => Role::Half,
        "LayerNormalization"
        | "GroupNormalization"
        | "InstanceNormalization"
        | "Softmax"
        | "LogSoftmax"
        | "ReduceMean"
        | "ReduceSum" => Role::Single,
        "Add" | "Sub" | "Mul" | "Div" | "Sqrt" | "Pow" | "Neg" | "Reciprocal" => Role::Arithmetic,
        "Reshape" | "Transpose" | "Gather" | "Slice" | "Split" | "Concat" | "Expand" | "Pad"
        | "Where" | "Squeeze" | "Unsqueeze" | "Flatten" | "Identity" | "Tile" => Role::Movement,
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => Role::Compare,
        "Shape" | "Size" => Role::Shape,
        _ => return None,
    })
}

/// The tensors of the graph being rewritten.
struct Tensors {
    /// The form of every float tensor, by its name in the new graph.
    forms: HashMap<String, Form>,
    /// Those computed in float32 by a [`Role::Single`] node or from one.
    single_results: HashSet<String>,
    /// Graph outputs computed in float16, renamed: original → new name.
    renamed: HashMap<String, String>,
    /// Casts made so far: (tensor, form) → the cast's output.
    casts: HashMap<(String, Form), String>,
    /// Every name in use, so a new one cannot shadow it.
    taken: HashSet<String>,
}

impl Tensors {
    fn claim(&mut self, graph: &str, name: String) -> Result<String, QuantError> {
        if !self.taken.insert(name.clone()) {
            return Err(QuantError::NameTaken {
                graph: graph.to_owned(),
                name,
            });
        }
        Ok(name)
    }

    /// `name` as the new graph calls it.
    fn current<'n>(&'n self, name: &'n str) -> &'n str {
        self.renamed.get(name).map_or(name, String::as_str)
    }
}

/// Graph `id` reading the fp16 file laid out as `placed`, computing in
/// float16 where its operators allow.
pub(super) fn rewrite(
    id: &str,
    model: &ModelProto,
    location: &str,
    placed: &Placed,
) -> Result<ModelProto, QuantError> {
    let graph = body(id, model)?;
    let mut t = Tensors {
        forms: HashMap::new(),
        single_results: HashSet::new(),
        renamed: HashMap::new(),
        casts: HashMap::new(),
        taken: graph
            .initializer
            .iter()
            .map(|t| t.name.clone())
            .chain(graph.input.iter().map(|i| i.name.clone()))
            .chain(graph.node.iter().flat_map(|n| n.output.clone()))
            .collect(),
    };
    let mut initializers = Vec::with_capacity(graph.initializer.len());
    for init in &graph.initializer {
        if init.data_location.enum_value() == Ok(DataLocation::EXTERNAL) {
            let place = &placed[&extent(id, init, location)?];
            initializers.push(relocated(
                init,
                &init.name,
                DataType::FLOAT16,
                &init.dims,
                place,
            ));
            t.forms.insert(init.name.clone(), Form::Half);
        } else {
            if init.data_type == DataType::FLOAT as i32 {
                t.forms.insert(init.name.clone(), Form::Single);
            }
            initializers.push(init.clone());
        }
    }
    for input in &graph.input {
        if is_float(input) && !t.forms.contains_key(&input.name) {
            t.forms.insert(input.name.clone(), Form::Single);
        }
    }
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();

    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    for original in &graph.node {
        let role = role(&original.op_type).ok_or_else(|| QuantError::Fp16Op {
            graph: id.to_owned(),
            op: original.op_type.clone(),
            node: original.name.clone(),
        })?;
        let mut n = original.clone();
        for input in n.input.iter_mut().filter(|i| !i.is_empty()) {
            *input = t.current(input).to_owned();
        }
        let float_inputs: Vec<&String> = n
            .input
            .iter()
            .filter(|i| t.forms.contains_key(*i))
            .collect();
        let reads_single_result =
            |inputs: &[&String]| inputs.iter().any(|i| t.single_results.contains(i.as_str()));
        let form = match role {
            Role::Shape => {
                nodes.push(n);
                continue;
            }
            Role::Half => Form::Half,
            Role::Single | Role::Compare => Form::Single,
            Role::Arithmetic if reads_single_result(&float_inputs) => Form::Single,
            Role::Movement if reads_single_result(&float_inputs[..float_inputs.len().min(1)]) => {
                Form::Single
            }
            Role::Arithmetic | Role::Movement => Form::Half,
        };
        for i in 0..n.input.len() {
            let input = n.input[i].clone();
            if t.forms.get(&input).is_some_and(|&f| f != form) {
                n.input[i] = cast(id, &mut t, &mut nodes, &input, form)?;
            }
        }
        if role != Role::Compare {
            for o in n.output.iter_mut().filter(|o| !o.is_empty()) {
                if form == Form::Half && outputs.contains(o.as_str()) {
                    let new = t.claim(id, format!("{o}.{}", form.suffix()))?;
                    t.renamed.insert(o.clone(), new.clone());
                    *o = new;
                }
                t.forms.insert(o.clone(), form);
                if form == Form::Single {
                    t.single_results.insert(o.clone());
                }
            }
        }
        if n.op_type == "Gemm" && form == Form::Half {
            push_gemm(id, &mut t, &mut nodes, n)?;
        } else {
            nodes.push(n);
        }
    }
    for o in &graph.output {
        if let Some(half) = t.renamed.get(&o.name) {
            // Named apart from the node that computed it, which often shares the output's name.
            let name = format!("{}.to_{}", o.name, Form::Single.suffix());
            nodes.push(cast_node(&name, half, &o.name, Form::Single));
        }
    }
    let mut model = model.clone();
    let body = model.graph.as_mut().expect("checked by body");
    body.initializer = initializers;
    body.node = nodes;
    Ok(model)
}

/// Gemm `n` as MatMul (and Add for its bias): tract 0.23 cannot translate
/// a float16 Gemm (its expansion yields float32), and a plain product is
/// what every engine fuses anyway. Only the form the exporter writes
/// (`alpha = beta = 1`, `transA = 0`) is spelled out; `transB` becomes a
/// Transpose of the weight, which engines fold.
fn push_gemm(
    id: &str,
    t: &mut Tensors,
    nodes: &mut Vec<NodeProto>,
    n: NodeProto,
) -> Result<(), QuantError> {
    let attribute = |name: &str| n.attribute.iter().find(|a| a.name == name);
    let is = |name: &str, default: f32| {
        attribute(name).map_or(default, |a| {
            if a.type_.enum_value() == Ok(AttributeType::INT) {
                a.i as f32
            } else {
                a.f
            }
        }) == default
    };
    if !(is("alpha", 1.0) && is("beta", 1.0) && is("transA", 0.0)) {
        return Err(QuantError::Fp16Op {
            graph: id.to_owned(),
            op: "Gemm with alpha, beta or transA".to_owned(),
            node: n.name.clone(),
        });
    }
    let mut weight = n.input[1].clone();
    if !is("transB", 0.0) {
        let transposed = t.claim(id, format!("{weight}.transposed"))?;
        nodes.push(node("Transpose", &transposed, [weight], &transposed));
        t.forms.insert(transposed.clone(), Form::Half);
        weight = transposed;
    }
    let output = n.output[0].clone();
    let product = match n.input.get(2).filter(|c| !c.is_empty()) {
        None => output.clone(),
        Some(_) => t.claim(id, format!("{}.product", n.name))?,
    };
    nodes.push(node(
        "MatMul",
        &format!("{}.matmul", n.name),
        [n.input[0].clone(), weight],
        &product,
    ));
    if let Some(bias) = n.input.get(2).filter(|c| !c.is_empty()) {
        nodes.push(node("Add", &n.name, [product, bias.clone()], &output));
    }
    Ok(())
}

/// `tensor` in `form`, through a Cast made once.
fn cast(
    id: &str,
    t: &mut Tensors,
    nodes: &mut Vec<NodeProto>,
    tensor: &str,
    form: Form,
) -> Result<String, QuantError> {
    let key = (tensor.to_owned(), form);
    if let Some(name) = t.casts.get(&key) {
        return Ok(name.clone());
    }
    let name = t.claim(id, format!("{tensor}.to_{}", form.suffix()))?;
    nodes.push(cast_node(&name, tensor, &name, form));
    t.forms.insert(name.clone(), form);
    t.casts.insert(key, name.clone());
    Ok(name)
}

fn cast_node(name: &str, input: &str, output: &str, form: Form) -> NodeProto {
    let mut n = node("Cast", name, [input.to_owned()], output);
    let mut to = AttributeProto::new();
    to.name = "to".to_owned();
    to.type_ = AttributeType::INT.into();
    to.i = form.data_type() as i64;
    n.attribute.push(to);
    n
}

fn is_float(v: &onnx_protobuf::ValueInfoProto) -> bool {
    let tensor = v.type_.as_ref().and_then(|t| match &t.value {
        Some(TypeValue::TensorType(tensor)) => Some(tensor),
        _ => None,
    });
    tensor.is_some_and(|t| t.elem_type == DataType::FLOAT as i32)
}
