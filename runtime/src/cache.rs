//! Decision cache.
