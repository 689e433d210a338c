//! Measuring a candidate.
