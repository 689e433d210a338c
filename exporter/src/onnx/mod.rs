//! A small builder for ONNX graphs over the protobuf types, shared by every
//! elastic family so graphs are assembled from typed calls, not templates;
//! [`layers`] holds the layers several families build from, [`weights`] the
//! teacher tensors they read.

pub mod head;
pub mod layers;
pub mod weights;

use onnx_protobuf::{
    attribute_proto::AttributeType,
    tensor_proto::{DataLocation, DataType},
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use tailor_runtime::interface::PIXEL_VALUES;

/// The ONNX opset every graph targets.
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`].
const IR_VERSION: i64 = 8;

/// A named tensor in the graph under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value(String);

impl Value {
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A symbolic dimension such as the batch.
    Named(&'static str),
}

/// Where an initializer's bytes live in an external-data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalData {
    /// Path relative to the graph file's directory.
    pub location: String,
    pub offset: u64,
    pub length: u64,
}

/// An attribute of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// Accumulates nodes, initializers and the graph's interface.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        let mut graph = GraphProto::new();
        graph.name = name.to_owned();
        GraphBuilder { graph }
    }

    /// Declares a float32 graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> Value {
        self.graph.input.push(value_info(name, dims));
        Value(name.to_owned())
    }

    /// The `pixel_values` `[batch, 3, side, side]` input every family takes.
    pub fn pixel_values(&mut self, side: usize) -> Value {
        self.input(
            PIXEL_VALUES,
            &[
                Dim::Named("batch"),
                Dim::Fixed(3),
                Dim::Fixed(side),
                Dim::Fixed(side),
            ],
        )
    }

    /// Declares `value` a float32 graph output.
    pub fn output(&mut self, value: &Value, dims: &[Dim]) {
        self.graph.output.push(value_info(&value.0, dims));
    }

    /// A float32 initializer whose data is in an external file.
    pub fn external(&mut self, name: &str, dims: &[usize], data: ExternalData) -> Value {
        let mut t = tensor(name, DataType::FLOAT, dims);
        t.data_location = DataLocation::EXTERNAL.into();
        t.external_data = [
            ("location", data.location),
            ("offset", data.offset.to_string()),
            ("length", data.length.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| {
            let mut e = StringStringEntryProto::new();
            e.key = key.to_owned();
            e.value = value;
            e
        })
        .collect();
        self.graph.initializer.push(t);
        Value(name.to_owned())
    }

    /// A small int64 constant stored inline (shapes, axes, indices).
    pub fn const_i64(&mut self, name: &str, dims: &[usize], values: &[i64]) -> Value {
        let mut t = tensor(name, DataType::INT64, dims);
        t.int64_data = values.to_vec();
        self.graph.initializer.push(t);
        Value(name.to_owned())
    }

    /// A small float32 constant stored inline.
    pub fn const_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) -> Value {
        let mut t = tensor(name, DataType::FLOAT, dims);
        t.float_data = values.to_vec();
        self.graph.initializer.push(t);
        Value(name.to_owned())
    }

    /// Adds a node named `name` whose single output is also called `name`.
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&Value],
        attrs: &[(&str, Attr)],
    ) -> Value {
        self.node_with_outputs(op, name, inputs, attrs, &[name])
            .pop()
            .expect("one output")
    }

    /// Adds a node with several named outputs.
    pub fn node_with_outputs(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&Value],
        attrs: &[(&str, Attr)],
        outputs: &[&str],
    ) -> Vec<Value> {
        let mut node = NodeProto::new();
        node.op_type = op.to_owned();
        node.name = name.to_owned();
        node.input = inputs.iter().map(|v| v.0.clone()).collect();
        node.output = outputs.iter().map(|&o| o.to_owned()).collect();
        node.attribute = attrs.iter().map(|(n, a)| attribute(n, a)).collect();
        self.graph.node.push(node);
        outputs.iter().map(|&o| Value(o.to_owned())).collect()
    }

    /// `x` reshaped to `shape`, stored as the constant `{name}.shape`.
    pub fn reshape(&mut self, name: &str, x: &Value, shape: &[i64]) -> Value {
        let dims = self.const_i64(&format!("{name}.shape"), &[shape.len()], shape);
        self.node("Reshape", name, &[x, &dims], &[])
    }

    pub fn transpose(&mut self, name: &str, x: &Value, perm: &[i64]) -> Value {
        self.node(
            "Transpose",
            name,
            &[x],
            &[("perm", Attr::Ints(perm.to_vec()))],
        )
    }

    /// `x[starts..ends]` along `axes`, the bounds stored as constants
    /// `{name}.starts`, `{name}.ends` and `{name}.axes`.
    pub fn slice(
        &mut self,
        name: &str,
        x: &Value,
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
    ) -> Value {
        let n = axes.len();
        let starts = self.const_i64(&format!("{name}.starts"), &[n], starts);
        let ends = self.const_i64(&format!("{name}.ends"), &[n], ends);
        let axes = self.const_i64(&format!("{name}.axes"), &[n], axes);
        self.node("Slice", name, &[x, &starts, &ends, &axes], &[])
    }

    /// Wraps the graph in a model with our opset and producer.
    pub fn finish(self, doc: &str) -> ModelProto {
        let mut model = ModelProto::new();
        model.ir_version = IR_VERSION;
        model.producer_name = "tailor-exporter".to_owned();
        model.producer_version = env!("CARGO_PKG_VERSION").to_owned();
        model.doc_string = doc.to_owned();
        let mut opset = OperatorSetIdProto::new();
        opset.version = OPSET;
        model.opset_import.push(opset);
        model.graph = protobuf::MessageField::some(self.graph);
        model
    }
}

fn tensor(name: &str, data_type: DataType, dims: &[usize]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_owned();
    t.data_type = data_type as i32;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .map(|d| {
            let mut dim = Dimension::new();
            dim.value = Some(match *d {
                Dim::Fixed(n) => dimension::Value::DimValue(n as i64),
                Dim::Named(s) => dimension::Value::DimParam(s.to_owned()),
            });
            dim
        })
        .collect();
    let mut tensor_type = type_proto::Tensor::new();
    tensor_type.elem_type = DataType::FLOAT as i32;
    tensor_type.shape = protobuf::MessageField::some(shape);
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor_type));
    let mut info = ValueInfoProto::new();
    info.name = name.to_owned();
    info.type_ = protobuf::MessageField::some(ty);
    info
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_owned();
    match value {
        Attr::Int(i) => {
            a.type_ = AttributeType::INT.into();
            a.i = *i;
        }
        Attr::Ints(v) => {
            a.type_ = AttributeType::INTS.into();
            a.ints = v.clone();
        }
        Attr::Float(f) => {
            a.type_ = AttributeType::FLOAT.into();
            a.f = *f;
        }
    }
    a
}
