use std::collections::BTreeMap;

use onnx_protobuf::ModelProto;
use tailor_calibration::ranges::Range;

use super::weights;
use super::*;
use crate::onnx::layers::Linear;
use crate::onnx::{Dim, ExternalData, GraphBuilder};

const FP32: &str = "weights/w4.bin";

fn range(min: f32, max: f32) -> Range {
    Range {
        min,
        max,
        abs_percentile: min.abs().max(max),
    }
}

fn at(offset: u64, floats: u64) -> ExternalData {
    ExternalData {
        location: FP32.to_owned(),
        offset,
        length: 4 * floats,
    }
}

/// `x [batch, 4]` through `layers` Gemms of 4 → 4 whose weights and biases
/// lie at the same offsets in every graph (64 floats per layer), as a
/// width's depth variants read its file.
fn stack(layers: usize) -> ModelProto {
    let mut b = GraphBuilder::new("stack");
    let mut x = b.input("x", &[Dim::Named("batch"), Dim::Fixed(4)]);
    for i in 0..layers {
        let base = 4 * 64 * i as u64;
        let l = Linear {
            weight: b.external(&format!("fc{i}.weight"), &[4, 4], at(base, 16)),
            bias: Some(b.external(&format!("fc{i}.bias"), &[4], at(base + 64, 4))),
        };
        x = b.linear(&format!("fc{i}"), &x, &l);
    }
    b.output(&x, &[Dim::Named("batch"), Dim::Fixed(4)]);
    b.finish("test")
}

/// Weight file floats: the i-th float is `(i % 16) - 7.5` over 16.
fn fp32_file(layers: usize) -> Vec<u8> {
    (0..64 * layers)
        .flat_map(|i| (((i % 16) as f32 - 7.5) / 16.0).to_le_bytes())
        .collect()
}

fn ranges(layers: usize) -> BTreeMap<String, Range> {
    let mut r = BTreeMap::from([("x".to_owned(), range(-1.0, 2.0))]);
    for i in 0..layers.saturating_sub(1) {
        r.insert(format!("fc{i}"), range(-3.0, 0.5));
    }
    r
}

fn subnet<'a>(id: &'a str, model: &'a ModelProto, r: &'a BTreeMap<String, Range>) -> Subnet<'a> {
    Subnet {
        id,
        model,
        ranges: r,
        samples: None,
    }
}

#[test]
fn qparams_follow_onnx_runtimes_arithmetic() {
    let s8 = QParams::covering(-2.0, 1.0, Encoding::S8);
    assert_eq!((s8.scale, s8.zero_point), ((4.0f64 / 254.0) as f32, 0));
    // Saturates at ±127: -128 is never produced.
    assert_eq!((s8.quantize(5.0), s8.quantize(-5.0)), (127, -127));
    let u8 = QParams::covering(-1.0, 3.0, Encoding::U8);
    // zero point round(1 / (4/255)) = round(63.75).
    assert_eq!((u8.scale, u8.zero_point), ((4.0f64 / 255.0) as f32, 64));
    assert_eq!(u8.quantize(-1.0), 0);
    // A range without 0 is widened to hold it.
    let positive = QParams::covering(0.5, 2.0, Encoding::U8);
    assert_eq!(
        (positive.scale, positive.zero_point),
        ((2.0f64 / 255.0) as f32, 0)
    );
    // Halves round to even, as QuantizeLinear does.
    let unit = QParams::covering(0.0, 255.0, Encoding::U8);
    assert_eq!((unit.quantize(2.5), unit.quantize(3.5)), (2, 4));
    assert_eq!(QParams::covering(0.0, 0.0, Encoding::S8).scale, 1.0);
}

#[test]
fn weights_are_scaled_per_output_channel() {
    let w = [1.0, -2.0, 0.5, 0.1, 0.2, -0.4];
    let rows = weights::quantize(&w, &[2, 3], 0);
    assert_eq!(rows.scales, [2.0 / 127.0, 0.4 / 127.0]);
    // 63.5 and 31.75 round to 64 and 32.
    assert_eq!(rows.values, [64, -127, 32, 32, 64, -127]);
    let columns = weights::quantize(&w, &[2, 3], 1);
    assert_eq!(columns.scales, [1.0 / 127.0, 2.0 / 127.0, 0.5 / 127.0]);
    assert_eq!(columns.values, [127, -127, 127, 13, 13, -102]);
}

