//! The ONNX Runtime engine. The library is loaded at run time from
//! `EngineOptions::ort_library` or `ORT_DYLIB_PATH` (never downloaded), once
//! per process.

use std::collections::BTreeSet;
use std::ffi::{c_char, CStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ndarray::ArrayView4;
use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::value::TensorRef;
use ort::AsPointer;

use super::error::BackendError;
use super::graph::{Graph, INPUT, LOGITS, OUTPUTS};
use super::{
    EngineError, EngineInfo, EngineKind, EngineOptions, ExecutionProvider, Outputs, Session,
};

/// The ONNX Runtime configuration entry that makes node placement queryable.
const RECORD_ASSIGNMENT: &str = "session.record_ep_graph_assignment_info";
/// The ONNX Runtime configuration entry naming the folder a graph committed
/// from memory reads its external data from.
const EXTERNAL_DATA_FOLDER: &str = "session.model_external_initializers_file_folder_path";

/// The library this process loaded.
static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// An ONNX Runtime library loaded in this process.
#[derive(Clone)]
struct Runtime {
    /// Canonical, so two spellings of one file are one library.
    path: PathBuf,
    /// As the library reports it, e.g. `1.31.1`.
    version: String,
    env: Environment,
}

/// Loads the library and registers the provider without a graph.
pub fn check(opts: &EngineOptions) -> Result<EngineInfo, EngineError> {
    let runtime = runtime(opts)?;
    if let Some(ep) = dispatch(opts)? {
        ort::session::Session::builder(&runtime.env)
            .map_err(|e| EngineError::OrtLibrary {
                path: runtime.path.clone(),
                source: e.into(),
            })?
            .with_execution_providers([ep.error_on_failure()])
            .map_err(|e| EngineError::ProviderUnavailable {
                engine: EngineKind::Ort,
                provider: opts.provider,
                reason: e.to_string(),
            })?;
    }
    let version = match opts.provider {
        // TensorRT's engines do not survive its upgrade: decisions must not.
        ExecutionProvider::TensorRt => {
            format!("{} tensorrt {}", runtime.version, tensorrt_version())
        }
        _ => runtime.version,
    };
    Ok(EngineInfo {
        kind: EngineKind::Ort,
        version,
        provider: opts.provider,
    })
}

/// A graph in an ONNX Runtime session whose node placement has been checked.
pub(super) struct OrtSession {
    graph: PathBuf,
    shape: [usize; 4],
    /// The graph has a `logits` output.
    logits: bool,
    /// The short names of the providers that got nodes, joined by `+`.
    provider: String,
    session: ort::session::Session,
    /// The load wrote a new TensorRT engine into the engine cache.
    built_engine: bool,
}

impl OrtSession {
    pub fn load(graph: Graph, opts: &EngineOptions) -> Result<OrtSession, EngineError> {
        let committed = commit(&graph.path, Model::File, opts)?;
        let [h, w] = graph.image;
        Ok(OrtSession {
            graph: graph.path,
            shape: [opts.batch, 3, h, w],
            logits: graph.logits.is_some(),
            provider: committed.provider,
            session: committed.session,
            built_engine: committed.built_engine,
        })
    }
}

/// What a session is committed from.
pub(super) enum Model<'a> {
    /// The graph's file.
    File,
    /// An encoded graph whose external data paths are relative to the
    /// graph's folder (a graph cut from it).
    Memory(&'a [u8]),
}

/// A committed session whose node placement has been checked.
pub(super) struct Committed {
    pub session: ort::session::Session,
    /// The short names of the providers that got nodes, joined by `+`.
    pub provider: String,
    /// The commit wrote a new TensorRT engine into the engine cache.
    pub built_engine: bool,
}

/// Commits `model` of `graph` on `opts.provider`, refusing a session in which
/// the requested provider got no node (no silent CPU fallback).
pub(super) fn commit(
    graph: &Path,
    model: Model<'_>,
    opts: &EngineOptions,
) -> Result<Committed, EngineError> {
    let runtime = runtime(opts)?;
    let backend = |e: ort::Error| backend(graph, e);
    let mut builder = ort::session::Session::builder(&runtime.env)
        .map_err(backend)?
        .with_config_entry(RECORD_ASSIGNMENT, "1")
        .map_err(|e| backend(e.into()))?;
    if let Some(threads) = opts.threads {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| backend(e.into()))?;
    }
    if let Some(ep) = dispatch(opts)? {
        builder = builder
            .with_execution_providers([ep.error_on_failure()])
            .map_err(|e| EngineError::ProviderFallback {
                graph: graph.to_owned(),
                requested: opts.provider,
                actual: ExecutionProvider::Cpu.to_string(),
                reason: e.to_string(),
            })?;
    }
    let engine_cache = match opts.provider {
        ExecutionProvider::TensorRt => TensorRtSettings::from(opts).engine_cache,
        _ => None,
    };
    let cached_before = engine_cache.as_deref().map(cache_entries);
    let session =
        match model {
            Model::File => builder.commit_from_file(graph),
            Model::Memory(bytes) => {
                let folder = graph.parent().and_then(Path::to_str).ok_or_else(|| {
                    EngineError::Interface {
                        graph: graph.to_owned(),
                        problem: "the graph's folder is not UTF-8".into(),
                    }
                })?;
                builder
                    .with_config_entry(EXTERNAL_DATA_FOLDER, folder)
                    .map_err(|e| backend(e.into()))?
                    .commit_from_memory(bytes)
            }
        }
        .map_err(backend)?;
    let built_engine = match (&engine_cache, cached_before) {
        (Some(dir), Some(before)) => !cache_entries(dir).is_subset(&before),
        _ => false,
    };

    let assigned = assigned_providers(&session).map_err(backend)?;
    let requested = ort_name(opts.provider);
    if !assigned.iter().any(|name| name == requested) {
        return Err(EngineError::ProviderFallback {
            graph: graph.to_owned(),
            requested: opts.provider,
            actual: label(&assigned),
            reason: format!("ONNX Runtime assigned no node to {requested}"),
        });
    }
    Ok(Committed {
        session,
        provider: label(&assigned),
        built_engine,
    })
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
        let logits = if self.logits {
            Some(view(LOGITS)?)
        } else {
            None
        };
        super::outputs(
            &self.graph,
            self.shape[0],
            view(OUTPUTS[0])?,
            view(OUTPUTS[1])?,
            logits,
        )
    }

    fn input_shape(&self) -> [usize; 4] {
        self.shape
    }

    fn provider(&self) -> &str {
        &self.provider
    }

    fn built_engine(&self) -> bool {
        self.built_engine
    }
}

