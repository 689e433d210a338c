//! What can go wrong loading or running a graph.

use std::error::Error;
use std::io;
use std::path::PathBuf;

use super::{EngineKind, ExecutionProvider};

/// An engine's own error, kept as the source of ours.
pub type BackendError = Box<dyn Error + Send + Sync>;

/// Why a graph could not be loaded or run. Every variant about a graph names
/// its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("{}: cannot read the graph", graph.display())]
    Read {
        graph: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not an ONNX graph", graph.display())]
    NotOnnx {
        graph: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error("{}: not a tailor graph: {problem}", graph.display())]
    Interface { graph: PathBuf, problem: String },
    #[error("{}: external data {} of tensor `{tensor}` cannot be read", graph.display(), data.display())]
    MissingExternalData {
        graph: PathBuf,
        data: PathBuf,
        tensor: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: external data {} holds {size} bytes but tensor `{tensor}` ends at byte {end}",
        graph.display(),
        data.display()
    )]
    TruncatedExternalData {
        graph: PathBuf,
        data: PathBuf,
        tensor: String,
        end: u64,
        size: u64,
    },
    #[error("{}: input of shape {got:?} given to a session loaded for {expected:?}", graph.display())]
    InputShape {
        graph: PathBuf,
        expected: [usize; 4],
        got: [usize; 4],
    },
    #[error("invalid engine options: {0}")]
    Options(&'static str),
    #[error("{}: {engine} failed", graph.display())]
    Backend {
        graph: PathBuf,
        engine: EngineKind,
        #[source]
        source: BackendError,
    },
    #[error(
        "{}: execution provider `{requested}` was requested but the graph would run on `{actual}` ({reason})",
        graph.display()
    )]
    ProviderFallback {
        graph: PathBuf,
        requested: ExecutionProvider,
        actual: String,
        reason: String,
    },
    #[error("engine `{0}` is not in this build (enable feature `ort` of tailor-runtime)")]
    NotBuilt(EngineKind),
    #[error(
        "no ONNX Runtime library configured: set ORT_DYLIB_PATH or EngineOptions::ort_library"
    )]
    OrtLibraryUnset,
    #[error("ONNX Runtime library {}: cannot load", path.display())]
    OrtLibrary {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error(
        "ONNX Runtime is already loaded from {}; a process cannot switch to {}",
        loaded.display(),
        requested.display()
    )]
    OrtLibraryConflict { loaded: PathBuf, requested: PathBuf },
}

/// A name that is not one of an enum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}` (expected one of: {})", expected.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    pub expected: Vec<&'static str>,
}
