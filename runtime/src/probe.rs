//! Hardware probe.