pub(super) fn backend(graph: &Path, e: ort::Error) -> EngineError {
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

/// Loads ONNX Runtime on first use (the configured library, else
/// `ORT_DYLIB_PATH`); later calls must name the same library.
fn runtime(opts: &EngineOptions) -> Result<Runtime, EngineError> {
    let path = library_path(
        opts.ort_library.as_deref(),
        std::env::var_os("ORT_DYLIB_PATH"),
    )?;
    let library_error = |source| EngineError::OrtLibrary {
        path: path.clone(),
        source,
    };
    let canonical = fs::canonicalize(&path).map_err(|e| library_error(e.into()))?;
    let mut loaded = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(runtime) = loaded.as_ref() {
        return if runtime.path == canonical {
            Ok(runtime.clone())
        } else {
            Err(EngineError::OrtLibraryConflict {
                loaded: runtime.path.clone(),
                requested: path,
            })
        };
    }
    // SAFETY: loading runs the library's initialisers, as ort's own load
    // would; the file was named as ONNX Runtime by the user.
    let library =
        unsafe { libloading::Library::new(&canonical) }.map_err(|e| library_error(e.into()))?;
    let version = library_version(&library).map_err(library_error)?;
    if !supported(&version) {
        return Err(EngineError::OrtTooOld {
            path,
            found: version,
            required: required_version(),
        });
    }
    // ort opens the library again while ours keeps it mapped: one image.
    let env = ort::init_from(&canonical)
        .map_err(|e| library_error(e.into()))?
        .build()
        .map_err(|e| library_error(e.into()))?;
    drop(library);
    let runtime = Runtime {
        path: canonical,
        version,
        env,
    };
    *loaded = Some(runtime.clone());
    Ok(runtime)
}

/// The version ONNX Runtime reports, `OrtGetApiBase()->GetVersionString()`.
fn library_version(library: &libloading::Library) -> Result<String, BackendError> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: every ONNX Runtime exports `OrtGetApiBase` with this signature;
    // the struct it returns and the version string are static in the library,
    // which outlives this function.
    unsafe {
        let get_api_base = library.get::<GetApiBase>(b"OrtGetApiBase")?;
        let base = get_api_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned nothing".into());
        }
        let version = ((*base).GetVersionString)();
        if version.is_null() {
            return Err("GetVersionString returned nothing".into());
        }
        Ok(CStr::from_ptr(version).to_str()?.to_owned())
    }
}

