//! Inference engines: one [`Session`] interface over tract (pure Rust, always
//! built) and ONNX Runtime (feature `ort`, loaded from the device's
//! `libonnxruntime.so` at run time).
//!
//! Both engines load the same bundle graphs: input `pixel_values`
//! `[batch, 3, H, W]`, outputs `cls_token` `[batch, w]` and `patch_tokens`
//! `[batch, N, w]` (and `logits` `[batch, classes]` once `exporter calibrate
//! --head` added a task head), weights as ONNX external data next to the
//! graph. The batch
//! is fixed when a session is loaded, so every run has the shape it was
//! planned (and measured) for.

mod error;
mod graph;
#[cfg(feature = "ort")]
mod ort;
pub mod segment;
pub mod tract;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::{Array2, Array3, ArrayView4, ArrayViewD, Ix2, Ix3};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use error::{EngineError, UnknownName};
pub use graph::Graph;

/// Which inference engine runs a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EngineKind {
    /// tract: pure Rust, CPU only, always available.
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time (feature `ort`).
    Ort,
}

impl EngineKind {
    const NAMES: &'static [(Self, &'static str)] = &[(Self::Tract, "tract"), (Self::Ort, "ort")];
}

/// Where ONNX Runtime places the graph's nodes (tract always runs on the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    Cuda,
    TensorRt,
    OpenVino,
    CoreMl,
    Nnapi,
    Qnn,
    XnnPack,
}

impl ExecutionProvider {
    const NAMES: &'static [(Self, &'static str)] = &[
        (Self::Cpu, "cpu"),
        (Self::Cuda, "cuda"),
        (Self::TensorRt, "tensorrt"),
        (Self::OpenVino, "openvino"),
        (Self::CoreMl, "coreml"),
        (Self::Nnapi, "nnapi"),
        (Self::Qnn, "qnn"),
        (Self::XnnPack, "xnnpack"),
    ];
}

/// Display, FromStr and serde through one name table, so they never disagree.
macro_rules! named {
    ($ty:ty, $what:literal) => {
        impl $ty {
            /// The lowercase name used on command lines and in reports.
            pub fn name(self) -> &'static str {
                Self::NAMES
                    .iter()
                    .find(|(v, _)| *v == self)
                    .map(|(_, n)| *n)
                    .unwrap_or_default()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                Self::NAMES
                    .iter()
                    .find(|(_, n)| n.eq_ignore_ascii_case(s))
                    .map(|(v, _)| *v)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        name: s.to_owned(),
                        expected: Self::NAMES.iter().map(|(_, n)| *n).collect(),
                    })
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
named!(EngineKind, "engine");
named!(ExecutionProvider, "execution provider");

/// How to load a session (serde, so a parent process can hand it to a child).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOptions {
    /// Intra-op threads; `None` keeps the engine's default (tract: one thread,
    /// ONNX Runtime: one per physical core).
    pub threads: Option<usize>,
    /// Images per run, fixed at load.
    pub batch: usize,
    /// ONNX Runtime only; tract refuses anything but [`ExecutionProvider::Cpu`].
    pub provider: ExecutionProvider,
    /// `libonnxruntime.so` to load; `None` reads `ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
    /// Where TensorRT keeps its engine and timing caches, so a graph's engine
    /// is built once per device rather than once per load; `None`: no caches.
    /// Other providers keep no cache and ignore it.
    pub cache_dir: Option<PathBuf>,
    /// Let TensorRT run in half precision; refused for every other provider,
    /// which would silently run in full precision.
    pub fp16: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: None,
            batch: 1,
            provider: ExecutionProvider::Cpu,
            ort_library: None,
            cache_dir: None,
            fp16: false,
        }
    }
}

/// A graph loaded for one batch size, ready to run.
pub trait Session: Send {
    /// Runs one batch; `pixels` must have exactly [`Session::input_shape`].
    fn run(&mut self, pixels: ArrayView4<'_, f32>) -> Result<Outputs, EngineError>;
    /// `[batch, 3, H, W]` as loaded.
    fn input_shape(&self) -> [usize; 4];
    /// The execution provider that really runs the graph (`"cpu"` for tract).
    fn provider(&self) -> &str;
    /// Whether loading built an accelerator engine (TensorRT) rather than
    /// reading it from the engine cache: the build is then in the load time.
    fn built_engine(&self) -> bool {
        false
    }
}

/// What a graph computes for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// `[batch, w]`
    pub cls_token: Array2<f32>,
    /// `[batch, N, w]`
    pub patch_tokens: Array3<f32>,
    /// `[batch, classes]`, when the graph has a task head.
    pub logits: Option<Array2<f32>>,
}

impl Outputs {
    /// The class with the largest logit for image `image` of the batch (the
    /// first of equal ones); `None` without a task head.
    pub fn top_class(&self, image: usize) -> Option<usize> {
        let row = self.logits.as_ref()?.row(image);
        row.iter()
            .enumerate()
            .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
                Some((_, b)) if b >= v => best,
                _ => Some((i, v)),
            })
            .map(|(i, _)| i)
    }
}

/// Loads `graph` into `kind`'s engine.
///
/// The graph's interface and external data are checked before either engine
/// sees it, so both report the same errors for the same broken bundle.
pub fn load(
    kind: EngineKind,
    graph: &Path,
    opts: &EngineOptions,
) -> Result<Box<dyn Session>, EngineError> {
    validate(opts)?;
    let graph = Graph::read(graph)?;
    match kind {
        EngineKind::Tract => Ok(Box::new(tract::TractSession::load(graph, opts)?)),
        #[cfg(feature = "ort")]
        EngineKind::Ort => Ok(Box::new(ort::OrtSession::load(graph, opts)?)),
        #[cfg(not(feature = "ort"))]
        EngineKind::Ort => Err(EngineError::NotBuilt(kind)),
    }
}

