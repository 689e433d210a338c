//! The ONNX Runtime engine. The library is loaded at run time from
//! `EngineOptions::ort_library` or `ORT_DYLIB_PATH` (never downloaded), once
//! per process.

use std::ffi::{c_char, CStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ndarray::ArrayView4;
use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::value::TensorRef;
use ort::AsPointer;

use super::graph::{Graph, INPUT, OUTPUTS};
use super::{EngineError, EngineKind, EngineOptions, ExecutionProvider, Outputs, Session};

/// The ONNX Runtime configuration entry that makes node placement queryable.
const RECORD_ASSIGNMENT: &str = "session.record_ep_graph_assignment_info";

/// The library this process loaded (canonical path) and its environment.
static RUNTIME: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// A graph in an ONNX Runtime session whose node placement has been checked.
pub(super) struct OrtSession {
    graph: PathBuf,
    shape: [usize; 4],
    /// The short names of the providers that got nodes, joined by `+`.
    provider: String,
    session: ort::session::Session,
}

impl OrtSession {
    pub fn load(graph: Graph, opts: &EngineOptions) -> Result<OrtSession, EngineError> {
        let env = environment(
            opts.ort_library.as_deref(),
            std::env::var_os("ORT_DYLIB_PATH"),
        )?;
        let path = graph.path;
        let backend = |e: ort::Error| backend(&path, e);
        let mut builder = ort::session::Session::builder(&env)
            .map_err(backend)?
            .with_config_entry(RECORD_ASSIGNMENT, "1")
            .map_err(|e| backend(e.into()))?;
        if let Some(threads) = opts.threads {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| backend(e.into()))?;
        }
        if let Some(ep) = dispatch(opts.provider) {
            builder = builder
                .with_execution_providers([ep.error_on_failure()])
                .map_err(|e| EngineError::ProviderFallback {
                    graph: path.clone(),
                    requested: opts.provider,
                    actual: ExecutionProvider::Cpu.to_string(),
                    reason: e.to_string(),
                })?;
        }
        let session = builder.commit_from_file(&path).map_err(backend)?;

        let assigned = assigned_providers(&session).map_err(backend)?;
        let requested = ort_name(opts.provider);
        if !assigned.iter().any(|name| name == requested) {
            return Err(EngineError::ProviderFallback {
                graph: path,
                requested: opts.provider,
                actual: label(&assigned),
                reason: format!("ONNX Runtime assigned no node to {requested}"),
            });
        }
        let [h, w] = graph.image;
        Ok(OrtSession {
            graph: path,
            shape: [opts.batch, 3, h, w],
            provider: label(&assigned),
            session,
        })
    }
}

impl Session for OrtSession {
    fn run(&mut self, pixels: ArrayView4<'_, f32>) -> Result<Outputs, EngineError> {
        super::check_input(&self.graph, self.shape, &pixels)?;
        let pixels = pixels.as_standard_layout();
        let input = TensorRef::from_array_view(&pixels).map_err(|e| backend(&self.graph, e))?;
        let out = self
            .session
            .run(ort::inputs![INPUT => input])
            .map_err(|e| backend(&self.graph, e))?;
        let view = |name: &str| {
            out.get(name)
                .ok_or_else(|| ort::Error::new(format!("no output `{name}`")))
                .and_then(|v| v.try_extract_array::<f32>())
                .map_err(|e| backend(&self.graph, e))
        };
        super::outputs(
            &self.graph,
            self.shape[0],
            view(OUTPUTS[0])?,
            view(OUTPUTS[1])?,
        )
    }

    fn input_shape(&self) -> [usize; 4] {
        self.shape
    }

    fn provider(&self) -> &str {
        &self.provider
    }
}

fn backend(graph: &Path, e: ort::Error) -> EngineError {
    EngineError::Backend {
        graph: graph.to_owned(),
        engine: EngineKind::Ort,
        source: e.into(),
    }
}

/// The configured library, else `ORT_DYLIB_PATH` (passed in, for testing).
fn library_path(configured: Option<&Path>, env: Option<OsString>) -> Result<PathBuf, EngineError> {
    configured
        .map(Path::to_owned)
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .ok_or(EngineError::OrtLibraryUnset)
}

