//! INT8 against fp32 on the trained example: every sub-network of a bundle
//! quantised with each calibrator and activation encoding, scored with the
//! calibration crate's k-NN on the same images as its fp32 graph, and the
//! int8 weight files' size against the fp32 ones (docs/precision.md).
//!
//!     exporter --all-subnets examples/poa-vit-tiny/eval/training_799/teacher_checkpoint.pth -o B
//!     exporter calibrate B --data examples/mnist-calib.npz --ranges inner
//!     cargo run --example precision -- B examples/mnist-calib.npz
//!
//! The MSE calibrator needs values, not only ranges: the ranges file keeps
//! min, max and one percentile. They are drawn here by running each fp32
//! graph in tract over the first SAMPLE_IMAGES images with the activations
//! `calibrate --ranges inner` ranges (`ranges::inner::inner_tensors`) as
//! extra outputs, 65536 values per tensor kept at random.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ndarray::Array4;
use onnx_protobuf::ModelProto;
use protobuf::Message;
use tailor::calibration::features::{extract, rows};
use tailor::calibration::knn::Knn;
use tailor::calibration::ranges::inner::inner_tensors;
use tailor::calibration::ranges::{Range, Scope};
use tailor::calibration::{Dataset, LoadOptions};
use tailor::exporter::quant::{self, Calibrator, Encoding, Subnet};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::{EngineKind, EngineOptions};
use tract_onnx::prelude::*;

