//! What can go wrong loading or running a graph.

use std::error::Error;
use std::io;
use std::path::PathBuf;

use super::{EngineKind, ExecutionProvider};
use crate::fs::Escape;

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
    #[error("{}: refused: external data `{location}` of tensor `{tensor}` {problem}", graph.display())]
    OutsideExternalData {
        graph: PathBuf,
        tensor: String,
        location: String,
        problem: Escape,
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
        "{}: execution provider `{requested}` was requested but the graph would run on `{actual}` \
         ({reason}); install the provider's libraries or choose provider cpu",
        graph.display()
    )]
    ProviderFallback {
        graph: PathBuf,
        requested: ExecutionProvider,
        actual: String,
        reason: String,
    },
    #[error(
        "execution provider `{provider}` is not available in {engine} ({reason}); \
         install the provider's libraries or choose provider cpu"
    )]
    ProviderUnavailable {
        engine: EngineKind,
        provider: ExecutionProvider,
        reason: String,
    },
    #[error("engine `{0}` is not in this build; enable feature `ort` of tailor-runtime")]
    NotBuilt(EngineKind),
    #[error(
        "no ONNX Runtime library configured; set ORT_DYLIB_PATH to libonnxruntime.so (`runtime` \
         also takes --ort-library or ort_library in its config)"
    )]
    OrtLibraryUnset,
    #[error(
        "ONNX Runtime library {}: cannot load; set ORT_DYLIB_PATH to libonnxruntime.so \
         (`runtime` also takes --ort-library or ort_library in its config)",
        path.display()
    )]
    OrtLibrary {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error(
        "ONNX Runtime library {} is version {found} but this build needs {required} or newer; \
         install a newer libonnxruntime.so",
        path.display()
    )]
    OrtTooOld {
        path: PathBuf,
        found: String,
        required: String,
    },
    #[error(
        "ONNX Runtime is already loaded from {}; a process cannot switch to {} \
         (use one library per process)",
        loaded.display(),
        requested.display()
    )]
    OrtLibraryConflict { loaded: PathBuf, requested: PathBuf },
    #[error("TensorRT cache directory {}: cannot create; choose a writable cache directory", dir.display())]
    CacheDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl EngineError {
    /// Whether the error cannot depend on the graph: the start-up search
    /// stops at once on such an error instead of failing every candidate.
    /// Every systematic error's message ends with its fix.
    pub fn is_systematic(&self) -> bool {
        match self {
            EngineError::Read { .. }
            | EngineError::NotOnnx { .. }
            | EngineError::Interface { .. }
            | EngineError::MissingExternalData { .. }
            | EngineError::OutsideExternalData { .. }
            | EngineError::TruncatedExternalData { .. }
            | EngineError::InputShape { .. }
            | EngineError::Backend { .. } => false,
            EngineError::Options(_)
            | EngineError::ProviderFallback { .. }
            | EngineError::ProviderUnavailable { .. }
            | EngineError::NotBuilt(_)
            | EngineError::OrtLibraryUnset
            | EngineError::OrtLibrary { .. }
            | EngineError::OrtTooOld { .. }
            | EngineError::OrtLibraryConflict { .. }
            | EngineError::CacheDir { .. } => true,
        }
    }

    /// A stable snake_case name of the variant, for reports and for telling
    /// the same failure on two candidates apart from two different ones.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Read { .. } => "read",
            EngineError::NotOnnx { .. } => "not_onnx",
            EngineError::Interface { .. } => "interface",
            EngineError::MissingExternalData { .. } => "missing_external_data",
            EngineError::OutsideExternalData { .. } => "outside_external_data",
            EngineError::TruncatedExternalData { .. } => "truncated_external_data",
            EngineError::InputShape { .. } => "input_shape",
            EngineError::Options(_) => "options",
            EngineError::Backend { .. } => "backend",
            EngineError::ProviderFallback { .. } => "provider_fallback",
            EngineError::ProviderUnavailable { .. } => "provider_unavailable",
            EngineError::NotBuilt(_) => "not_built",
            EngineError::OrtLibraryUnset => "ort_library_unset",
            EngineError::OrtLibrary { .. } => "ort_library",
            EngineError::OrtTooOld { .. } => "ort_too_old",
            EngineError::OrtLibraryConflict { .. } => "ort_library_conflict",
            EngineError::CacheDir { .. } => "cache_dir",
        }
    }
}

