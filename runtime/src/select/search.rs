//! One setup's search: the driver that steps the
//! [`policy`](crate::policy)'s selector with real measurements (trials),
//! confirms its winner and says, in words, why nothing fits.

use serde::Serialize;

use super::{Runtime, SelectError, Setup, MB};
use crate::engine::{EngineInfo, EngineKind};
use crate::manifest::{Manifest, Subnet};
use crate::policy::{self, BundleSelector, Candidate, Objective, Observation, Shortfall, Step};
use crate::profile::{Measurement, Percentile};
use crate::trial::Failure;

/// Which part of the search a trial belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// A first measurement, to find the boundary.
    Search,
    /// A longer, fresh measurement of a would-be winner (and its rival).
    Confirm,
}

/// What was measured of one candidate during selection.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub id: String,
    /// The engine that measured it.
    pub engine: EngineKind,
    /// The engine's intra-op threads.
    pub threads: usize,
    pub stage: Stage,
    pub predicted_ms: Option<f64>,
    /// `None` when the candidate failed to load or run.
    pub measured: Option<Measurement>,
    /// Fresh jobs behind `measured`: two for a noisy search measurement
    /// repeated (their runs pooled), [`CONFIRM_MEASUREMENTS`] or more for a
    /// confirmation (`measured` is the median job's); 0 when it failed.
    pub jobs: u32,
    /// Why it failed, or why it was rejected.
    pub note: Option<String>,
    pub fits: bool,
}

/// One engine's measurement of the first candidate, when `auto` compared
/// engines.
#[derive(Debug, Clone, Serialize)]
pub struct EngineTrial {
    /// As keyed in the cache, e.g. `ort 1.31.1 cpu`.
    pub engine: String,
    pub id: String,
    pub measured: Option<Measurement>,
    /// Why it failed, if it did.
    pub note: Option<String>,
}

/// A confirmation measures a candidate this many times, each a fresh job
/// as long as a search measurement (an odd count, for a median): a job can
/// run slower or faster than the next as a whole (seen here: one of three
/// otherwise equal jobs 18% slower throughout), and the server is one more
/// such job.
pub const CONFIRM_MEASUREMENTS: u32 = 3;

/// The winner's confirmation, and its rival's when one was close.
#[derive(Debug, Clone, Serialize)]
pub struct Confirmed {
    pub id: String,
    /// Fresh jobs that measured it; `runs` and the figures are the median
    /// job's.
    pub jobs: u32,
    pub runs: u32,
    /// The limit's percentile, from the confirmation alone.
    pub latency_ms: f64,
    /// Its upper confidence bound ([`UPPER_CONFIDENCE`](crate::profile::UPPER_CONFIDENCE)).
    pub upper_ms: f64,
    pub cv: f64,
    /// Measurements made for confirmations, the winner's and others'.
    pub confirmations: u32,
    /// The close rival measured in turns with the winner, if any.
    pub rival: Option<RivalMeasured>,
}

/// A rival's confirmation, measured in turns with the winner's.
#[derive(Debug, Clone, Serialize)]
pub struct RivalMeasured {
    pub id: String,
    pub latency_ms: f64,
    pub fits: bool,
}

/// A decision made afresh: the winner, with the trials behind it.
pub(super) struct Decided {
    pub(super) index: usize,
    pub(super) setup: Setup,
    pub(super) engine_trials: Vec<EngineTrial>,
    pub(super) measured: Measurement,
    pub(super) trials: Vec<Trial>,
    pub(super) confirmed: Confirmed,
    pub(super) noisy: bool,
    /// What the user should know about how it was found.
    pub(super) notes: Vec<String>,
}

/// How one setup's search ended.
pub(super) enum Ended {
    /// `index` (in the manifest) won.
    Winner { index: usize },
    /// Nothing fits, and why.
    NothingFits(String),
    /// The search stopped: the same failure twice in a row, one that would
    /// hit every candidate, or two candidates over memory.
    Stopped(SelectError),
}

