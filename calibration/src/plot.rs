//! Pareto plot (in progress).