/// The tract-onnx this crate is built with (`tract_onnx` exports no
/// version; a unit test holds this to Cargo.lock).
const TRACT_VERSION: &str = "0.23.9";

/// An engine library as loaded in this process: what a decision measured
/// with it depends on, so an upgrade is visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub kind: EngineKind,
    /// tract's crate version, or the version ONNX Runtime reports.
    pub version: String,
    /// Always [`ExecutionProvider::Cpu`] for tract.
    pub provider: ExecutionProvider,
}

/// `tract 0.23.9`, `ort 1.31.1 cpu`: tract has no provider to name.
impl fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.version)?;
        match self.kind {
            EngineKind::Tract => Ok(()),
            EngineKind::Ort => write!(f, " {}", self.provider),
        }
    }
}

/// A pre-flight run once before any graph is loaded: validates the options,
/// loads the engine's library and registers the provider, so every error it
/// returns is systematic and the search can stop before its first candidate.
pub fn check(kind: EngineKind, opts: &EngineOptions) -> Result<EngineInfo, EngineError> {
    validate(opts)?;
    match kind {
        EngineKind::Tract => tract::check(opts),
        #[cfg(feature = "ort")]
        EngineKind::Ort => ort::check(opts),
        #[cfg(not(feature = "ort"))]
        EngineKind::Ort => Err(EngineError::NotBuilt(kind)),
    }
}

/// The checks of options that need no engine.
fn validate(opts: &EngineOptions) -> Result<(), EngineError> {
    if opts.batch == 0 {
        return Err(EngineError::Options("batch must be at least 1"));
    }
    if opts.threads == Some(0) {
        return Err(EngineError::Options(
            "threads must be at least 1 (or unset)",
        ));
    }
    if opts.fp16 && opts.provider != ExecutionProvider::TensorRt {
        return Err(EngineError::Options(
            "fp16 is a TensorRT setting: choose provider tensorrt or drop fp16",
        ));
    }
    Ok(())
}

/// Checks a run's input against the loaded shape (shared by both engines).
fn check_input(
    graph: &Path,
    expected: [usize; 4],
    pixels: &ArrayView4<'_, f32>,
) -> Result<(), EngineError> {
    let got: [usize; 4] = pixels.dim().into();
    if got == expected {
        Ok(())
    } else {
        Err(EngineError::InputShape {
            graph: graph.to_owned(),
            expected,
            got,
        })
    }
}

/// Copies an engine's output views into [`Outputs`], checking that they
/// have the shapes every bundle graph promises for `batch`.
fn outputs(
    graph: &Path,
    batch: usize,
    cls: ArrayViewD<'_, f32>,
    patch: ArrayViewD<'_, f32>,
    logits: Option<ArrayViewD<'_, f32>>,
) -> Result<Outputs, EngineError> {
    let bad = |name: &str, shape: &[usize], want: &str| EngineError::Interface {
        graph: graph.to_owned(),
        problem: format!("output `{name}` has shape {shape:?}, expected {want} for batch {batch}"),
    };
    let (cls_shape, patch_shape) = (cls.shape().to_vec(), patch.shape().to_vec());
    let cls = cls
        .into_dimensionality::<Ix2>()
        .ok()
        .filter(|c| c.nrows() == batch)
        .ok_or_else(|| bad(graph::OUTPUTS[0], &cls_shape, "[batch, w]"))?;
    let patch = patch
        .into_dimensionality::<Ix3>()
        .ok()
        .filter(|p| p.dim().0 == batch && p.dim().2 == cls.ncols())
        .ok_or_else(|| bad(graph::OUTPUTS[1], &patch_shape, "[batch, N, w]"))?;
    let logits = logits
        .map(|l| {
            let shape = l.shape().to_vec();
            l.into_dimensionality::<Ix2>()
                .ok()
                .filter(|l| l.nrows() == batch && l.ncols() > 0)
                .map(|l| l.to_owned())
                .ok_or_else(|| bad(graph::LOGITS, &shape, "[batch, classes]"))
        })
        .transpose()?;
    Ok(Outputs {
        cls_token: cls.to_owned(),
        patch_tokens: patch.to_owned(),
        logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tract_version_is_the_one_in_cargo_lock() {
        let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
        let lock = std::fs::read_to_string(&lock).unwrap();
        let entry = format!("name = \"tract-onnx\"\nversion = \"{TRACT_VERSION}\"\n");
        assert!(
            lock.contains(&entry),
            "Cargo.lock has another tract-onnx than {TRACT_VERSION}"
        );
    }

    #[test]
    fn info_names_the_provider_only_where_there_is_a_choice() {
        let tract = EngineInfo {
            kind: EngineKind::Tract,
            version: "0.23.9".into(),
            provider: ExecutionProvider::Cpu,
        };
        assert_eq!(tract.to_string(), "tract 0.23.9");
        let ort = EngineInfo {
            kind: EngineKind::Ort,
            version: "1.31.1".into(),
            provider: ExecutionProvider::TensorRt,
        };
        assert_eq!(ort.to_string(), "ort 1.31.1 tensorrt");
    }

    #[test]
    fn fp16_is_refused_where_it_would_be_ignored() {
        for provider in [ExecutionProvider::Cpu, ExecutionProvider::Cuda] {
            let opts = EngineOptions {
                provider,
                fp16: true,
                ..EngineOptions::default()
            };
            assert!(
                matches!(validate(&opts), Err(EngineError::Options(_))),
                "{provider}"
            );
        }
        let tensorrt = EngineOptions {
            provider: ExecutionProvider::TensorRt,
            fp16: true,
            ..EngineOptions::default()
        };
        assert!(validate(&tensorrt).is_ok());
    }
}
