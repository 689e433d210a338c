//! Which setup measures and serves, and in which number format: with
//! `auto`, the engines race on the first candidate, and the one that lost
//! looks again where the winner's search did not reach; each other number
//! format then looks the same way, racing the engines on its own first
//! candidate; then each other thread count looks again with each format's
//! engine.
//!
//! Threads and formats are looked at again rather than raced, or folded
//! into the policy's candidates: the latency model is one device curve per
//! setup and format (another thread count, or int8 in place of fp32, is
//! another curve, not another point on it), and a look confined to the
//! choice and the candidates ranked above it costs about three measurements
//! when it finds nothing better, where a second full search would cost
//! eight. The choice itself is looked at so that the same result with more
//! headroom (a lower confirmed latency) wins. The largest thread
//! count searches first: on a quiet device it runs every candidate fastest,
//! so the looks with fewer threads only pay where other load stretches its
//! tail. The widest format searches first: it is the one every engine runs.

use std::cmp::Ordering;

use super::precision::{self, Curve, Precisions};
use super::search::{Decided, Ended, EngineTrial, Search};
use super::{Runtime, SelectError, Setup, MB};
use crate::engine::EngineInfo;
use crate::manifest::Subnet;
use crate::policy::{self, Candidate, Objective};
use crate::profile::{Measurement, Percentile};
use crate::trial::Failure;

/// A search and how it ended: the decision so far.
struct Looked<'r> {
    search: Search<'r>,
    ended: Ended,
}

/// What a look at one curve learned for the next looks at it.
struct Seen {
    /// The engine it measured with, after racing.
    engine: EngineInfo,
    /// It had every candidate of the curve and measured none: no setup will.
    dead: bool,
}

impl Runtime {
    /// Searches the widest format's candidates with the first engine on the
    /// first of `threads` (racing the other engines on the first candidate).
    /// With `auto`, the engine that lost the race then looks among the
    /// choice and the candidates ranked above it, or among all when nothing fit or
    /// the search stopped: one race on the cheapest candidate does not
    /// decide which engine fits the most at every limit. Each other format
    /// then looks the same way, racing the engines again; then each other
    /// thread count, each format with its engine.
    pub(super) fn search(
        &self,
        limits: &policy::Bounds,
        percentile: Percentile,
        engines: &[EngineInfo],
        threads: &[usize],
        precisions: &Precisions,
    ) -> Result<Decided, SelectError> {
        let manifest = self.bundle.manifest();
        let curves = precision::curves(&manifest, precisions);
        let Some(first) = curves.first() else {
            let has: Vec<&str> = (Precisions::every().present_in(&manifest).iter())
                .map(|k| k.name())
                .collect();
            return Err(SelectError::NoPrecision {
                asked: precisions.clone(),
                has: has.join(", "),
            });
        };
        let candidates: Vec<Candidate> = curves
            .iter()
            .flat_map(|c| &c.members)
            .map(|&i| Candidate::from(&manifest.subnets[i]))
            .collect();
        let objective = Objective::of(&candidates);
        let mut search = Search::new(self, limits, percentile, objective, engines, threads[0]);
        let ended = search.run(&first.members, None)?;
        // What ended a search before it measured anything (quality,
        // predicted memory) ends it with every setup.
        let mut seen = vec![Seen {
            engine: search.setup.engine.clone(),
            dead: search.trials.is_empty(),
        }];
        let mut looked = Looked { search, ended };
        let engine = &seen[0].engine;
        if let Some(other) = engines.iter().find(|e| e.kind != engine.kind) {
            if !seen[0].dead {
                let other = std::slice::from_ref(other);
                looked = self.look_again(looked, first, other, threads[0])?.0;
                seen[0].engine = looked.search.setup.engine.clone();
            }
        }
        for curve in &curves[1..] {
            // The fastest engine for fp32 need not be the fastest for int8.
            let chosen = &seen[0].engine;
            let raced: Vec<EngineInfo> = std::iter::once(chosen.clone())
                .chain(engines.iter().filter(|e| e.kind != chosen.kind).cloned())
                .collect();
            let (next, curve_seen) = self.look_again(looked, curve, &raced, threads[0])?;
            looked = next;
            seen.push(curve_seen);
        }
        for &threads in &threads[1..] {
            for (curve, seen) in curves.iter().zip(&seen).filter(|(_, s)| !s.dead) {
                let engine = std::slice::from_ref(&seen.engine);
                looked = self.look_again(looked, curve, engine, threads)?.0;
            }
        }
        looked.search.end(looked.ended)
    }