/// The oldest ONNX Runtime `major.minor` ort's API level (`api-N` feature)
/// works with: ort refuses older ones.
fn required_version() -> String {
    format!("1.{}", ort::MINOR_VERSION)
}

/// Whether a reported version (`1.31.1`) is at least [`required_version`];
/// one that does not parse is not.
fn supported(version: &str) -> bool {
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (1, ort::MINOR_VERSION),
        _ => false,
    }
}

/// ONNX Runtime's registration for the requested provider (`None`: the CPU
/// is built in).
fn dispatch(opts: &EngineOptions) -> Result<Option<ExecutionProviderDispatch>, EngineError> {
    Ok(Some(match opts.provider {
        ExecutionProvider::Cpu => return Ok(None),
        ExecutionProvider::Cuda => ep::CUDA::default().build(),
        ExecutionProvider::TensorRt => tensorrt(&TensorRtSettings::from(opts))?.build(),
        ExecutionProvider::OpenVino => ep::OpenVINO::default().build(),
        ExecutionProvider::CoreMl => ep::CoreML::default().build(),
        ExecutionProvider::Nnapi => ep::NNAPI::default().build(),
        ExecutionProvider::Qnn => ep::QNN::default().build(),
        ExecutionProvider::XnnPack => ep::XNNPACK::default().build(),
    }))
}

/// What tailor asks of TensorRT beyond its defaults.
#[derive(Debug, PartialEq, Eq)]
struct TensorRtSettings {
    fp16: bool,
    /// Built engines, kept apart per precision: TensorRT does not tell a
    /// cached fp32 engine from an fp16 one.
    engine_cache: Option<PathBuf>,
    /// Kernel timings, which speed up building any engine.
    timing_cache: Option<PathBuf>,
}

impl From<&EngineOptions> for TensorRtSettings {
    fn from(opts: &EngineOptions) -> Self {
        let precision = if opts.fp16 { "fp16" } else { "fp32" };
        TensorRtSettings {
            fp16: opts.fp16,
            engine_cache: opts.cache_dir.as_ref().map(|dir| dir.join(precision)),
            timing_cache: opts.cache_dir.clone(),
        }
    }
}

/// The TensorRT provider with `settings`, its cache directories created.
fn tensorrt(settings: &TensorRtSettings) -> Result<ep::TensorRT, EngineError> {
    let mut tensorrt = ep::TensorRT::default().with_fp16(settings.fp16);
    if let Some(dir) = &settings.engine_cache {
        tensorrt = tensorrt
            .with_engine_cache(true)
            .with_engine_cache_path(cache_dir(dir)?);
    }
    if let Some(dir) = &settings.timing_cache {
        tensorrt = tensorrt
            .with_timing_cache(true)
            .with_timing_cache_path(cache_dir(dir)?);
    }
    Ok(tensorrt)
}

/// The names in a TensorRT engine cache directory (none if unreadable):
/// a name that appears during a load is an engine that load built.
fn cache_entries(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.file_name()))
        .collect()
}

/// `dlopen`'s flag to find a library only if it is already loaded (glibc's
/// value on every architecture; libloading does not bind it).
const RTLD_NOLOAD: std::ffi::c_int = 4;

