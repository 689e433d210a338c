//! Which setup measures and serves: with `auto`, the engines race on the
//! first candidate, and the one that lost looks again where the winner's
//! search did not reach; then each other thread count looks again the same
//! way with the chosen engine.
//!
//! Threads are looked at again rather than raced, or folded into the
//! policy's candidates: the latency model is one device curve per setup
//! (another thread count is another curve, not another point on it), and a
//! look confined to the candidates ranked above the choice costs two
//! measurements when it finds nothing, where a second full search would cost
//! eight. The largest thread count searches first: on a quiet device it
//! runs every candidate fastest, so the looks with fewer threads only pay
//! where other load stretches its tail.

use super::search::{Decided, Ended, EngineTrial, Search};
use super::{Runtime, SelectError, Setup, MB};
use crate::engine::EngineInfo;
use crate::manifest::Subnet;
use crate::policy;
use crate::profile::{Measurement, Percentile};
use crate::trial::Failure;

/// A search and how it ended: the decision so far.
struct Looked<'r> {
    search: Search<'r>,
    ended: Ended,
}

impl Runtime {
    /// Searches with the first engine on the first of `threads` (racing the
    /// other engines on the first candidate). With `auto`, the engine that
    /// lost the race then looks among the candidates ranked above the
    /// choice, or among all when nothing fit or the search stopped: one race
    /// on the cheapest candidate does not decide which engine fits the most
    /// at every limit. Each other thread count then looks the same way with
    /// the engine chosen.
    pub(super) fn search(
        &self,
        limits: &policy::Bounds,
        percentile: Percentile,
        engines: &[EngineInfo],
        threads: &[usize],
    ) -> Result<Decided, SelectError> {
        let everyone: Vec<usize> = (0..self.bundle.manifest().subnets.len()).collect();
        let mut search = Search::new(self, limits, percentile, engines, threads[0]);
        let ended = search.run(&everyone)?;
        let mut looked = Looked { search, ended };
        let engine = &looked.search.setup.engine;
        if let Some(other) = engines.iter().find(|e| e.kind != engine.kind) {
            let setup = Setup {
                engine: other.clone(),
                threads: threads[0],
            };
            looked = self.look_again(looked, setup, &everyone)?;
        }
        for &threads in &threads[1..] {
            let setup = Setup {
                threads,
                ..looked.search.setup.clone()
            };
            looked = self.look_again(looked, setup, &everyone)?;
        }
        looked.search.end(looked.ended)
    }

    /// `setup` looks among the candidates ranked above `looked`'s choice,
    /// or among all when it has none; the better of the two decisions, with
    /// every trial and a note of the look.
    fn look_again<'r>(
        &'r self,
        mut looked: Looked<'r>,
        setup: Setup,
        everyone: &[usize],
    ) -> Result<Looked<'r>, SelectError> {
        let pool = match &looked.ended {
            // Nothing measured: what excluded everything excludes it for any setup.
            _ if looked.search.trials.is_empty() => return Ok(looked),
            Ended::Winner { better, .. } if better.is_empty() => return Ok(looked),
            Ended::Winner { better, .. } => better.clone(),
            Ended::NothingFits(_) | Ended::Stopped(_) => everyone.to_vec(),
        };
        let first = &looked.search;
        let mut second = Search::new(
            self,
            first.limits,
            first.percentile,
            std::slice::from_ref(&setup.engine),
            setup.threads,
        );
        let outcome = second.run(&pool);
        let manifest = self.bundle.manifest();
        let beaten = match &looked.ended {
            Ended::Winner { index, .. } => format!(
                "ranked above {}'s choice, {}",
                first.setup, manifest.subnets[*index].id
            ),
            Ended::NothingFits(_) => format!("where nothing fit with {}", first.setup),
            Ended::Stopped(e) => format!("where the search with {} ended: {e}", first.setup),
        };
        let why = match outcome {
            Ok(ended @ Ended::Winner { index, .. }) => {
                let note = format!(
                    "{} fits with {}, {beaten}",
                    manifest.subnets[index].id, second.setup
                );
                let mut first = looked.search;
                second.trials.splice(0..0, first.trials);
                second.engine_trials = first.engine_trials;
                second.confirmations += first.confirmations;
                first.notes.push(note);
                second.notes.splice(0..0, first.notes);
                return Ok(Looked {
                    search: second,
                    ended,
                });
            }
            Ok(Ended::NothingFits(why)) => why,
            Ok(Ended::Stopped(e)) | Err(e) => format!("{:#}", anyhow::Error::from(e)),
        };
        let note = format!("{} found nothing better: {why}", second.setup);
        let first = &mut looked.search;
        first.trials.append(&mut second.trials);
        first.confirmations += second.confirmations;
        looked.ended = match looked.ended {
            winner @ Ended::Winner { .. } => {
                first.notes.push(note);
                winner
            }
            Ended::NothingFits(first) => Ended::NothingFits(format!("{first}; {note}")),
            Ended::Stopped(SelectError::Stopped(first)) => {
                Ended::Stopped(SelectError::Stopped(format!("{first}; {note}")))
            }
            Ended::Stopped(SelectError::NothingFits(first)) => {
                Ended::Stopped(SelectError::NothingFits(format!("{first}; {note}")))
            }
            stopped @ Ended::Stopped(_) => stopped,
        };
        Ok(looked)
    }
}

impl Search<'_> {
    /// With engines still to compare: measures `subnet` with each, and
    /// continues with the fastest at the limit's percentile (of those within
    /// the memory limit, if any is). `measured` is
    /// the current engine's measurement; its failure keeps the others out
    /// (the search's failure rules judge it), theirs are notes.
    pub(super) fn race(
        &mut self,
        subnet: &Subnet<'_>,
        measured: Result<Vec<Measurement>, Failure>,
    ) -> Result<Vec<Measurement>, Failure> {
        let contenders = std::mem::take(&mut self.contenders);
        let Ok(current) = &measured else {
            return measured;
        };
        if contenders.is_empty() {
            return measured;
        }
        let runtime = self.runtime;
        let trial =
            |engine: &EngineInfo, outcome: &Result<Vec<Measurement>, Failure>| EngineTrial {
                engine: engine.to_string(),
                id: subnet.id.to_owned(),
                measured: outcome.as_ref().ok().map(|m| m[0].clone()),
                note: outcome.as_ref().err().map(Failure::to_string),
            };
        // Within memory first, then faster.
        let rank = |m: &Measurement| {
            let over = (m.peak_mb * MB) as u64 > self.limits.memory_bytes;
            (over, m.percentile_ms(self.percentile))
        };
        self.engine_trials
            .push(trial(&self.setup.engine, &measured));
        let mut best = (self.setup.engine.clone(), rank(&current[0]), measured);
        for engine in contenders {
            let outcome = runtime.measure(
                &[subnet],
                self.limits.batch,
                &runtime.options.measure,
                &Setup {
                    engine: engine.clone(),
                    threads: self.setup.threads,
                },
                Some(self.limits.latency_ms),
            );
            self.engine_trials.push(trial(&engine, &outcome));
            if let Ok(m) = &outcome {
                let rank = rank(&m[0]);
                if rank < best.1 {
                    best = (engine, rank, outcome);
                }
            }
        }
        self.setup.engine = best.0;
        best.2
    }
}
