//! Which engine measures and serves: with `auto`, the engines race on the
//! first candidate, and the one that lost looks again where the winner's
//! search did not reach. Another dimension of a candidate's configuration
//! (say, its thread count) would race here too.

use super::search::{Decided, Ended, EngineTrial, Search};
use super::{Runtime, SelectError, MB};
use crate::engine::EngineInfo;
use crate::manifest::Subnet;
use crate::policy;
use crate::profile::{Measurement, Percentile};
use crate::trial::Failure;

impl Runtime {
    /// Searches with the first engine (racing the others on the first
    /// candidate). With `auto`, the engine that lost the race then looks
    /// among the candidates ranked above the choice, or among all when
    /// nothing fit or the search stopped: one race on the cheapest candidate
    /// does not decide which engine fits the most at every limit.
    pub(super) fn search(
        &self,
        limits: &policy::Bounds,
        percentile: Percentile,
        engines: &[EngineInfo],
    ) -> Result<Decided, SelectError> {
        let everyone: Vec<usize> = (0..self.bundle.manifest().subnets.len()).collect();
        let mut search = Search::new(self, limits, percentile, engines);
        let ended = search.run(&everyone)?;
        let other = engines.iter().find(|e| e.kind != search.engine.kind);
        let (pool, other) = match (&ended, other) {
            (_, None) => return search.end(ended),
            // Nothing measured: what excluded everything excludes it for any engine.
            _ if search.trials.is_empty() => return search.end(ended),
            (Ended::Winner { better, .. }, _) if better.is_empty() => return search.end(ended),
            (Ended::Winner { better, .. }, Some(other)) => (better.clone(), other),
            (Ended::NothingFits(_) | Ended::Stopped(_), Some(other)) => (everyone, other),
        };
        let mut second = Search::new(self, limits, percentile, std::slice::from_ref(other));
        let looked = second.run(&pool);
        let manifest = self.bundle.manifest();
        let beaten = match &ended {
            Ended::Winner { index, .. } => format!(
                "ranked above {}'s choice, {}",
                search.engine, manifest.subnets[*index].id
            ),
            Ended::NothingFits(_) => format!("where nothing fit with {}", search.engine),
            Ended::Stopped(e) => format!("where the search with {} ended: {e}", search.engine),
        };
        let why = match looked {
            Ok(Ended::Winner { index, .. }) => {
                let note = format!(
                    "{} fits with {}, {beaten}",
                    manifest.subnets[index].id, second.engine
                );
                second
                    .trials
                    .splice(0..0, std::mem::take(&mut search.trials));
                second.engine_trials = std::mem::take(&mut search.engine_trials);
                second.confirmations += search.confirmations;
                let mut decided = second.end(Ended::Winner {
                    index,
                    better: Vec::new(),
                })?;
                decided.notes.push(note);
                return Ok(decided);
            }
            Ok(Ended::NothingFits(why)) => why,
            Ok(Ended::Stopped(e)) | Err(e) => format!("{:#}", anyhow::Error::from(e)),
        };
        let note = format!("{} found nothing better: {why}", second.engine);
        match search.end(ended) {
            Ok(mut decided) => {
                decided.trials.append(&mut second.trials);
                decided.confirmed.confirmations += second.confirmations;
                decided.notes.push(note);
                Ok(decided)
            }
            Err(SelectError::NothingFits(first)) => {
                Err(SelectError::NothingFits(format!("{first}; {note}")))
            }
            Err(SelectError::Stopped(first)) => {
                Err(SelectError::Stopped(format!("{first}; {note}")))
            }
            Err(e) => Err(e),
        }
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
        self.engine_trials.push(trial(&self.engine, &measured));
        let mut best = (self.engine.clone(), rank(&current[0]), measured);
        for engine in contenders {
            let outcome = runtime.measure(
                &[subnet],
                self.limits.batch,
                &runtime.options.measure,
                engine.kind,
            );
            self.engine_trials.push(trial(&engine, &outcome));
            if let Ok(m) = &outcome {
                let rank = rank(&m[0]);
                if rank < best.1 {
                    best = (engine, rank, outcome);
                }
            }
        }
        self.engine = best.0;
        best.2
    }
}