#[test]
fn mse_clips_an_outlier_and_keeps_a_uniform_range() {
    let uniform: Vec<f32> = (0..10_000).map(|i| i as f32 / 5_000.0 - 1.0).collect();
    let full = range(-1.0, 1.0);
    let mse = |r: &Range, sample: &[f32]| {
        Calibrator::Mse
            .qparams("t", r, Some(sample), Encoding::S8)
            .unwrap()
    };
    // Clipping a uniform range only adds error.
    assert_eq!(
        mse(&full, &uniform),
        QParams::covering(-1.0, 1.0, Encoding::S8)
    );
    // The range saw one value at 100 that the sample missed (it is the
    // bulk's values): min-max's steps would be 100 times too coarse, and
    // the clip keeps the negative side whole in either encoding.
    let clipped = mse(&range(-1.0, 100.0), &uniform);
    assert_eq!(clipped, QParams::covering(-1.0, 1.0, Encoding::S8));
    let u8 = Calibrator::Mse.qparams("t", &range(-1.0, 100.0), Some(&uniform), Encoding::U8);
    assert_eq!(u8, Ok(QParams::covering(-1.0, 1.0, Encoding::U8)));
    assert_eq!(
        Calibrator::Mse.qparams("t", &full, None, Encoding::S8),
        Err(QuantError::NoSample { tensor: "t".into() })
    );
    // The percentile clips at the recorded |x| percentile.
    let p = Range {
        abs_percentile: 1.0,
        ..range(-1.0, 100.0)
    };
    let percentile = Calibrator::Percentile.qparams("t", &p, None, Encoding::S8);
    assert_eq!(percentile, Ok(QParams::covering(-1.0, 1.0, Encoding::S8)));
}

/// The initializer `name` of `model`'s graph.
fn initializer<'m>(model: &'m ModelProto, name: &str) -> &'m onnx_protobuf::TensorProto {
    model
        .graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no `{name}`"))
}

#[test]
fn depth_variants_share_one_int8_file() {
    let (one, two) = (stack(1), stack(2));
    let (r1, r2) = (ranges(1), ranges(2));
    let width = quantize_width(
        &fp32_file(2),
        FP32,
        &[subnet("d1", &one, &r1), subnet("d2", &two, &r2)],
        Calibrator::MinMax,
        Encoding::U8,
    )
    .unwrap();
    assert_eq!(width.location, "weights/w4.int8.bin");
    // Per layer, each at 64 bytes: 16 int8 values, 4 scales, 4 zero points, 4 float biases.
    assert_eq!(width.bytes.len(), 64 * 7 + 16);
    let place = |m: &ModelProto, name: &str| initializer(m, name).external_data.clone();
    let (a, b) = (&width.graphs[0], &width.graphs[1]);
    for name in ["fc0.weight.quantized", "fc0.weight.scale", "fc0.bias"] {
        assert_eq!(place(a, name), place(b, name), "{name}");
    }
    // fc0's int8 values are the file's first 16 bytes: row r of the weight
    // is (4r..4r+4 − 7.5)/16, scaled by its largest |w|.
    let first: Vec<i8> = width.bytes[..16].iter().map(|&v| v as i8).collect();
    assert_eq!(first[..4], [-127, -110, -93, -76]);
    let nodes: Vec<(&str, &str)> = b
        .graph
        .node
        .iter()
        .map(|n| (n.op_type.as_str(), n.name.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("DequantizeLinear", "fc0.weight.dequantize"),
            ("DequantizeLinear", "fc1.weight.dequantize"),
            ("QuantizeLinear", "x.quantize"),
            ("DequantizeLinear", "x.dequantize"),
            ("Gemm", "fc0"),
            ("QuantizeLinear", "fc0.quantize"),
            ("DequantizeLinear", "fc0.dequantize"),
            ("Gemm", "fc1"),
        ]
    );
    let gemm = &b.graph.node[4];
    assert_eq!(gemm.input, ["x.dequantized", "fc0.weight", "fc0.bias"]);
    // Gemm(transB=1) weights are [out, in]: channels on axis 0.
    assert_eq!(b.graph.node[0].attribute[0].i, 0);
    let zero_point = initializer(b, "fc0.zero_point");
    assert_eq!(
        zero_point.int32_data,
        [QParams::covering(-3.0, 0.5, Encoding::U8).zero_point]
    );
}

