//! INT8 against fp32 on the trained example: every sub-network of a bundle
//! quantised with each calibrator and activation encoding, scored with the
//! calibration crate's k-NN on the same images as its fp32 graph, and the
//! int8 weight files' size against the fp32 ones (docs/precision.md).
//!
//! Three measures per graph, each from one feature extraction over every
//! image: the k-NN top-1 on the dataset's own split (as `calibrate` scores;
//! 800/200 on the example, one image = 0.5 point), the k-NN top-1 over all
//! images by [`FOLDS`]-fold (each image classified once, against the other
//! folds as memory; one image = 0.1 point on the example), and, for int8,
//! the relative L2 error of its `cls_token` against its fp32 parent's over
//! all images: a continuous measure of the damage, without k-NN's
//! one-image steps.
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
use ndarray::{Array2, Array4};
use onnx_protobuf::ModelProto;
use protobuf::Message;
use tailor::calibration::dataset::Labels;
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
/// Folds of the all-images k-NN: the dataset's own classified images are
/// the first, its memory cut into the others.
const FOLDS: usize = 5;

/// One graph's measures.
#[derive(Debug, Clone, Copy)]
struct Quality {
    /// k-NN top-1 (%) on the dataset's split.
    split: f64,
    /// k-NN top-1 (%) over every image, by [`FOLDS`]-fold.
    folds: f64,
    /// ‖int8 − fp32‖ / ‖fp32‖ of the `cls_token`s over every image (0 for fp32).
    error: f64,
}

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
    let labels = dataset
        .labels
        .as_ref()
        .context("the dataset has no labels")?;
    let folds = folds(&labels.train, &labels.val);
    let mut quality: BTreeMap<String, BTreeMap<String, Quality>> = BTreeMap::new();
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
        let mut parents = BTreeMap::new();
        for id in ids {
            let fp32_graph = bundle.graph_path(manifest.subnet(id).unwrap());
            let cls = cls_token(&fp32_graph, &dataset)?;
            let q = measure(&cls, &cls, labels, &folds);
            quality
                .entry(id.to_string())
                .or_default()
                .insert("fp32".into(), q);
            parents.insert(*id, cls);
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
                    let cls = cls_token(&path, &dataset)?;
                    let q = measure(&cls, &parents[id], labels, &folds);
                    eprintln!(
                        "{id} {c_name}-{e_name}: {:.1} {:.1} {:.4}",
                        q.split, q.folds, q.error
                    );
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

/// `graph`'s `cls_token` of every image of `dataset`, in tract, as
/// `calibrate` extracts it.
fn cls_token(graph: &Path, dataset: &Dataset) -> Result<Array2<f32>> {
    let opts = EngineOptions {
        batch: 32,
        ..EngineOptions::default()
    };
    Ok(extract(
        graph,
        dataset,
        EngineKind::Tract,
        &opts,
        Scope::Interface,
        &mut |_| {},
    )?
    .cls_token)
}

/// The [`FOLDS`] folds of the images: `val` (the split's classified images)
/// first, then `train` cut into `FOLDS - 1` runs as even as can be. `train`
/// is already shuffled by the split, so the runs are random too.
fn folds(train: &[usize], val: &[usize]) -> Vec<Vec<usize>> {
    let rest = FOLDS - 1;
    std::iter::once(val.to_vec())
        .chain((0..rest).map(|f| {
            let (from, to) = (f * train.len() / rest, (f + 1) * train.len() / rest);
            train[from..to].to_vec()
        }))
        .collect()
}

/// `cls`'s measures: [`Knn::DINO`] on the split and over `folds`, and its
/// relative L2 error against `parent`'s (the same images).
fn measure(cls: &Array2<f32>, parent: &Array2<f32>, l: &Labels, folds: &[Vec<usize>]) -> Quality {
    let labels = |idx: &[usize]| idx.iter().map(|&i| l.class[i]).collect::<Vec<_>>();
    let top1 = |memory: &[usize], classified: &[usize]| {
        Knn::DINO.top1(
            rows(cls, memory).view(),
            &labels(memory),
            rows(cls, classified).view(),
            &labels(classified),
            l.names.len(),
        )
    };
    // Each fold's percentage weighted by its size: the share of all images
    // classified right.
    let classified: usize = folds.iter().map(Vec::len).sum();
    let folded = (0..folds.len())
        .map(|f| {
            let memory: Vec<usize> = folds
                .iter()
                .enumerate()
                .filter(|&(g, _)| g != f)
                .flat_map(|(_, fold)| fold.iter().copied())
                .collect();
            top1(&memory, &folds[f]) * folds[f].len() as f64
        })
        .sum::<f64>()
        / classified as f64;
    let squared = |a: &Array2<f32>| a.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
    Quality {
        split: top1(&l.train, &l.val),
        folds: folded,
        error: (squared(&(cls - parent)) / squared(parent)).sqrt(),
    }
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
    quality: &BTreeMap<String, BTreeMap<String, Quality>>,
    sizes: &[(String, usize, usize)],
) {
    let int8: Vec<String> = CALIBRATORS
        .iter()
        .flat_map(|(c, _)| ENCODINGS.iter().map(move |(e, _)| format!("{c}-{e}")))
        .collect();
    for (title, top1) in [
        (
            "k-NN top-1 on the split",
            (|q: &Quality| q.split) as fn(&Quality) -> f64,
        ),
        ("k-NN top-1 over every image, by fold", |q| q.folds),
    ] {
        println!("{title}:\n");
        println!("| sub-network | fp32 | {} |", int8.join(" | "));
        println!("|---|---:|{}", "---:|".repeat(int8.len()));
        let mut worst = vec![f64::NEG_INFINITY; int8.len()];
        for (id, q) in quality {
            let fp32 = top1(&q["fp32"]);
            let cells: Vec<String> = int8
                .iter()
                .zip(&mut worst)
                .map(|(c, worst)| {
                    let q = top1(&q[c]);
                    *worst = worst.max(fp32 - q);
                    format!("{q:.1} ({:+.1})", q - fp32)
                })
                .collect();
            println!("| {id} | {fp32:.1} | {} |", cells.join(" | "));
        }
        let worst: Vec<String> = worst.iter().map(|w| format!("{w:.1}")).collect();
        println!("| largest drop | | {} |\n", worst.join(" | "));
    }
    println!("Relative L2 error of the cls_token against fp32's, over every image (%):\n");
    println!("| sub-network | {} |", int8.join(" | "));
    println!("|---|{}", "---:|".repeat(int8.len()));
    let mut range = vec![(f64::INFINITY, f64::NEG_INFINITY); int8.len()];
    for (id, q) in quality {
        let cells: Vec<String> = int8
            .iter()
            .zip(&mut range)
            .map(|(c, (lo, hi))| {
                let e = 100.0 * q[c].error;
                (*lo, *hi) = (lo.min(e), hi.max(e));
                format!("{e:.2}")
            })
            .collect();
        println!("| {id} | {} |", cells.join(" | "));
    }
    let range: Vec<String> = range
        .iter()
        .map(|(lo, hi)| format!("{lo:.2}..{hi:.2}"))
        .collect();
    println!("| range | {} |\n", range.join(" | "));
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
