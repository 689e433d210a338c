//! The tract engine: pure Rust, CPU only, planned for one batch size; and
//! [`plan`], the one way a graph gets into tract (sessions, cuts, the
//! calibration's ranges recorder).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{concatenate, s, ArrayD, ArrayView4, Axis};
use tract_linalg::multithread::Executor;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{ensure, format_err};
use tract_onnx::tract_core::runtime::RunOptions;

use super::graph::Graph;
use super::{
    EngineError, EngineInfo, EngineKind, EngineOptions, ExecutionProvider, Outputs, Session,
};

/// Plans `proto` (the graph at `path`, or a cut of it: external data is
/// read relative to `path`'s folder) for an f32 input of `shape`.
///
/// `outputs` picks tensors by their ONNX names as the outputs, in that
/// order, instead of the graph's own: they are selected before tract
/// optimises, so optimisation keeps them. With `threads` above 1 each
/// product runs on a pool of that many threads.
pub(super) fn plan(
    proto: &ModelProto,
    path: &Path,
    shape: &[usize],
    outputs: Option<&[&str]>,
    threads: usize,
) -> Result<Arc<TypedRunnableModel>, EngineError> {
    let dir = path.parent().and_then(Path::to_str);
    let plan = || -> TractResult<Arc<TypedRunnableModel>> {
        let parsed = tract_onnx::onnx().parse(proto, dir)?;
        ensure!(
            parsed.unresolved_inputs.is_empty(),
            "unresolved inputs {:?}",
            parsed.unresolved_inputs
        );
        let mut model = parsed.model;
        if let Some(names) = outputs {
            let outlets = names
                .iter()
                .map(|name| {
                    model
                        .find_outlet_label(name)
                        .ok_or_else(|| format_err!("no tensor `{name}` in the graph"))
                })
                .collect::<TractResult<Vec<_>>>()?;
            model.select_output_outlets(&outlets)?;
        }
        model
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()?
            .into_runnable_with_options(&RunOptions {
                executor: (threads > 1).then(|| Executor::multithread(threads)),
                ..RunOptions::default()
            })
    };
    plan().map_err(|e| backend(path, e))
}

/// A checked bundle graph planned by tract for one image, `[1, 3, H, W]`
/// ([`plan`]'s `outputs` and `threads`).
pub fn plan_image(
    graph: &Graph,
    outputs: Option<&[&str]>,
    threads: usize,
) -> Result<Arc<TypedRunnableModel>, EngineError> {
    let [h, w] = graph.image;
    plan(&graph.proto, &graph.path, &[1, 3, h, w], outputs, threads)
}

/// Nothing to load: tract is linked in; only an accelerator can be refused.
pub(super) fn check(opts: &EngineOptions) -> Result<EngineInfo, EngineError> {
    if opts.provider != ExecutionProvider::Cpu {
        return Err(EngineError::ProviderUnavailable {
            engine: EngineKind::Tract,
            provider: opts.provider,
            reason: CPU_ONLY.into(),
        });
    }
    Ok(EngineInfo {
        kind: EngineKind::Tract,
        version: super::TRACT_VERSION.into(),
        provider: ExecutionProvider::Cpu,
    })
}

const CPU_ONLY: &str = "tract runs on the CPU only";

/// A graph optimised by tract for one image, run once per image of a fixed
/// `[batch, 3, H, W]` input.
///
/// tract is faster per image at batch 1 than at larger batches (ViT-S/16 on
/// one thread: 181 ms at batch 1, 308 ms per image at batch 8), and its second
/// thread inside one product adds less than a second image on its own thread
/// does (docs/benchmarks.md). So a batch is split into images, run by up to
/// `threads` workers at once, each with its own state over one shared plan
/// (the packed weights exist once).
pub(super) struct TractSession {
    graph: PathBuf,
    shape: [usize; 4],
    outputs: [usize; 2],
    logits: Option<usize>,
    /// One per worker, reused across runs so a run allocates only its tensors.
    workers: Vec<TypedSimpleState>,
}

