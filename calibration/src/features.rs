//! Running a sub-network's graph over a dataset, batched, with the
//! runtime's engine and preprocessing: its `cls_token` per image and the
//! ranges of its interface tensors.

use std::path::Path;

use ndarray::{s, Array2, Array4, Axis};
use tailor_runtime::engine::{self, EngineError, EngineKind, EngineOptions};

use crate::dataset::Dataset;
use crate::ranges::{GraphRanges, GraphRecorder};

/// What one graph computed over the dataset.
#[derive(Debug, Clone)]
pub struct Features {
    /// `[images, width]`, in the dataset's order.
    pub cls_token: Array2<f32>,
    /// `None` only for an empty dataset.
    pub ranges: Option<GraphRanges>,
}

/// Runs `graph` over every image of `dataset` in batches of `opts.batch`;
/// `progress` hears the images done so far.
pub fn extract(
    graph: &Path,
    dataset: &Dataset,
    kind: EngineKind,
    opts: &EngineOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Features, EngineError> {
    let mut session = engine::load(kind, graph, opts)?;
    let [batch, channels, height, width] = session.input_shape();
    let mut pixels = Array4::<f32>::zeros((batch, channels, height, width));
    let mut cls_token = None::<Array2<f32>>;
    let mut recorder = GraphRecorder::default();
    let n = dataset.images.len();
    for start in (0..n).step_by(batch) {
        let images = &dataset.images[start..(start + batch).min(n)];
        for (image, out) in images.iter().zip(pixels.outer_iter_mut()) {
            image.preprocess_into(out);
        }
        // The last batch is padded with the previous batch's images; their
        // rows are dropped.
        let outputs = session.run(pixels.view())?;
        let rows = images.len();
        recorder.observe(pixels.view(), &outputs, rows);
        let features =
            cls_token.get_or_insert_with(|| Array2::zeros((n, outputs.cls_token.ncols())));
        features
            .slice_mut(s![start..start + rows, ..])
            .assign(&outputs.cls_token.slice(s![..rows, ..]));
        progress(start + rows);
    }
    Ok(Features {
        cls_token: cls_token.unwrap_or_else(|| Array2::zeros((0, 0))),
        ranges: recorder.finish(),
    })
}

/// Rows `indices` of `features`.
pub fn rows(features: &Array2<f32>, indices: &[usize]) -> Array2<f32> {
    features.select(Axis(0), indices)
}