/// The version of the `libnvinfer` ONNX Runtime's TensorRT provider loaded,
/// as `getInferLibVersion` reports it, or `unknown`.
fn tensorrt_version() -> String {
    use libloading::os::unix::{Library, Symbol, RTLD_LAZY};
    ["libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"]
        .iter()
        .find_map(|name| {
            // SAFETY: RTLD_NOLOAD only returns a library already loaded and
            // initialised; `getInferLibVersion` takes nothing and returns an
            // int in every TensorRT release.
            unsafe {
                let library = Library::open(Some(*name), RTLD_LAZY | RTLD_NOLOAD).ok()?;
                let get: Symbol<unsafe extern "C" fn() -> i32> =
                    library.get(b"getInferLibVersion").ok()?;
                Some(tensorrt_version_name(get()))
            }
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `NV_TENSORRT_VERSION` as `major.minor.patch`: `major·1000 + minor·100 +
/// patch` up to TensorRT 9, `major·10000 + minor·100 + patch` from 10 on.
fn tensorrt_version_name(v: i32) -> String {
    let (major, minor) = if v >= 100_000 {
        (v / 10_000, v / 100 % 100)
    } else {
        (v / 1000, v / 100 % 10)
    };
    format!("{major}.{minor}.{}", v % 100)
}

/// Creates `dir`; TensorRT takes its path as a string.
fn cache_dir(dir: &Path) -> Result<String, EngineError> {
    let error = |source| EngineError::CacheDir {
        dir: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(error)?;
    dir.to_str().map(str::to_owned).ok_or_else(|| {
        error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not UTF-8",
        ))
    })
}

/// The name ONNX Runtime reports node assignments under.
fn ort_name(provider: ExecutionProvider) -> &'static str {
    use ep::ExecutionProvider as Ep;
    match provider {
        ExecutionProvider::Cpu => ep::CPU::NAME,
        ExecutionProvider::Cuda => ep::CUDA::NAME,
        ExecutionProvider::TensorRt => ep::TensorRT::NAME,
        ExecutionProvider::OpenVino => ep::OpenVINO::NAME,
        ExecutionProvider::CoreMl => ep::CoreML::NAME,
        ExecutionProvider::Nnapi => ep::NNAPI::NAME,
        ExecutionProvider::Qnn => ep::QNN::NAME,
        ExecutionProvider::XnnPack => ep::XNNPACK::NAME,
    }
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
    fn versions_older_than_the_api_level_are_refused() {
        assert_eq!(ort::MINOR_VERSION, 24, "ort's api-24 feature");
        assert_eq!(required_version(), "1.24");
        for old in ["1.16.3", "1.23.2", "0.99.0", "", "garbage", "1"] {
            assert!(!supported(old), "{old}");
        }
        for new in ["1.24.0", "1.31.1", "1.100.0", "2.0.0", "1.24"] {
            assert!(supported(new), "{new}");
        }
    }

    #[test]
    fn a_file_that_is_no_library_is_a_library_error() {
        let not_a_library = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let opts = EngineOptions {
            ort_library: Some(not_a_library.clone()),
            ..EngineOptions::default()
        };
        // No other unit test loads a library, so this is the first load.
        match runtime(&opts).err().unwrap() {
            EngineError::OrtLibrary { path, .. } => assert_eq!(path, not_a_library),
            e => panic!("expected a library error, got {e:?}"),
        }
    }

    #[test]
    fn tensorrt_caches_live_under_the_cache_dir_apart_per_precision() {
        let dir = PathBuf::from("/var/cache/tailor/tensorrt");
        let opts = |fp16| EngineOptions {
            provider: ExecutionProvider::TensorRt,
            cache_dir: Some(dir.clone()),
            fp16,
            ..EngineOptions::default()
        };
        assert_eq!(
            TensorRtSettings::from(&opts(true)),
            TensorRtSettings {
                fp16: true,
                engine_cache: Some(dir.join("fp16")),
                timing_cache: Some(dir.clone()),
            }
        );
        let fp32 = TensorRtSettings::from(&opts(false));
        assert_eq!(
            (fp32.fp16, fp32.engine_cache),
            (false, Some(dir.join("fp32")))
        );
        let uncached = TensorRtSettings::from(&EngineOptions {
            cache_dir: None,
            ..opts(false)
        });
        assert_eq!((uncached.engine_cache, uncached.timing_cache), (None, None));
    }

    #[test]
    fn tensorrt_versions_decode_in_both_encodings() {
        // NV_TENSORRT_VERSION of JetPack 5's 8.5.2, JetPack 6's 8.6.2 and 10.3.0.
        assert_eq!(tensorrt_version_name(8502), "8.5.2");
        assert_eq!(tensorrt_version_name(8602), "8.6.2");
        assert_eq!(tensorrt_version_name(100300), "10.3.0");
        assert_eq!(tensorrt_version_name(101201), "10.12.1");
    }

    #[test]
    fn a_name_new_in_the_engine_cache_is_a_built_engine() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("TensorrtExecutionProvider_a.engine"), b"").unwrap();
        let before = cache_entries(dir.path());
        assert!(cache_entries(dir.path()).is_subset(&before));
        fs::write(dir.path().join("TensorrtExecutionProvider_b.engine"), b"").unwrap();
        assert!(!cache_entries(dir.path()).is_subset(&before));
        assert!(cache_entries(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn the_tensorrt_cache_dirs_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TensorRtSettings {
            fp16: false,
            engine_cache: Some(dir.path().join("a/fp32")),
            timing_cache: Some(dir.path().join("a")),
        };
        tensorrt(&settings).unwrap();
        assert!(dir.path().join("a/fp32").is_dir());
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        let blocked = TensorRtSettings {
            engine_cache: Some(file.join("fp32")),
            ..settings
        };
        match tensorrt(&blocked) {
            Err(EngineError::CacheDir { dir, .. }) => assert_eq!(dir, file.join("fp32")),
            other => panic!("expected a cache dir error, got {:?}", other.err()),
        }
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