impl TractSession {
    pub fn load(graph: Graph, opts: &EngineOptions) -> Result<TractSession, EngineError> {
        if opts.provider != ExecutionProvider::Cpu {
            return Err(EngineError::ProviderFallback {
                graph: graph.path,
                requested: opts.provider,
                actual: ExecutionProvider::Cpu.to_string(),
                reason: CPU_ONLY.into(),
            });
        }
        let [h, w] = graph.image;
        let threads = opts.threads.unwrap_or(1).max(1);
        let workers = threads.min(opts.batch).max(1);
        // Threads the workers cannot use (fewer images than threads) go to a
        // pool the workers' products share; otherwise each runs on one thread.
        let pool = if threads > workers { threads } else { 1 };
        let plan = plan_image(&graph, None, pool)?;
        let workers = (0..workers)
            .map(|_| plan.spawn())
            .collect::<TractResult<_>>()
            .map_err(|e| backend(&graph.path, e))?;
        Ok(TractSession {
            graph: graph.path,
            shape: [opts.batch, 3, h, w],
            outputs: graph.outputs,
            logits: graph.logits,
            workers,
        })
    }
}

/// Runs images `first`, `first + step`, ... of the batch, one at a time.
fn run_images(
    state: &mut TypedSimpleState,
    pixels: ArrayView4<'_, f32>,
    first: usize,
    step: usize,
) -> TractResult<Vec<(usize, TVec<TValue>)>> {
    (first..pixels.dim().0)
        .step_by(step)
        .map(|i| {
            let image = pixels.slice(s![i..i + 1, .., .., ..]);
            let input = Tensor::from(image.as_standard_layout().into_owned());
            Ok((i, state.run(tvec!(input.into_tvalue()))?))
        })
        .collect()
}

impl Session for TractSession {
    fn run(&mut self, pixels: ArrayView4<'_, f32>) -> Result<Outputs, EngineError> {
        super::check_input(&self.graph, self.shape, &pixels)?;
        let step = self.workers.len();
        let runs = match &mut self.workers[..] {
            [one] => vec![run_images(one, pixels, 0, 1)],
            workers => std::thread::scope(|scope| {
                let running: Vec<_> = workers
                    .iter_mut()
                    .enumerate()
                    .map(|(w, state)| scope.spawn(move || run_images(state, pixels, w, step)))
                    .collect();
                running
                    .into_iter()
                    .map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            }),
        };
        let mut images = Vec::with_capacity(self.shape[0]);
        for run in runs {
            images.extend(run.map_err(|e| backend(&self.graph, e))?);
        }
        images.sort_unstable_by_key(|(i, _)| *i);
        // The images' outputs, stacked back into the batch.
        let stack = |output: usize| -> Result<ArrayD<f32>, EngineError> {
            let views = images
                .iter()
                .map(|(_, out)| out[output].to_plain_array_view::<f32>())
                .collect::<TractResult<Vec<_>>>()
                .map_err(|e| backend(&self.graph, e))?;
            concatenate(Axis(0), &views).map_err(|e| backend(&self.graph, e.into()))
        };
        let [cls, patch] = self.outputs;
        let logits = self.logits.map(stack).transpose()?;
        super::outputs(
            &self.graph,
            self.shape[0],
            stack(cls)?.view(),
            stack(patch)?.view(),
            logits.as_ref().map(|l| l.view()),
        )
    }

    fn input_shape(&self) -> [usize; 4] {
        self.shape
    }

    fn provider(&self) -> &str {
        ExecutionProvider::Cpu.name()
    }
}

/// A tract error, as the engine error of `graph`.
pub fn backend(graph: &Path, e: TractError) -> EngineError {
    EngineError::Backend {
        graph: graph.to_owned(),
        engine: EngineKind::Tract,
        source: e.into(),
    }
}