/// Images whose activations the MSE search samples.
const SAMPLE_IMAGES: usize = 64;
/// Values kept per tensor.
const SAMPLE: usize = 1 << 16;
const CALIBRATORS: [(&str, Calibrator); 3] = [
    ("minmax", Calibrator::MinMax),
    ("percentile", Calibrator::Percentile),
    ("mse", Calibrator::Mse),
];
const ENCODINGS: [(&str, Encoding); 2] = [("s8", Encoding::S8), ("u8", Encoding::U8)];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, data] = &args[..] else {
        bail!("usage: precision BUNDLE DATA.npz (a bundle calibrated with --ranges inner on DATA)");
    };
    let bundle = Bundle::open(Path::new(bundle))?;
    let manifest = bundle.manifest();
    let calibration = manifest
        .calibration
        .as_ref()
        .context("the bundle is not calibrated")?;
    let ranges = read_ranges(&bundle.dir().join(calibration.ranges.path))?;
    let dataset = Dataset::load(
        Path::new(data),
        LoadOptions {
            labels: true,
            seed: 0,
            limit: None,
        },
    )?;
    let side = manifest.teacher.config.image_size() as usize;
    let out = tempfile::tempdir()?;
    let graphs = out.path().join("graphs");
    fs::create_dir_all(graphs.join("weights"))?;

    // The sub-networks of each weight file, i.e. of each width.
    let mut widths: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in &manifest.subnets {
        widths.entry(s.weights[0].path).or_default().push(s.id);
    }
    let read = |id: &str| -> Result<ModelProto> {
        let s = manifest.subnet(id).context("no such sub-network")?;
        Ok(ModelProto::parse_from_bytes(&fs::read(
            bundle.graph_path(s),
        )?)?)
    };
    let mut quality: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut sizes = Vec::new();
    for (file, ids) in &widths {
        let fp32 = fs::read(bundle.dir().join(file))?;
        let location = file
            .strip_prefix("graphs/")
            .context("weights outside graphs/")?;
        let models = ids.iter().map(|id| read(id)).collect::<Result<Vec<_>>>()?;
        let samples = ids
            .iter()
            .map(|id| {
                sample(
                    &bundle.graph_path(manifest.subnet(id).unwrap()),
                    &dataset,
                    side,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        for id in ids {
            let fp32_graph = bundle.graph_path(manifest.subnet(id).unwrap());
            quality
                .entry(id.to_string())
                .or_default()
                .insert("fp32".into(), knn(&fp32_graph, &dataset)?);
        }
        for (c_name, calibrator) in CALIBRATORS {
            for (e_name, encoding) in ENCODINGS {
                let subnets: Vec<Subnet> = ids
                    .iter()
                    .zip(&models)
                    .zip(&samples)
                    .map(|((id, model), sample)| Subnet {
                        id,
                        model,
                        ranges: &ranges[*id],
                        samples: Some(sample),
                    })
                    .collect();
                let width = quant::quantize_width(&fp32, location, &subnets, calibrator, encoding)?;
                fs::write(graphs.join(&width.location), &width.bytes)?;
                if (c_name, e_name) == ("minmax", "s8") {
                    sizes.push((location.to_owned(), fp32.len(), width.bytes.len()));
                }
                for (id, model) in ids.iter().zip(&width.graphs) {
                    let path = graphs.join(format!("{id}.onnx"));
                    fs::write(&path, model.write_to_bytes()?)?;
                    let q = knn(&path, &dataset)?;
                    eprintln!("{id} {c_name}-{e_name}: {q:.1}");
                    quality
                        .get_mut(*id)
                        .unwrap()
                        .insert(format!("{c_name}-{e_name}"), q);
                }
            }
        }
    }
    print_tables(&quality, &sizes);
    Ok(())
}

/// The ranges file's per-sub-network ranges.
fn read_ranges(path: &Path) -> Result<BTreeMap<String, BTreeMap<String, Range>>> {
    let file: serde_json::Value = serde_json::from_slice(&fs::read(path)?)?;
    if file["scope"] != "inner" {
        bail!(
            "{}: ranges of the graphs' interface only: calibrate with --ranges inner",
            path.display()
        );
    }
    let number = |v: &serde_json::Value| v.as_f64().map(|f| f as f32).context("not a number");
    let mut all = BTreeMap::new();
    for (id, tensors) in file["subnets"].as_object().context("no subnets")? {
        let mut ranges = BTreeMap::new();
        for (name, r) in tensors.as_object().context("no tensors")? {
            let range = Range {
                min: number(&r["min"])?,
                max: number(&r["max"])?,
                abs_percentile: number(&r["abs_percentile"])?,
            };
            ranges.insert(name.clone(), range);
        }
        all.insert(id.clone(), ranges);
    }
    Ok(all)
}

/// k-NN top-1 of `graph`'s `cls_token` over `dataset`, as `calibrate` scores.
fn knn(graph: &Path, dataset: &Dataset) -> Result<f64> {
    let opts = EngineOptions {
        batch: 32,
        ..EngineOptions::default()
    };
    let cls = extract(
        graph,
        dataset,
        EngineKind::Tract,
        &opts,
        Scope::Interface,
        &mut |_| {},
    )?
    .cls_token;
    let l = dataset
        .labels
        .as_ref()
        .context("the dataset has no labels")?;
    let labels = |idx: &[usize]| idx.iter().map(|&i| l.class[i]).collect::<Vec<_>>();
    Ok(Knn::DINO.top1(
        rows(&cls, &l.train).view(),
        &labels(&l.train),
        rows(&cls, &l.val).view(),
        &labels(&l.val),
        l.names.len(),
    ))
}

/// Up to [`SAMPLE`] values of each activation the MSE search needs (the
/// inner tensors and the input), over the first [`SAMPLE_IMAGES`] images
/// prepared at `side` pixels.
fn sample(graph: &Path, dataset: &Dataset, side: usize) -> Result<BTreeMap<String, Vec<f32>>> {
    let onnx = tract_onnx::onnx();
    let proto = onnx.proto_model_for_path(graph)?;
    let names = inner_tensors(proto.graph.as_ref().context("no graph")?);
    let dir = graph.parent().and_then(Path::to_str);
    let mut model = onnx.parse(&proto, dir)?.model;
    let outlets = names
        .iter()
        .map(|n| {
            model
                .find_outlet_label(n)
                .with_context(|| format!("no tensor {n}"))
        })
        .collect::<Result<Vec<_>>>()?;
    model.select_output_outlets(&outlets)?;
    let plan = model
        .with_input_fact(0, f32::fact([1, 3, side, side]).into())?
        .into_optimized()?
        .into_runnable()?;
    let mut values: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut pixels = Array4::<f32>::zeros((1, 3, side, side));
    for image in dataset.images.iter().take(SAMPLE_IMAGES) {
        image.preprocess_into(pixels.index_axis_mut(ndarray::Axis(0), 0));
        values
            .entry("pixel_values".into())
            .or_default()
            .extend(pixels.iter());
        let out = plan.run(tvec!(Tensor::from(pixels.clone()).into_tvalue()))?;
        for (name, v) in names.iter().zip(out) {
            values
                .entry(name.clone())
                .or_default()
                .extend(v.to_plain_array_view::<f32>()?.iter());
        }
    }
    let mut rng = 0x5eed_u64;
    Ok(values
        .into_iter()
        .map(|(name, mut v)| {
            // A partial Fisher-Yates shuffle: the first SAMPLE are uniform.
            let keep = v.len().min(SAMPLE);
            for i in 0..keep {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let j = i + (rng % (v.len() - i) as u64) as usize;
                v.swap(i, j);
            }
            v.truncate(keep);
            (name, v)
        })
        .collect())
}

fn print_tables(
    quality: &BTreeMap<String, BTreeMap<String, f64>>,
    sizes: &[(String, usize, usize)],
) {
    let columns: Vec<String> = std::iter::once("fp32".to_owned())
        .chain(
            CALIBRATORS
                .iter()
                .flat_map(|(c, _)| ENCODINGS.iter().map(move |(e, _)| format!("{c}-{e}"))),
        )
        .collect();
    println!("| sub-network | {} |", columns.join(" | "));
    println!("|---|{}", "---:|".repeat(columns.len()));
    let mut worst = vec![0f64; columns.len()];
    for (id, q) in quality {
        let cells: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let drop = q["fp32"] - q[c];
                worst[i] = worst[i].max(drop);
                if i == 0 {
                    format!("{:.1}", q[c])
                } else {
                    format!("{:.1} ({:+.1})", q[c], q[c] - q["fp32"])
                }
            })
            .collect();
        println!("| {id} | {} |", cells.join(" | "));
    }
    let worst: Vec<String> = worst.iter().skip(1).map(|w| format!("{w:.1}")).collect();
    println!("| largest drop | | {} |", worst.join(" | "));
    println!();
    println!("| weight file | fp32 bytes | int8 bytes | ratio |");
    println!("|---|---:|---:|---:|");
    let (mut f, mut i) = (0, 0);
    for (file, fp32, int8) in sizes {
        println!(
            "| {file} | {fp32} | {int8} | {:.3} |",
            *int8 as f64 / *fp32 as f64
        );
        f += fp32;
        i += int8;
    }
    println!("| all | {f} | {i} | {:.3} |", i as f64 / f as f64);
}