/// Why `min_quality` excludes everything: the best score and its metric, or
/// that the bundle was never calibrated.
fn quality_shortfall(manifest: &Manifest<'_>, min_quality: Option<f32>) -> String {
    let min = min_quality.map_or(String::new(), |q| format!(" {q}"));
    let best = manifest
        .subnets
        .iter()
        .filter_map(|s| s.quality.map(|q| (q, s.id)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match (&manifest.calibration, best) {
        (Some(c), Some((q, id))) => format!(
            "no sub-network reaches the minimum quality{min} ({}; the best is {id} at {q})",
            c.quality_metric.name()
        ),
        _ => format!(
            "no sub-network reaches the minimum quality{min}: the bundle is not calibrated (exporter calibrate BUNDLE --data DATA)"
        ),
    }
}

impl Runtime {
    /// Why nothing fits, in words; the shortfall's indices are into `pool`.
    fn explain(
        &self,
        shortfall: Shortfall,
        pool: &[usize],
        limits: &policy::Bounds,
        percentile: Percentile,
    ) -> String {
        let manifest = self.bundle.manifest();
        let mb = |b: u64| b as f64 / MB;
        let id = |i: usize| manifest.subnets[pool[i]].id;
        let against = |m: &policy::Reading| {
            format!(
                "{:.2} ms (p{}) and {:.0} MB against limits of {:.2} ms and {:.0} MB",
                m.latency_ms,
                percentile.value(),
                mb(m.memory_bytes),
                limits.latency_ms,
                mb(limits.memory_bytes)
            )
        };
        match shortfall {
            Shortfall::Quality => quality_shortfall(&manifest, limits.min_quality),
            Shortfall::Memory { smallest, predicted_bytes } => format!(
                "the smallest, {}, is predicted to need {:.0} MB, over the {:.0} MB limit",
                id(smallest),
                mb(predicted_bytes),
                mb(limits.memory_bytes)
            ),
            Shortfall::OverMemory { first, second } => format!(
                "the two cheapest candidates measured over the {:.0} MB memory limit: {} peaked at {:.0} MB, {} at {:.0} MB",
                mb(limits.memory_bytes),
                id(first.0),
                mb(first.1),
                id(second.0),
                mb(second.1)
            ),
            Shortfall::Missed { smallest, measurement } => format!(
                "the smallest, {}, measured {}",
                id(smallest),
                against(&measurement)
            ),
            Shortfall::Failed => "every candidate failed to load or run".into(),
        }
    }
}

/// The state of one search: its trials and the failure streak.
pub(super) struct Search<'r> {
    pub(super) runtime: &'r Runtime,
    pub(super) limits: &'r policy::Bounds,
    pub(super) percentile: Percentile,
    /// What ranks candidates: the whole bundle's, whatever the pool.
    pub(super) objective: Objective,
    /// How the candidates run: the engine and its threads.
    pub(super) setup: Setup,
    /// Engines still to compare with it on the first candidate.
    pub(super) contenders: Vec<EngineInfo>,
    pub(super) engine_trials: Vec<EngineTrial>,
    pub(super) trials: Vec<Trial>,
    /// The previous trial's failure kind and candidate, if it failed.
    pub(super) last_failure: Option<(String, String)>,
    pub(super) confirmations: u32,
    /// What the user should know about how the search went.
    pub(super) notes: Vec<String>,
}

impl<'r> Search<'r> {
    /// A search measuring with `engines[0]` on `threads`, racing the
    /// other engines on the first candidate.
    pub(super) fn new(
        runtime: &'r Runtime,
        limits: &'r policy::Bounds,
        percentile: Percentile,
        objective: Objective,
        engines: &[EngineInfo],
        threads: usize,
    ) -> Self {
        Search {
            runtime,
            limits,
            percentile,
            objective,
            setup: Setup {
                engine: engines[0].clone(),
                threads,
            },
            contenders: engines[1..].to_vec(),
            engine_trials: Vec::new(),
            trials: Vec::new(),
            last_failure: None,
            confirmations: 0,
            notes: Vec::new(),
        }
    }

    /// Steps a selector over the `pool`'s candidates (manifest indices),
    /// measuring `start` first if given (else the cheapest), until it
    /// chooses one or nothing fits.
    pub(super) fn run(
        &mut self,
        pool: &[usize],
        start: Option<usize>,
    ) -> Result<Ended, SelectError> {
        let runtime = self.runtime;
        let manifest = runtime.bundle.manifest();
        let candidates: Vec<Candidate> = pool
            .iter()
            .map(|&i| Candidate::from(&manifest.subnets[i]))
            .collect();
        let mut selector = BundleSelector::ranked_by(&candidates, *self.limits, self.objective)?;
        if let Some(start) = start.and_then(|s| pool.iter().position(|&i| i == s)) {
            selector = selector.starting_at(start);
        }
        loop {
            match selector.next() {
                Step::Measure(i) => {
                    let predicted_ms = selector.predicted_latency_ms(i).map(f64::from);
                    let obs = match self.measure(pool[i], predicted_ms) {
                        Ok(obs) => obs,
                        Err(e) => return stopped(e),
                    };
                    selector.record(i, obs)?;
                }
                Step::Confirm { index, rival } => {
                    let confirmed = match self.confirm(pool[index], rival.map(|r| pool[r])) {
                        Ok(confirmed) => confirmed,
                        Err(e) => return stopped(e),
                    };
                    for (i, obs) in std::iter::once(index).chain(rival).zip(confirmed) {
                        selector.record_confirmation(i, obs)?;
                    }
                }
                Step::Chosen { index, .. } => {
                    let missed = selector.missed_confirmations();
                    if missed >= policy::MAX_CONFIRMATIONS {
                        self.notes.push(format!(
                            "stepped down after {missed} confirmations of larger winners missed the limits: \
                             the device did not repeat its measurements near the limit (busy?)"
                        ));
                    }
                    return Ok(Ended::Winner { index: pool[index] });
                }
                Step::NothingFits(shortfall) => {
                    let mut why = runtime.explain(shortfall, pool, self.limits, self.percentile);
                    if let Some(note) = self.trials.iter().rev().find_map(|t| t.note.as_ref()) {
                        why.push_str(&format!("; the last failure: {note}"));
                    }
                    return Ok(Ended::NothingFits(why));
                }
            }
        }
    }

    /// A first measurement of candidate `i`.
    fn measure(&mut self, i: usize, predicted_ms: Option<f64>) -> Result<Observation, SelectError> {
        let runtime = self.runtime;
        let manifest = runtime.bundle.manifest();
        let subnet = &manifest.subnets[i];
        let measured = self.verified(subnet).and_then(|()| {
            let measured = runtime.measure(
                &[subnet],
                self.limits.batch,
                &runtime.options.measure,
                &self.setup,
                Some(self.limits.latency_ms),
            );
            let measured = self.race(subnet, measured);
            measured
                .map(|mut m| m.remove(0))
                .map(|m| self.unless_noisy(subnet, m))
                .map_err(|f| self.failed(subnet.id, f))
        });
        match measured {
            Ok((m, jobs)) => {
                self.last_failure = None;
                let point = self.point(&m);
                let fits = self.limits.admit(&point);
                self.trials.push(Trial {
                    id: subnet.id.to_owned(),
                    engine: self.setup.engine.kind,
                    threads: self.setup.threads,
                    stage: Stage::Search,
                    predicted_ms,
                    measured: Some(m),
                    jobs,
                    note: None,
                    fits,
                });
                Ok(Observation::Measured(point))
            }
            Err(FailedTrial::EndsSearch(e)) => Err(e),
            Err(FailedTrial::RulesOut(note)) => {
                self.trials.push(Trial {
                    id: subnet.id.to_owned(),
                    engine: self.setup.engine.kind,
                    threads: self.setup.threads,
                    stage: Stage::Search,
                    predicted_ms,
                    measured: None,
                    jobs: 0,
                    note: Some(note),
                    fits: false,
                });
                Ok(Observation::Failed)
            }
        }
    }

    /// A noisy search measurement (cv over 10%: other load came and went)
    /// is not trusted alone: `subnet` is measured again and the runs of both
    /// are pooled, so a burst weighs as often as it came. A repeat that
    /// fails leaves the first measurement. With the count of jobs behind it.
    fn unless_noisy(&self, subnet: &Subnet<'_>, first: Measurement) -> (Measurement, u32) {
        if !first.noisy {
            return (first, 1);
        }
        let runtime = self.runtime;
        let options = &runtime.options.measure;
        let limit = Some(self.limits.latency_ms);
        match runtime.measure(&[subnet], self.limits.batch, options, &self.setup, limit) {
            Ok(again) => (first.pooled(&again[0]), 2),
            Err(_) => (first, 1),
        }
    }

    /// Fresh measurements of a would-be winner and its rival: each
    /// measured alone in [`CONFIRM_MEASUREMENTS`] fresh jobs, taking turns
    /// (so drift hits both alike), and judged by the job whose figure is
    /// the median; while that one is noisy, twice as many more jobs join.
    /// The observations come in that order.
    fn confirm(
        &mut self,
        index: usize,
        rival: Option<usize>,
    ) -> Result<Vec<Observation>, SelectError> {
        let runtime = self.runtime;
        let manifest = runtime.bundle.manifest();
        let indices: Vec<usize> = std::iter::once(index).chain(rival).collect();
        let subnets: Vec<&Subnet<'_>> = indices.iter().map(|&i| &manifest.subnets[i]).collect();
        let mut jobs: Vec<Vec<Measurement>> = vec![Vec::new(); subnets.len()];
        let measured = (subnets.iter())
            .try_for_each(|s| self.verified(s))
            .and_then(|()| self.confirming(&subnets, &mut jobs));
        match measured {
            Ok(ms) => {
                self.last_failure = None;
                Ok(indices
                    .iter()
                    .zip(ms)
                    .zip(&jobs)
                    .map(|((&i, m), jobs)| {
                        let point = self.point(&m);
                        let fits = self.limits.admit(&point);
                        self.trials.push(Trial {
                            id: manifest.subnets[i].id.to_owned(),
                            engine: self.setup.engine.kind,
                            threads: self.setup.threads,
                            stage: Stage::Confirm,
                            predicted_ms: None,
                            measured: Some(m),
                            jobs: jobs.len() as u32,
                            note: None,
                            fits,
                        });
                        Observation::Measured(point)
                    })
                    .collect())
            }
            Err(FailedTrial::EndsSearch(e)) => Err(e),
            Err(FailedTrial::RulesOut(note)) => {
                self.trials.push(Trial {
                    id: manifest.subnets[index].id.to_owned(),
                    engine: self.setup.engine.kind,
                    threads: self.setup.threads,
                    stage: Stage::Confirm,
                    predicted_ms: None,
                    measured: None,
                    jobs: 0,
                    note: Some(note),
                    fits: false,
                });
                Ok(vec![Observation::Failed; indices.len()])
            }
        }
    }

    /// Measures each of `subnets` alone in turns, [`CONFIRM_MEASUREMENTS`]
    /// fresh jobs each (six more while the winner's median is noisy), into
    /// `jobs`; the median job of each.
    fn confirming(
        &mut self,
        subnets: &[&Subnet<'_>],
        jobs: &mut [Vec<Measurement>],
    ) -> Result<Vec<Measurement>, FailedTrial> {
        let runtime = self.runtime;
        let (batch, limit) = (self.limits.batch, Some(self.limits.latency_ms));
        let mut more = CONFIRM_MEASUREMENTS;
        loop {
            self.confirmations += 1;
            for _ in 0..more {
                for (subnet, jobs) in subnets.iter().zip(jobs.iter_mut()) {
                    let options = &runtime.options.measure;
                    let m = runtime
                        .measure(&[subnet], batch, options, &self.setup, limit)
                        .map_err(|f| self.failed(subnet.id, f))?;
                    jobs.extend(m);
                }
            }
            let medians: Vec<Measurement> = jobs.iter().map(|j| self.median(j).clone()).collect();
            if !medians[0].noisy || jobs[0].len() as u32 > CONFIRM_MEASUREMENTS {
                return Ok(medians);
            }
            more = 2 * CONFIRM_MEASUREMENTS;
        }
    }

    /// The job whose figure at the limit's percentile is the median of
    /// `jobs` (an odd count): a real measurement, robust to one job that
    /// landed slow or fast as a whole.
    fn median<'m>(&self, jobs: &'m [Measurement]) -> &'m Measurement {
        let mut sorted: Vec<&Measurement> = jobs.iter().collect();
        sorted.sort_by(|a, b| {
            (a.percentile_ms(self.percentile)).total_cmp(&b.percentile_ms(self.percentile))
        });
        sorted[sorted.len() / 2]
    }

    /// The search's result: the winner's confirmation, or why nothing fits.
    pub(super) fn end(self, ended: Ended) -> Result<Decided, SelectError> {
        let index = match ended {
            Ended::Winner { index, .. } => index,
            Ended::NothingFits(why) => return Err(SelectError::NothingFits(why)),
            Ended::Stopped(e) => return Err(e),
        };
        let runtime = self.runtime;
        let manifest = runtime.bundle.manifest();
        let id = manifest.subnets[index].id;
        let (winner, jobs) = (self.confirmation(index))
            .and_then(|t| Some((t.measured.clone()?, t.jobs)))
            .expect("the policy chooses only confirmed candidates");
        // The rival measured in turns with the winner's last confirmation.
        let last = self
            .trials
            .iter()
            .rposition(|t| t.id == id && t.stage == Stage::Confirm && self.ran(t));
        let rival = last
            .and_then(|at| self.trials.get(at + 1))
            .filter(|t| t.stage == Stage::Confirm && t.id != id)
            .and_then(|t| {
                let m = t.measured.as_ref()?;
                Some(RivalMeasured {
                    id: t.id.clone(),
                    latency_ms: m.percentile_ms(self.percentile),
                    fits: t.fits,
                })
            });
        let confirmed = Confirmed {
            id: id.to_owned(),
            jobs,
            runs: winner.runs,
            latency_ms: winner.percentile_ms(self.percentile),
            upper_ms: winner.upper_ms(self.percentile),
            cv: winner.cv,
            confirmations: self.confirmations,
            rival,
        };
        Ok(Decided {
            index,
            setup: self.setup,
            engine_trials: self.engine_trials,
            noisy: winner.noisy,
            measured: winner,
            trials: self.trials,
            confirmed,
            notes: self.notes,
        })
    }

    /// The policy's view of a measurement.
    fn point(&self, m: &Measurement) -> policy::Reading {
        policy::Reading {
            latency_ms: m.percentile_ms(self.percentile) as f32,
            memory_bytes: (m.peak_mb * MB) as u64,
            spread: m.spread(self.percentile) as f32,
        }
    }

    /// The last confirmation of candidate `index` with this setup that
    /// measured it: a winner's.
    pub(super) fn confirmation(&self, index: usize) -> Option<&Trial> {
        let id = self.runtime.bundle.manifest().subnets[index].id;
        self.trials.iter().rev().find(|t| {
            t.id == id && t.stage == Stage::Confirm && self.ran(t) && t.measured.is_some()
        })
    }

    /// Of `pool` (manifest indices), the candidate some trial so far, with
    /// any setup, measured fastest: where a look with another setup starts,
    /// since the cheapest by MACs of a pool of the candidates ranked above
    /// a choice is often a deep, narrow one slower than wider, shallower
    /// ones.
    pub(super) fn closest(&self, pool: &[usize]) -> Option<usize> {
        let manifest = self.runtime.bundle.manifest();
        let latency = |i: usize| {
            let id = manifest.subnets[i].id;
            (self.trials.iter())
                .filter(|t| t.id == id)
                .filter_map(|t| Some(t.measured.as_ref()?.percentile_ms(self.percentile)))
                .reduce(f64::min)
        };
        (pool.iter())
            .filter_map(|&i| Some((i, latency(i)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Whether `trial` ran with this search's setup.
    fn ran(&self, trial: &Trial) -> bool {
        trial.engine == self.setup.engine.kind && trial.threads == self.setup.threads
    }

    /// Checks the files of `subnet`; a corrupted file is that candidate's problem.
    fn verified(&self, subnet: &Subnet<'_>) -> Result<(), FailedTrial> {
        self.runtime
            .bundle
            .verify(subnet)
            .map_err(|e| FailedTrial::RulesOut(format!("failed, falling back: {e}")))
    }

    /// What a failure means for the search: a systematic failure, or the
    /// same failure as the previous candidate's, ends it; out of memory
    /// twice in a row means nothing fits.
    pub(super) fn failed(&mut self, id: &str, failure: Failure) -> FailedTrial {
        if failure.is_systematic() {
            return FailedTrial::EndsSearch(SelectError::Stopped(format!(
                "{id}: {failure} (every candidate would fail the same way)"
            )));
        }
        let kind = failure.kind().to_owned();
        if let Some((previous_kind, previous)) = self.last_failure.take() {
            if previous_kind == kind {
                let why =
                    format!("{previous} and {id} both failed the same way; the last: {failure}");
                return FailedTrial::EndsSearch(match failure {
                    Failure::ExceedsMemory(_) => SelectError::NothingFits(why),
                    _ => SelectError::Stopped(why),
                });
            }
        }
        self.last_failure = Some((kind, id.to_owned()));
        FailedTrial::RulesOut(format!("failed, falling back: {failure}"))
    }
}

/// A search the failure rules ended, as such; other errors as they are.
fn stopped(e: SelectError) -> Result<Ended, SelectError> {
    match e {
        SelectError::Stopped(_) | SelectError::NothingFits(_) => Ok(Ended::Stopped(e)),
        e => Err(e),
    }
}

/// What a failed trial means for the search.
pub(super) enum FailedTrial {
    /// The search is over.
    EndsSearch(SelectError),
    /// This candidate is out; the note says why.
    RulesOut(String),
}