#[test]
fn refusals_name_the_fix() {
    let model = stack(2);
    let fp32 = fp32_file(2);
    let run = |model: &ModelProto, r: &BTreeMap<String, Range>| {
        quantize_width(
            &fp32,
            FP32,
            &[subnet("d2", model, r)],
            Calibrator::MinMax,
            Encoding::S8,
        )
    };
    let e = run(&model, &ranges(1)).unwrap_err();
    assert_eq!(
        e,
        QuantError::NoRange {
            graph: "d2".into(),
            tensor: "fc0".into()
        }
    );
    assert!(e.to_string().contains("--ranges inner"), "{e}");
    let mut old = model.clone();
    old.opset_import[0].version = 11;
    assert!(matches!(
        run(&old, &ranges(2)),
        Err(QuantError::Opset { opset: 11, .. })
    ));
    let elsewhere = quantize_width(
        &fp32,
        "weights/w8.bin",
        &[subnet("d2", &model, &ranges(2))],
        Calibrator::MinMax,
        Encoding::S8,
    );
    assert!(matches!(elsewhere, Err(QuantError::Location { .. })));
    // The same bytes as a Gemm(transB=1) weight (axis 0) in one graph and a
    // MatMul weight (axis 1) in another cannot share one int8 tensor.
    let mut b = GraphBuilder::new("matmul");
    let x = b.input("x", &[Dim::Named("batch"), Dim::Fixed(4)]);
    let w = b.external("w", &[4, 4], at(0, 16));
    let y = b.node("MatMul", "mm", &[&x, &w], &[]);
    b.output(&y, &[Dim::Named("batch"), Dim::Fixed(4)]);
    let matmul = b.finish("test");
    let (r1, r2) = (ranges(1), ranges(2));
    let both = quantize_width(
        &fp32,
        FP32,
        &[subnet("d2", &model, &r2), subnet("mm", &matmul, &r1)],
        Calibrator::MinMax,
        Encoding::S8,
    );
    assert!(
        matches!(
            both,
            Err(QuantError::Conflict {
                first_axis: Some(0),
                second_axis: Some(1),
                ..
            })
        ),
        "{both:?}"
    );
}

/// A Gemm's output is quantised once and every later node reads it
/// dequantised (ONNX Runtime fuses DQ → Gemm → Q into QGemm only with the
/// Q); an activation × activation MatMul's output stays float.
#[test]
fn stored_weight_products_quantise_their_outputs() {
    let mut b = GraphBuilder::new("outputs");
    let x = b.input("x", &[Dim::Named("batch"), Dim::Fixed(4)]);
    let l = Linear {
        weight: b.external("fc0.weight", &[4, 4], at(0, 16)),
        bias: Some(b.external("fc0.bias", &[4], at(64, 4))),
    };
    let h = b.linear("fc0", &x, &l);
    let r = b.node("Relu", "act", &[&h], &[]);
    let t = b.node("Transpose", "act.t", &[&r], &[]);
    let s = b.node("MatMul", "scores", &[&r, &t], &[]);
    let y = b.node("Softmax", "probs", &[&s], &[]);
    b.output(&y, &[Dim::Named("batch"), Dim::Named("batch")]);
    let model = b.finish("test");
    let r = BTreeMap::from(
        ["x", "fc0", "act", "act.t", "scores"].map(|n| (n.to_owned(), range(-1.0, 1.0))),
    );
    let width = quantize_width(
        &fp32_file(1),
        FP32,
        &[subnet("g", &model, &r)],
        Calibrator::MinMax,
        Encoding::U8,
    )
    .unwrap();
    let graph = width.graphs[0].graph.as_ref().unwrap();
    let nodes: Vec<(&str, &str, Vec<&str>)> = graph
        .node
        .iter()
        .map(|n| {
            let inputs = n.input.iter().take(1).map(String::as_str).collect();
            (n.op_type.as_str(), n.name.as_str(), inputs)
        })
        .collect();
    let at = |op, name, input: &'static str| (op, name, vec![input]);
    assert_eq!(
        nodes,
        [
            at(
                "DequantizeLinear",
                "fc0.weight.dequantize",
                "fc0.weight.quantized"
            ),
            at("QuantizeLinear", "x.quantize", "x"),
            at("DequantizeLinear", "x.dequantize", "x.quantized"),
            at("Gemm", "fc0", "x.dequantized"),
            at("QuantizeLinear", "fc0.quantize", "fc0"),
            at("DequantizeLinear", "fc0.dequantize", "fc0.quantized"),
            at("Relu", "act", "fc0.dequantized"),
            at("Transpose", "act.t", "act"),
            at("QuantizeLinear", "act.quantize", "act"),
            at("DequantizeLinear", "act.dequantize", "act.quantized"),
            at("QuantizeLinear", "act.t.quantize", "act.t"),
            at("DequantizeLinear", "act.t.dequantize", "act.t.quantized"),
            at("MatMul", "scores", "act.dequantized"),
            at("Softmax", "probs", "scores"),
        ]
    );
}
