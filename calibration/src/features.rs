//! Running a sub-network's graph over a dataset, batched, with the
//! runtime's engine and preprocessing: its `cls_token` per image and the
//! ranges of its tensors.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{s, Array2, Array4, ArrayView4, Axis};
use tailor_runtime::engine::{self, EngineError, EngineKind, EngineOptions, Outputs, Session};

use crate::dataset::Dataset;
use crate::ranges::inner::InnerSession;
use crate::ranges::{GraphRecorder, Range, Scope};

/// What one graph computed over the dataset.
#[derive(Debug, Clone)]
pub struct Features {
    /// `[images, width]`, in the dataset's order.
    pub cls_token: Array2<f32>,
    /// By tensor name; `None` only for an empty dataset.
    pub ranges: Option<BTreeMap<String, Range>>,
    /// With [`Scope::Inner`], signed values of each tensor by name (for the
    /// ranges file's `samples`); empty otherwise.
    pub samples: BTreeMap<String, Vec<f32>>,
}

/// What runs the batches: the runtime's engine, or tract with the inner
/// tensors as extra outputs (which it records).
enum Runner {
    Engine(Box<dyn Session>),
    Inner(Box<InnerSession>),
}

impl Runner {
    fn load(
        graph: &Path,
        kind: EngineKind,
        opts: &EngineOptions,
        scope: Scope,
        recorder: &mut GraphRecorder,
    ) -> Result<(Runner, [usize; 4]), EngineError> {
        Ok(match scope {
            Scope::Interface => {
                let session = engine::load(kind, graph, opts)?;
                let shape = session.input_shape();
                (Runner::Engine(session), shape)
            }
            Scope::Inner => {
                let session = Box::new(InnerSession::load(graph, opts, recorder)?);
                let [h, w] = session.image();
                (Runner::Inner(session), [opts.batch, 3, h, w])
            }
        })
    }

    /// The outputs of at least the first `rows` images of `pixels`.
    fn run(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        rows: usize,
        recorder: &mut GraphRecorder,
    ) -> Result<Outputs, EngineError> {
        match self {
            Runner::Engine(session) => session.run(pixels),
            Runner::Inner(session) => session.run(pixels, rows, recorder),
        }
    }
}

/// Runs `graph` over every image of `dataset` in batches of `opts.batch`,
/// recording the ranges of `scope`'s tensors; `progress` hears the images
/// done so far.
pub fn extract(
    graph: &Path,
    dataset: &Dataset,
    kind: EngineKind,
    opts: &EngineOptions,
    scope: Scope,
    progress: &mut dyn FnMut(usize),
) -> Result<Features, EngineError> {
    let mut recorder = GraphRecorder::default();
    let (mut runner, [batch, channels, height, width]) =
        Runner::load(graph, kind, opts, scope, &mut recorder)?;
    let mut pixels = Array4::<f32>::zeros((batch, channels, height, width));
    let mut cls_token = None::<Array2<f32>>;
    let n = dataset.images.len();
    for start in (0..n).step_by(batch) {
        let images = &dataset.images[start..(start + batch).min(n)];
        for (image, out) in images.iter().zip(pixels.outer_iter_mut()) {
            image.preprocess_into(out);
        }
        // The last batch is padded with the previous batch's images; their
        // rows are dropped.
        let rows = images.len();
        let outputs = runner.run(pixels.view(), rows, &mut recorder)?;
        recorder.observe_interface(pixels.view(), &outputs, rows);
        let features =
            cls_token.get_or_insert_with(|| Array2::zeros((n, outputs.cls_token.ncols())));
        features
            .slice_mut(s![start..start + rows, ..])
            .assign(&outputs.cls_token.slice(s![..rows, ..]));
        progress(start + rows);
    }
    let samples = match scope {
        Scope::Inner => recorder.samples(),
        Scope::Interface => BTreeMap::new(),
    };
    Ok(Features {
        cls_token: cls_token.unwrap_or_else(|| Array2::zeros((0, 0))),
        samples,
        ranges: recorder.finish(),
    })
}

/// Rows `indices` of `features`.
pub fn rows(features: &Array2<f32>, indices: &[usize]) -> Array2<f32> {
    features.select(Axis(0), indices)
}