    /// `engines[0]` on `threads` looks among `looked`'s choice and `curve`'s
    /// candidates ranked above it, or among all of them when it has none
    /// (racing the other `engines` on its first candidate); the better of
    /// the two decisions, with every trial and a note of the look.
    fn look_again<'r>(
        &'r self,
        mut looked: Looked<'r>,
        curve: &Curve,
        engines: &[EngineInfo],
        threads: usize,
    ) -> Result<(Looked<'r>, Seen), SelectError> {
        let manifest = self.bundle.manifest();
        let first = &looked.search;
        let objective = first.objective;
        let score = |i: usize| objective.score(&Candidate::from(&manifest.subnets[i]));
        let pool: Vec<usize> = match &looked.ended {
            // The choice itself too: it may fit with more headroom here.
            Ended::Winner { index, .. } => {
                let best = score(*index);
                let at_or_above = curve.members.iter().copied();
                at_or_above.filter(|&i| !best.outranks(&score(i))).collect()
            }
            Ended::NothingFits(_) | Ended::Stopped(_) => curve.members.clone(),
        };
        let whole = pool.len() == curve.members.len();
        if pool.is_empty() {
            let seen = Seen {
                engine: engines[0].clone(),
                dead: false,
            };
            return Ok((looked, seen));
        }
        let (limits, percentile) = (first.limits, first.percentile);
        let mut second = Search::new(self, limits, percentile, objective, engines, threads);
        let outcome = second.run(&pool, first.closest(&pool));
        let seen = Seen {
            engine: second.setup.engine.clone(),
            dead: whole && second.trials.is_empty(),
        };
        // A winner ranked above the choice beats it; one ranked equal (the
        // same candidate, typically) beats it only by a lower confirmed
        // latency: more headroom for the same result. Either way, why.
        let confirmed_ms = |search: &Search<'_>, index: usize| {
            (search.confirmation(index))
                .and_then(|t| Some(t.measured.as_ref()?.percentile_ms(percentile)))
                .unwrap_or(f64::INFINITY)
        };
        let beats = |index: usize| -> Result<String, String> {
            let id = manifest.subnets[index].id;
            match &looked.ended {
                Ended::Winner { index: chosen, .. }
                    if score(index).rank(&score(*chosen)) != Ordering::Greater =>
                {
                    let (new, old) = (confirmed_ms(&second, index), confirmed_ms(first, *chosen));
                    let versus = format!("at {new:.2} ms against {old:.2} ms with {}", first.setup);
                    if new < old {
                        Ok(format!("{id} fits with {}, {versus}", second.setup))
                    } else {
                        Err(format!("{id} fits too, {versus}"))
                    }
                }
                Ended::Winner { index: chosen, .. } => Ok(format!(
                    "{id} fits with {}, ranked above {}'s choice, {}",
                    second.setup, first.setup, manifest.subnets[*chosen].id
                )),
                Ended::NothingFits(_) => Ok(format!(
                    "{id} fits with {}, where nothing fit with {}",
                    second.setup, first.setup
                )),
                Ended::Stopped(e) => Ok(format!(
                    "{id} fits with {}, where the search with {} ended: {e}",
                    second.setup, first.setup
                )),
            }
        };
        let won = match outcome {
            Ok(ended @ Ended::Winner { index, .. }) => beats(index).map(|note| (ended, note)),
            Ok(Ended::NothingFits(why)) => Err(why),
            Ok(Ended::Stopped(e)) | Err(e) => Err(format!("{:#}", anyhow::Error::from(e))),
        };
        let why = match won {
            Ok((ended, note)) => {
                let mut first = looked.search;
                second.trials.splice(0..0, first.trials);
                second.engine_trials.splice(0..0, first.engine_trials);
                second.confirmations += first.confirmations;
                first.notes.push(note);
                second.notes.splice(0..0, first.notes);
                let looked = Looked {
                    search: second,
                    ended,
                };
                return Ok((looked, seen));
            }
            Err(why) => why,
        };
        let note = format!(
            "{} among {} found nothing better: {why}",
            second.setup, curve.name
        );
        let first = &mut looked.search;
        first.trials.append(&mut second.trials);
        first.engine_trials.append(&mut second.engine_trials);
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
        Ok((looked, seen))
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
