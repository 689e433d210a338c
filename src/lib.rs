//! tailor: export train-once elastic vision models (POA, SDR) into per-budget
//! bundles and pick the best sub-network that fits an edge device.
//!
//! This crate is a facade over the workspace members; see each for details.

pub use tailor_calibration as calibration;
pub use tailor_exporter as exporter;
pub use tailor_runtime as runtime;
pub use tailor_targets as targets;
