//! The tract engine: pure Rust, CPU only, planned for one batch size.

use std::path::{Path, PathBuf};

use ndarray::ArrayView4;
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::ensure;
use tract_onnx::tract_core::runtime::RunOptions;

use super::graph::Graph;
use super::{
    EngineError, EngineInfo, EngineKind, EngineOptions, ExecutionProvider, Outputs, Session,
};

/// Nothing to load: tract is linked in; only an accelerator can be refused.
pub fn check(opts: &EngineOptions) -> Result<EngineInfo, EngineError> {
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

/// A graph optimised by tract for a fixed `[batch, 3, H, W]` input.
pub(super) struct TractSession {
    graph: PathBuf,
    shape: [usize; 4],
    outputs: [usize; 2],
    /// Reused across runs, so a run allocates only its tensors.
    state: TypedSimpleState,
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
        let shape = [opts.batch, 3, h, w];
        // tract runs single-threaded unless the plan carries its own pool.
        let executor = opts.threads.filter(|&n| n > 1).map(Executor::multithread);
        let dir = graph.path.parent().and_then(Path::to_str);
        let plan = || -> TractResult<TypedSimpleState> {
            let parsed = tract_onnx::onnx().parse(&graph.proto, dir)?;
            ensure!(
                parsed.unresolved_inputs.is_empty(),
                "unresolved inputs {:?}",
                parsed.unresolved_inputs
            );
            parsed
                .model
                .with_input_fact(0, f32::fact(shape).into())?
                .into_optimized()?
                .into_runnable_with_options(&RunOptions {
                    executor,
                    ..RunOptions::default()
                })?
                .spawn()
        };
        let state = plan().map_err(|e| backend(&graph.path, e))?;
        Ok(TractSession {
            graph: graph.path,
            shape,
            outputs: graph.outputs,
            state,
        })
    }
}

impl Session for TractSession {
    fn run(&mut self, pixels: ArrayView4<'_, f32>) -> Result<Outputs, EngineError> {
        super::check_input(&self.graph, self.shape, &pixels)?;
        let input = Tensor::from(pixels.as_standard_layout().into_owned());
        let out = self
            .state
            .run(tvec!(input.into_tvalue()))
            .map_err(|e| backend(&self.graph, e))?;
        let view = |i: usize| {
            out[i]
                .to_plain_array_view::<f32>()
                .map_err(|e| backend(&self.graph, e))
        };
        let [cls, patch] = self.outputs;
        super::outputs(&self.graph, self.shape[0], view(cls)?, view(patch)?)
    }

    fn input_shape(&self) -> [usize; 4] {
        self.shape
    }

    fn provider(&self) -> &str {
        ExecutionProvider::Cpu.name()
    }
}

fn backend(graph: &Path, e: TractError) -> EngineError {
    EngineError::Backend {
        graph: graph.to_owned(),
        engine: EngineKind::Tract,
        source: e.into(),
    }
}
