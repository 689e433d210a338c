//! The ONNX Runtime engine: the device's own `libonnxruntime.so`, loaded at
//! run time, with the execution provider the user asked for, or an error,
//! never a silent fall back to the CPU.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::ArrayView4;
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider as _};
use ort::session::Session as OrtSession_;
use ort::value::TensorRef;

use super::graph::{Graph, INPUT, OUTPUTS};
use super::{EngineError, EngineKind, EngineOptions, ExecutionProvider, Outputs, Session};

/// The library this process loaded and its environment; ONNX Runtime
/// cannot be loaded twice.
static LOADED: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// A graph loaded into ONNX Runtime for a fixed `[batch, 3, H, W]` input.
pub(super) struct OrtSession {
    graph: PathBuf,
    shape: [usize; 4],
    provider: ExecutionProvider,
    session: OrtSession_,
}

/// Loads ONNX Runtime once per process, from the options or `ORT_DYLIB_PATH`.
fn init(opts: &EngineOptions) -> Result<Environment, EngineError> {
    let path = opts
        .ort_library
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .ok_or(EngineError::OrtLibraryUnset)?;
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    match &*loaded {
        Some((current, env)) if *current == path => return Ok(env.clone()),
        Some((current, _)) => {
            return Err(EngineError::OrtLibraryConflict {
                loaded: current.clone(),
                requested: path,
            })
        }
        None => {}
    }
    if !path.is_file() {
        let source = format!("no such file: {}", path.display()).into();
        return Err(EngineError::OrtLibrary { path, source });
    }
    let fail = |path: &Path, e: &dyn std::fmt::Display| EngineError::OrtLibrary {
        path: path.to_owned(),
        source: e.to_string().into(),
    };
    let builder = ort::init_from(&path).map_err(|e| fail(&path, &e))?;
    let env = builder.build().map_err(|e| fail(&path, &e))?;
    *loaded = Some((path, env.clone()));
    Ok(env)
}

impl OrtSession {
    pub fn load(graph: Graph, opts: &EngineOptions) -> Result<OrtSession, EngineError> {
        let env = init(opts)?;
        let backend = |e: ort::Error| EngineError::Backend {
            graph: graph.path.clone(),
            engine: EngineKind::Ort,
            source: e.into(),
        };
        let fallback = || EngineError::ProviderFallback {
            graph: graph.path.clone(),
            requested: opts.provider,
            actual: ExecutionProvider::Cpu.to_string(),
        };
        // Ask whether the library was built with the provider at all, then
        // register it so that a failure to initialise it is an error too.
        let (available, dispatch) = match opts.provider {
            ExecutionProvider::Cpu => (Ok(true), None),
            ExecutionProvider::Cuda => {
                (ep::CUDA::is_available(), Some(ep::CUDA::default().build()))
            }
            ExecutionProvider::TensorRt => (
                ep::TensorRT::is_available(),
                Some(ep::TensorRT::default().build()),
            ),
            ExecutionProvider::OpenVino => (
                ep::OpenVINO::is_available(),
                Some(ep::OpenVINO::default().build()),
            ),
            ExecutionProvider::CoreMl => (
                ep::CoreML::is_available(),
                Some(ep::CoreML::default().build()),
            ),
            ExecutionProvider::Nnapi => (
                ep::NNAPI::is_available(),
                Some(ep::NNAPI::default().build()),
            ),
            ExecutionProvider::Qnn => (ep::QNN::is_available(), Some(ep::QNN::default().build())),
            ExecutionProvider::XnnPack => (
                ep::XNNPACK::is_available(),
                Some(ep::XNNPACK::default().build()),
            ),
        };
        if !available.map_err(backend)? {
            return Err(fallback());
        }
        let mut builder = OrtSession_::builder(&env).map_err(backend)?;
        if let Some(n) = opts.threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| backend(e.into()))?;
        }
        if let Some(dispatch) = dispatch {
            builder = builder
                .with_execution_providers([dispatch.error_on_failure()])
                .map_err(|_| fallback())?;
        }
        let session = builder.commit_from_file(&graph.path).map_err(backend)?;
        let [h, w] = graph.image;
        Ok(OrtSession {
            graph: graph.path,
            shape: [opts.batch, 3, h, w],
            provider: opts.provider,
            session,
        })
    }
}

impl Session for OrtSession {
    fn run(&mut self, pixels: ArrayView4<'_, f32>) -> Result<Outputs, EngineError> {
        super::check_input(&self.graph, self.shape, &pixels)?;
        let backend = |e: ort::Error| EngineError::Backend {
            graph: self.graph.clone(),
            engine: EngineKind::Ort,
            source: e.into(),
        };
        let pixels = pixels.as_standard_layout();
        let input = TensorRef::from_array_view(pixels.view()).map_err(backend)?;
        let out = self
            .session
            .run(ort::inputs![INPUT => input])
            .map_err(backend)?;
        let view = |name: &str| out[name].try_extract_array::<f32>().map_err(backend);
        let [cls, patch] = OUTPUTS;
        super::outputs(&self.graph, self.shape[0], view(cls)?, view(patch)?)
    }

    fn input_shape(&self) -> [usize; 4] {
        self.shape
    }

    fn provider(&self) -> &str {
        self.provider.name()
    }
}