/// Loads ONNX Runtime on first use; later calls must name the same library.
fn environment(
    configured: Option<&Path>,
    env: Option<OsString>,
) -> Result<Environment, EngineError> {
    let path = library_path(configured, env)?;
    let library_error = |source| EngineError::OrtLibrary {
        path: path.clone(),
        source,
    };
    let canonical = fs::canonicalize(&path).map_err(|e| library_error(e.into()))?;
    let mut runtime = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((loaded, env)) = runtime.as_ref() {
        return if *loaded == canonical {
            Ok(env.clone())
        } else {
            Err(EngineError::OrtLibraryConflict {
                loaded: loaded.clone(),
                requested: path,
            })
        };
    }
    let env = ort::init_from(&canonical)
        .map_err(|e| library_error(e.into()))?
        .build()
        .map_err(|e| library_error(e.into()))?;
    *runtime = Some((canonical, env.clone()));
    Ok(env)
}

/// ONNX Runtime's registration for a provider (`None`: the CPU is built in).
fn dispatch(provider: ExecutionProvider) -> Option<ExecutionProviderDispatch> {
    Some(match provider {
        ExecutionProvider::Cpu => return None,
        ExecutionProvider::Cuda => ep::CUDA::default().build(),
        ExecutionProvider::TensorRt => ep::TensorRT::default().build(),
        ExecutionProvider::OpenVino => ep::OpenVINO::default().build(),
        ExecutionProvider::CoreMl => ep::CoreML::default().build(),
        ExecutionProvider::Nnapi => ep::NNAPI::default().build(),
        ExecutionProvider::Qnn => ep::QNN::default().build(),
        ExecutionProvider::XnnPack => ep::XNNPACK::default().build(),
    })
}

/// The name ONNX Runtime reports node assignments under.
fn ort_name(provider: ExecutionProvider) -> &'static str {
    dispatch(provider).map_or(<ep::CPU as ep::ExecutionProvider>::NAME, |d| d.name())
}

/// `cuda+cpu`-style label of the providers that got nodes, ours named short.
fn label(assigned: &[String]) -> String {
    let short = |name: &String| -> String {
        ExecutionProvider::NAMES
            .iter()
            .find(|(p, _)| ort_name(*p) == name)
            .map_or_else(|| name.clone(), |(_, short)| short.to_string())
    };
    assigned.iter().map(short).collect::<Vec<_>>().join("+")
}

/// The distinct providers ONNX Runtime assigned the session's nodes to, in
/// order of first appearance.
fn assigned_providers(session: &ort::session::Session) -> Result<Vec<String>, ort::Error> {
    let api = ort::api();
    let mut subgraphs = std::ptr::null();
    let mut count = 0;
    // SAFETY: the session is alive for the whole function; the subgraph array
    // and the names it leads to are owned by the session and only read here.
    unsafe {
        ort::Error::result_from_status((api.Session_GetEpGraphAssignmentInfo)(
            session.ptr(),
            &mut subgraphs,
            &mut count,
        ))?;
        let subgraphs = if count == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(subgraphs, count)
        };
        let mut names: Vec<String> = Vec::new();
        for &subgraph in subgraphs {
            let mut name: *const c_char = std::ptr::null();
            ort::Error::result_from_status((api.EpAssignedSubgraph_GetEpName)(
                subgraph, &mut name,
            ))?;
            let name = CStr::from_ptr(name).to_string_lossy();
            if !names.iter().any(|n| *n == name) {
                names.push(name.into_owned());
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_library_wins_over_the_environment() {
        let got = library_path(Some(Path::new("/a/lib.so")), Some("/b/lib.so".into())).unwrap();
        assert_eq!(got, Path::new("/a/lib.so"));
        let got = library_path(None, Some("/b/lib.so".into())).unwrap();
        assert_eq!(got, Path::new("/b/lib.so"));
    }

    #[test]
    fn no_library_is_an_error_not_a_download() {
        assert!(matches!(
            library_path(None, None),
            Err(EngineError::OrtLibraryUnset)
        ));
        assert!(matches!(
            library_path(None, Some("".into())),
            Err(EngineError::OrtLibraryUnset)
        ));
    }

    #[test]
    fn labels_use_short_names_and_keep_unknown_ones() {
        let assigned = [
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
            "AzureExecutionProvider",
        ];
        let assigned: Vec<String> = assigned.iter().map(|s| s.to_string()).collect();
        assert_eq!(label(&assigned), "cuda+cpu+AzureExecutionProvider");
    }
}
