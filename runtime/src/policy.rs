//! Selection policy (no_std core).
