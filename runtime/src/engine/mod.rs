//! Inference engines.
