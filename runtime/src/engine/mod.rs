//! Inference engines: one [`Session`] interface over tract (pure Rust, always
//! built) and ONNX Runtime (feature `ort`, loaded from the device's
//! `libonnxruntime.so` at run time).
//!
//! Both engines load the same bundle graphs: input `pixel_values`
//! `[batch, 3, H, W]`, outputs `cls_token` `[batch, w]` and `patch_tokens`
//! `[batch, N, w]`, weights as ONNX external data next to the graph. The batch
//! is fixed when a session is loaded, so every run has the shape it was
//! planned (and measured) for.

mod error;
mod graph;
#[cfg(feature = "ort")]
mod ort;
mod tract;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::{Array2, Array3, ArrayView4, ArrayViewD, Ix2, Ix3};

pub use error::{EngineError, UnknownName};

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

/// Display and FromStr through one name table, so the two never disagree.
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
    };
}
named!(EngineKind, "engine");
named!(ExecutionProvider, "execution provider");

/// How to load a session.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: None,
            batch: 1,
            provider: ExecutionProvider::Cpu,
            ort_library: None,
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
}

/// What a graph computes for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// `[batch, w]`
    pub cls_token: Array2<f32>,
    /// `[batch, N, w]`
    pub patch_tokens: Array3<f32>,
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
    if opts.batch == 0 {
        return Err(EngineError::Options("batch must be at least 1"));
    }
    if opts.threads == Some(0) {
        return Err(EngineError::Options(
            "threads must be at least 1 (or unset)",
        ));
    }
    let graph = graph::Graph::read(graph)?;
    match kind {
        EngineKind::Tract => Ok(Box::new(tract::TractSession::load(graph, opts)?)),
        #[cfg(feature = "ort")]
        EngineKind::Ort => Ok(Box::new(ort::OrtSession::load(graph, opts)?)),
        #[cfg(not(feature = "ort"))]
        EngineKind::Ort => Err(EngineError::NotBuilt(kind)),
    }
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

/// Copies an engine's two output views into [`Outputs`], checking that they
/// have the shapes every bundle graph promises for `batch`.
fn outputs(
    graph: &Path,
    batch: usize,
    cls: ArrayViewD<'_, f32>,
    patch: ArrayViewD<'_, f32>,
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
    Ok(Outputs {
        cls_token: cls.to_owned(),
        patch_tokens: patch.to_owned(),
    })
}
