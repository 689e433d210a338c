//! How a candidate runs: a sub-network is measured and served with a
//! [`Setup`], the engine and its thread count. A selection's candidates are
//! (sub-network × setup); a new dimension of how a sub-network runs joins
//! the setup, not the code that searches.

use std::fmt;

use serde::Serialize;

use crate::engine::EngineInfo;

/// The engine a candidate runs on, and with how many intra-op threads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    pub engine: EngineInfo,
    pub threads: usize,
}

/// `tract 0.23.9 on 2 threads`.
impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.threads == 1 { "" } else { "s" };
        write!(f, "{} on {} thread{s}", self.engine, self.threads)
    }
}

/// The thread counts a selection tries on `cpus` CPUs: all of them first
/// (the fastest on a quiet device), then half and one, which keep their
/// tail when other processes want the CPUs too. Deduplicated: `[2, 1]` on
/// two CPUs, `[1]` on one.
pub fn thread_counts(cpus: usize) -> Vec<usize> {
    let mut counts = vec![cpus.max(1), (cpus / 2).max(1), 1];
    counts.dedup();
    counts
}

/// The CPUs this process may use (affinity and cgroup quota included).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_are_all_half_and_one_without_repeats() {
        assert_eq!(thread_counts(8), [8, 4, 1]);
        assert_eq!(thread_counts(3), [3, 1]);
        assert_eq!(thread_counts(2), [2, 1]);
        assert_eq!(thread_counts(1), [1]);
        assert_eq!(thread_counts(0), [1]);
    }
}
