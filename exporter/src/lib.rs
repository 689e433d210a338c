//! The workstation half of tailor: read an elastic teacher checkpoint, slice
//! it into per-budget sub-networks and write them as a bundle of ONNX graphs.

pub mod bundle;
pub mod checkpoint;
pub mod config;
pub mod family;
pub mod onnx;
pub mod pack;
pub mod plan;
pub mod quant;
// Random teachers for the workspace's tests and benches: test support
// behind the `synthetic` feature, not an API.
#[cfg(feature = "synthetic")]
#[doc(hidden)]
pub mod synthetic;