/// A name that is not one of an enum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}` (expected one of: {})", expected.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    pub expected: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of each variant, with whether it is systematic.
    fn each() -> Vec<(EngineError, bool)> {
        let graph = PathBuf::from("g.onnx");
        let io = || io::Error::from(io::ErrorKind::NotFound);
        vec![
            (
                EngineError::Read {
                    graph: graph.clone(),
                    source: io(),
                },
                false,
            ),
            (
                EngineError::NotOnnx {
                    graph: graph.clone(),
                    source: "x".into(),
                },
                false,
            ),
            (
                EngineError::Interface {
                    graph: graph.clone(),
                    problem: "x".into(),
                },
                false,
            ),
            (
                EngineError::MissingExternalData {
                    graph: graph.clone(),
                    data: "w.bin".into(),
                    tensor: "t".into(),
                    source: io(),
                },
                false,
            ),
            (
                EngineError::OutsideExternalData {
                    graph: graph.clone(),
                    tensor: "t".into(),
                    location: "../w.bin".into(),
                    problem: Escape::Parent,
                },
                false,
            ),
            (
                EngineError::TruncatedExternalData {
                    graph: graph.clone(),
                    data: "w.bin".into(),
                    tensor: "t".into(),
                    end: 2,
                    size: 1,
                },
                false,
            ),
            (
                EngineError::InputShape {
                    graph: graph.clone(),
                    expected: [1; 4],
                    got: [2; 4],
                },
                false,
            ),
            (
                EngineError::Backend {
                    graph: graph.clone(),
                    engine: EngineKind::Ort,
                    source: "x".into(),
                },
                false,
            ),
            (EngineError::Options("x"), true),
            (
                EngineError::ProviderFallback {
                    graph,
                    requested: ExecutionProvider::Cuda,
                    actual: "cpu".into(),
                    reason: "x".into(),
                },
                true,
            ),
            (
                EngineError::ProviderUnavailable {
                    engine: EngineKind::Ort,
                    provider: ExecutionProvider::Cuda,
                    reason: "x".into(),
                },
                true,
            ),
            (EngineError::NotBuilt(EngineKind::Ort), true),
            (EngineError::OrtLibraryUnset, true),
            (
                EngineError::OrtLibrary {
                    path: "l.so".into(),
                    source: "x".into(),
                },
                true,
            ),
            (
                EngineError::OrtTooOld {
                    path: "l.so".into(),
                    found: "1.16.3".into(),
                    required: "1.24".into(),
                },
                true,
            ),
            (
                EngineError::OrtLibraryConflict {
                    loaded: "a.so".into(),
                    requested: "b.so".into(),
                },
                true,
            ),
            (
                EngineError::CacheDir {
                    dir: "c".into(),
                    source: io(),
                },
                true,
            ),
        ]
    }

    #[test]
    fn only_configuration_errors_are_systematic() {
        for (err, systematic) in each() {
            assert_eq!(err.is_systematic(), systematic, "{err:?}");
        }
    }

    #[test]
    fn kinds_tell_every_variant_apart() {
        let mut kinds: Vec<&str> = each().iter().map(|(e, _)| e.kind()).collect();
        assert!(kinds
            .iter()
            .all(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        kinds.sort_unstable();
        let before = kinds.len();
        kinds.dedup();
        assert_eq!(kinds.len(), before, "{kinds:?}");
    }

    #[test]
    fn too_old_names_both_versions_and_the_fix() {
        let err = EngineError::OrtTooOld {
            path: "/opt/libonnxruntime.so".into(),
            found: "1.16.3".into(),
            required: "1.24".into(),
        };
        let text = err.to_string();
        for needle in [
            "/opt/libonnxruntime.so",
            "1.16.3",
            "1.24",
            "install a newer",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
    }

    #[test]
    fn not_built_says_which_feature_to_enable() {
        let text = EngineError::NotBuilt(EngineKind::Ort).to_string();
        assert!(text.contains("enable feature `ort`"), "{text}");
    }
}
