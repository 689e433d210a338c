//! Speed of int8 (u8 activations) and fp16 variants against their fp32
//! parent, per engine, on a ViT-S/16-shaped sub-network (w384-d12, 224 px,
//! random weights: speed does not depend on them), or with `vit-l` on the
//! narrowest sub-network of a ViT-L/16 teacher (w384-d24; the teacher file
//! is 1.2 GB).
//!
//! Every (engine, precision) session of a row (batch × threads) is loaded
//! through the runtime's `engine::load` and timed round by round, the order
//! rotating each round so drift and other load hit all alike; figures are
//! medians over rounds, ratios medians of the per-round ratios. The machine
//! is shared: the load average is printed beside the table.
//!
//! Usage: `ORT_DYLIB_PATH=... cargo run --features ort --example precision_speed [-- ROUNDS [vit-l]]`
//! (the dev profile builds tract and ONNX Runtime's bindings at opt-level 3;
//! only this driver is unoptimised, and it does no arithmetic in the loop).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

use ndarray::Array4;
use onnx_protobuf::ModelProto;
use protobuf::Message;
use tailor::calibration::ranges::inner::inner_tensors;
use tailor::calibration::ranges::Range;
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::family::vit::Geometry;
use tailor::exporter::family::SubnetSpec;
use tailor::exporter::plan::{Plan, Request, Selection};
use tailor::exporter::quant::{self, Calibrator, Encoding, Subnet};
use tailor::exporter::synthetic::{write_vit_teacher, VIT_L16, VIT_S16};
use tailor::runtime::engine::{self, EngineKind, EngineOptions};
use tract_onnx::prelude::Framework;

const BATCHES: [usize; 2] = [1, 8];
const THREADS: [usize; 2] = [1, 2];
const PRECISIONS: [&str; 3] = ["fp32", "int8-u8", "fp16"];

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(5, |r| r.parse().expect("ROUNDS is a number"));
    let (teacher, depth) = match std::env::args().nth(2).as_deref() {
        None => (VIT_S16, 12),
        Some("vit-l") => (VIT_L16, 24),
        Some(other) => panic!("{other}: the second argument is vit-l or nothing"),
    };
    let dir = tempfile::tempdir().unwrap();
    let graphs = variants(dir.path(), &teacher, depth);
    println!(
        "w384-d{depth} of a {}-wide, {}-deep teacher\n",
        teacher.max_width, teacher.max_depth
    );
    let load = || fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load();
    println!("| engine | batch | threads | fp32 p50 (ms) | int8-u8 p50 (ms) | fp16 p50 (ms) | int8 speed-up | fp16 speed-up |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for batch in BATCHES {
        let input = Array4::from_shape_fn((batch, 3, 224, 224), |(b, c, y, x)| {
            ((b * 7 + c * 13 + y * 3 + x) % 17) as f32 / 8.0 - 1.0
        });
        for threads in THREADS {
            let opts = EngineOptions {
                threads: Some(threads),
                batch,
                ..EngineOptions::default()
            };
            for kind in [EngineKind::Tract, EngineKind::Ort] {
                let mut sessions: Vec<_> = graphs
                    .iter()
                    .map(|g| {
                        engine::load(kind, g, &opts)
                            .unwrap_or_else(|e| panic!("{kind} {}: {e:#}", g.display()))
                    })
                    .collect();
                // One warm-up run each.
                for s in &mut sessions {
                    s.run(input.view()).unwrap();
                }
                let mut times = vec![Vec::new(); sessions.len()];
                for round in 0..rounds {
                    for k in 0..sessions.len() {
                        let i = (round + k) % sessions.len();
                        let start = Instant::now();
                        std::hint::black_box(sessions[i].run(input.view()).unwrap());
                        times[i].push(start.elapsed().as_secs_f64() * 1e3);
                    }
                }
                let ratio = |i: usize| {
                    let mut r: Vec<f64> =
                        times[0].iter().zip(&times[i]).map(|(a, b)| a / b).collect();
                    median(&mut r)
                };
                let p50: Vec<f64> = times.iter().map(|t| median(&mut t.clone())).collect();
                println!(
                    "| {kind} | {batch} | {threads} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x |",
                    p50[0],
                    p50[1],
                    p50[2],
                    ratio(1),
                    ratio(2)
                );
            }
        }
    }
    println!(
        "\n{rounds} rounds; load average before: {}; after: {}",
        load_before.trim(),
        load().trim()
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// w384-d`depth` of a random `geometry` teacher in fp32, int8 (u8
/// activations, every activation's range taken as [-4, 4]: the speed does
/// not depend on it) and fp16, in [`PRECISIONS`] order.
fn variants(dir: &Path, geometry: &Geometry, depth: u32) -> Vec<std::path::PathBuf> {
    let teacher = dir.join("vit.safetensors");
    write_vit_teacher(&teacher, geometry, 0).unwrap();
    let request = Request {
        selection: Selection::List(vec![SubnetSpec::single(384, depth)]),
        ..Request::all(&teacher)
    };
    let out = dir.join("bundle");
    let options = WriteOptions {
        force: false,
        jobs: 1,
    };
    bundle::write(&Plan::new(&request).unwrap(), &out, &options, &|_| {}).unwrap();
    let graphs = out.join("graphs");
    let id = format!("w384-d{depth}");
    let fp32_graph = graphs.join(format!("{id}.onnx"));
    let location = "weights/w384.bin";
    let fp32 = fs::read(graphs.join(location)).unwrap();
    let model = ModelProto::parse_from_bytes(&fs::read(&fp32_graph).unwrap()).unwrap();
    let proto = tract_onnx::onnx()
        .proto_model_for_path(&fp32_graph)
        .unwrap();
    let wide = Range {
        min: -4.0,
        max: 4.0,
        abs_percentile: 4.0,
    };
    let ranges: BTreeMap<String, Range> = inner_tensors(proto.graph.as_ref().unwrap())
        .into_iter()
        .chain(["pixel_values".to_owned()])
        .map(|name| (name, wide))
        .collect();
    let subnet = Subnet {
        id: &id,
        model: &model,
        ranges: &ranges,
        samples: None,
    };
    let int8 = quant::quantize_width(&fp32, location, &[subnet], Calibrator::MinMax, Encoding::U8)
        .unwrap();
    let fp16 = quant::fp16_width(&fp32, location, &[(id.as_str(), &model)]).unwrap();
    let mut paths = vec![fp32_graph];
    for (precision, width) in [("int8-u8", int8), ("fp16", fp16)] {
        fs::write(graphs.join(&width.location), &width.bytes).unwrap();
        let path = graphs.join(format!("w384-d{depth}.{precision}.onnx"));
        fs::write(&path, width.graphs[0].write_to_bytes().unwrap()).unwrap();
        paths.push(path);
    }
    debug_assert_eq!(paths.len(), PRECISIONS.len());
    paths
}
