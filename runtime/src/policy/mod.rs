//! Selection policy: which sub-network to measure next and which one wins,
//! without allocating (it runs in the no_std core).
//!
//! A bundle holds up to hundreds of candidates whose costs are known from
//! the manifest; on the device each measurement of a candidate's latency
//! and memory costs seconds. The [`Selector`] is a state machine the driver
//! steps: [`Selector::next`] says which candidate to measure, the driver
//! [`Selector::record`]s what it observed, until the selector answers
//! [`Step::Chosen`] or [`Step::NothingFits`].
//!
//! # Algorithm
//!
//! 1. **Eligibility, before anything runs.** A candidate below
//!    `min_quality` is excluded (one without a quality cannot prove it
//!    meets a floor). A candidate whose predicted footprint,
//!    `(weight_bytes + batch · activation_bytes) · 5/4`, exceeds the memory
//!    limit is never loaded: the 25% covers what engines hold beyond the
//!    tensors (arenas, workspaces, allocator slack).
//! 2. **Objective.** If every candidate has a `quality`, higher quality
//!    ranks first; otherwise more MACs rank first. Ties go to the lower
//!    latency, measured or else predicted.
//! 3. **Latency model.** `latency ≈ a + b · macs`, refitted by least squares
//!    over every measured candidate after each measurement (slope kept
//!    non-negative). A point more than 25% *slower* than the line through
//!    the others (judged once four points exist; up to 8 such points) is an
//!    anomaly of that candidate and is left out of the fit: a candidate can
//!    run far slower than its MACs say, never far faster. The model's
//!    margin is 2% (a percentile's repeatability) plus the largest relative
//!    residual of the points it kept. With a single point the model
//!    is a ray from the origin through it — an over-prediction on any
//!    device with fixed overhead — and its margin is unbounded.
//! 4. **Search.** The first measurement is the cheapest candidate (fewest
//!    MACs); if it and the next cheapest miss the latency limit, nothing
//!    fits (one check more than a monotone curve needs). Otherwise,
//!    given the best measured candidate that fits, the *open* candidates
//!    are the unmeasured ones ranked above it whose prediction is within
//!    the margin of the limit. The next measurement is the best-ranked open
//!    candidate predicted to fit, or else the open candidate predicted
//!    fastest (the model may be off). So the second measurement is the best
//!    candidate the ray predicts to fit, anchoring the line far from the
//!    first; the third lands at the line's boundary; the rest check the
//!    boundary's better-ranked neighbours. A candidate that misses is out,
//!    the line is refitted and the search steps down to the best candidate
//!    still predicted to fit. The search ends with [`Step::Chosen`] when no
//!    candidate is open or the budget (default 8 measurements) is spent.
//! 5. **Failures.** A candidate that fails to load or run, or whose measured
//!    memory exceeds the limit, is out and the search goes on. While no
//!    measured candidate fits, the search continues past the budget, best
//!    predicted first within the budget and cheapest first beyond it, until
//!    one fits or the two cheapest candidates that run within memory have
//!    missed the latency limit ([`Shortfall::Missed`]).
//!
//! The winner is always a candidate that was measured and fit, never one
//! that was only predicted to.

mod model;

use core::cmp::Ordering;
use core::fmt;

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::manifest::{Subnet, MAX_SUBNETS};
use model::{LatencyModel, Point};

/// Measurements a search may spend before settling for the best that fit.
pub const DEFAULT_BUDGET: usize = 8;

/// Nothing fits once this many of the cheapest candidates that run within
/// memory have missed the latency limit: one more than a monotone curve
/// needs, in case the cheapest is an anomaly.
const FLOOR_CHECKS: usize = 2;

/// Predicted footprints are the tensors' bytes times this ratio.
const FOOTPRINT_SAFETY: (u64, u64) = (5, 4);

/// A selector sized for any bundle a manifest can describe.
pub type BundleSelector = Selector<MAX_SUBNETS>;

/// What the manifest says a sub-network costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Bytes of weights the graph reads.
    pub weight_bytes: u64,
    /// Peak activation bytes at batch 1.
    pub activation_bytes: u64,
    /// Calibrated quality, higher is better.
    pub quality: Option<f32>,
}

impl Candidate {
    /// The memory this candidate is predicted to need at `batch`, with the
    /// engine's overhead.
    pub fn predicted_footprint(&self, batch: u32) -> u64 {
        let tensors = self
            .weight_bytes
            .saturating_add(self.activation_bytes.saturating_mul(u64::from(batch)));
        let (num, den) = FOOTPRINT_SAFETY;
        (tensors / den)
            .saturating_mul(num)
            .saturating_add(tensors % den * num / den)
    }
}

impl From<&Subnet<'_>> for Candidate {
    fn from(s: &Subnet<'_>) -> Self {
        Candidate {
            macs: s.macs,
            weight_bytes: s.weight_bytes,
            activation_bytes: s.activation_bytes,
            quality: s.quality,
        }
    }
}

/// What the user allows on this device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Latency at the user's percentile, for a whole batch.
    pub latency_ms: f32,
    /// Peak memory.
    pub memory_bytes: u64,
    /// The lowest acceptable quality, if any.
    pub min_quality: Option<f32>,
    /// Images per inference; activation memory scales with it.
    pub batch: u32,
}

impl Limits {
    /// Whether a measurement is within the limits.
    pub fn admit(&self, m: &Measurement) -> bool {
        m.latency_ms <= self.latency_ms && m.memory_bytes <= self.memory_bytes
    }

    fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |field| Err(PolicyError::InvalidLimit { field });
        if !(self.latency_ms.is_finite() && self.latency_ms > 0.0) {
            return invalid("latency_ms");
        }
        if self.memory_bytes == 0 {
            return invalid("memory_bytes");
        }
        if self.min_quality.is_some_and(|q| !q.is_finite()) {
            return invalid("min_quality");
        }
        if self.batch == 0 {
            return invalid("batch");
        }
        Ok(())
    }

    fn admits_quality(&self, c: &Candidate) -> bool {
        match (self.min_quality, c.quality) {
            (None, _) => true,
            (Some(min), Some(q)) => q >= min,
            (Some(_), None) => false,
        }
    }
}

/// A candidate's latency and peak memory as the driver measured them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Latency at the user's percentile, for a whole batch.
    pub latency_ms: f32,
    /// Peak memory while running.
    pub memory_bytes: u64,
}

/// What happened when the driver tried a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Observation {
    /// It ran.
    Measured(Measurement),
    /// It failed to load or run (including running out of memory).
    Failed,
}

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Measure this candidate and [`Selector::record`] the observation.
    Measure(usize),
    /// The best candidate that was measured and fit.
    Chosen {
        index: usize,
        measurement: Measurement,
    },
    /// No candidate fits.
    NothingFits(Shortfall),
}

/// Why no candidate fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shortfall {
    /// No candidate reaches `min_quality` (or the bundle has no qualities).
    Quality,
    /// Every candidate good enough is predicted to exceed the memory limit;
    /// `smallest` is predicted to need the least.
    Memory {
        smallest: usize,
        predicted_bytes: u64,
    },
    /// `smallest`, the cheapest candidate that ran within memory (or, if
    /// none did, the cheapest that ran), missed the limits.
    Missed {
        smallest: usize,
        measurement: Measurement,
    },
    /// Every eligible candidate failed to load or run.
    Failed,
}

/// A selector was given inputs it cannot work with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyError {
    /// No candidates at all.
    NoCandidates,
    /// More candidates than the selector's capacity.
    TooManyCandidates { count: usize, capacity: usize },
    /// A limit that is zero, negative or not finite.
    InvalidLimit { field: &'static str },
    /// A candidate that cannot be ranked or modelled.
    InvalidCandidate { index: usize, problem: &'static str },
    /// An observation for an index the selector does not have.
    UnknownCandidate { index: usize, count: usize },
    /// An observation for a candidate excluded before the search.
    Ineligible { index: usize },
    /// A latency that is not a positive, finite number.
    InvalidMeasurement { index: usize },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::NoCandidates => f.write_str("no candidates to select from"),
            PolicyError::TooManyCandidates { count, capacity } => {
                write!(f, "{count} candidates exceed the selector's capacity of {capacity}")
            }
            PolicyError::InvalidLimit { field } => {
                write!(f, "limit `{field}` must be positive and finite")
            }
            PolicyError::InvalidCandidate { index, problem } => {
                write!(f, "candidate {index}: {problem}")
            }
            PolicyError::UnknownCandidate { index, count } => {
                write!(f, "candidate {index} does not exist (there are {count})")
            }
            PolicyError::Ineligible { index } => write!(
                f,
                "candidate {index} is excluded (below min_quality or over memory) and is never measured"
            ),
            PolicyError::InvalidMeasurement { index } => {
                write!(f, "candidate {index}: latency must be positive and finite")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PolicyError {}

/// Where a candidate stands in the search.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    BelowQuality,
    OverMemory,
    Unmeasured,
    Ran(Measurement),
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    candidate: Candidate,
    /// The objective, higher is better: quality, or MACs.
    score: f64,
    state: State,
}

/// Searches up to `N` candidates for the best one that fits the limits.
#[derive(Debug, Clone)]
pub struct Selector<const N: usize> {
    entries: Vec<Entry, N>,
    limits: Limits,
    budget: usize,
    /// Observations recorded, failures included.
    spent: usize,
    model: Option<LatencyModel>,
}

impl<const N: usize> Selector<N> {
    /// Starts a search over `candidates` (indices are positions in it).
    pub fn new(candidates: &[Candidate], limits: Limits) -> Result<Self, PolicyError> {
        limits.validate()?;
        if candidates.is_empty() {
            return Err(PolicyError::NoCandidates);
        }
        if candidates.len() > N {
            return Err(PolicyError::TooManyCandidates {
                count: candidates.len(),
                capacity: N,
            });
        }
        for (index, c) in candidates.iter().enumerate() {
            if c.macs == 0 {
                return Err(PolicyError::InvalidCandidate {
                    index,
                    problem: "zero MACs",
                });
            }
            if c.quality.is_some_and(|q| !q.is_finite()) {
                return Err(PolicyError::InvalidCandidate {
                    index,
                    problem: "quality is not finite",
                });
            }
        }
        let by_quality = candidates.iter().all(|c| c.quality.is_some());
        let entries = candidates
            .iter()
            .map(|&candidate| {
                let state = if !limits.admits_quality(&candidate) {
                    State::BelowQuality
                } else if candidate.predicted_footprint(limits.batch) > limits.memory_bytes {
                    State::OverMemory
                } else {
                    State::Unmeasured
                };
                let score = match candidate.quality {
                    Some(q) if by_quality => f64::from(q),
                    _ => candidate.macs as f64,
                };
                Entry {
                    candidate,
                    score,
                    state,
                }
            })
            .collect();
        Ok(Selector {
            entries,
            limits,
            budget: DEFAULT_BUDGET,
            spent: 0,
            model: None,
        })
    }

    /// Sets how many measurements the search may spend before settling.
    pub fn with_budget(mut self, max_measurements: usize) -> Self {
        self.budget = max_measurements;
        self
    }

    /// What to do now; asking again without recording gives the same answer.
    pub fn next(&self) -> Step {
        if let Some(shortfall) = self.ineligible_shortfall() {
            return Step::NothingFits(shortfall);
        }
        match self.best_fit() {
            Some((index, measurement)) => match self.step_up(index, &measurement) {
                Some(next) => Step::Measure(next),
                None => Step::Chosen { index, measurement },
            },
            None => self.step_down(),
        }
    }

    /// Records what measuring candidate `index` gave.
    pub fn record(&mut self, index: usize, obs: Observation) -> Result<(), PolicyError> {
        let count = self.entries.len();
        let entry = self
            .entries
            .get_mut(index)
            .ok_or(PolicyError::UnknownCandidate { index, count })?;
        if matches!(entry.state, State::BelowQuality | State::OverMemory) {
            return Err(PolicyError::Ineligible { index });
        }
        entry.state = match obs {
            Observation::Measured(m) if m.latency_ms.is_finite() && m.latency_ms > 0.0 => {
                State::Ran(m)
            }
            Observation::Measured(_) => return Err(PolicyError::InvalidMeasurement { index }),
            Observation::Failed => State::Failed,
        };
        self.spent += 1;
        self.model = LatencyModel::fit(|| self.points());
        Ok(())
    }

    /// The model's latency for candidate `index`, once any candidate ran
    /// (a rough ray until two of different MACs have).
    pub fn predicted_latency_ms(&self, index: usize) -> Option<f32> {
        let entry = self.entries.get(index)?;
        Some(self.model?.predict(entry.candidate.macs) as f32)
    }

    /// Every observation recorded so far, by candidate index.
    pub fn measured(&self) -> impl Iterator<Item = (usize, Observation)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.state {
                State::Ran(m) => Some((i, Observation::Measured(m))),
                State::Failed => Some((i, Observation::Failed)),
                _ => None,
            })
    }

    fn points(&self) -> impl Iterator<Item = Point> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(id, e)| match e.state {
                State::Ran(m) => Some(Point {
                    id,
                    macs: e.candidate.macs,
                    latency_ms: m.latency_ms,
                }),
                _ => None,
            })
    }

    /// Why nothing fits before anything runs, if every candidate is excluded.
    fn ineligible_shortfall(&self) -> Option<Shortfall> {
        if self
            .entries
            .iter()
            .any(|e| !matches!(e.state, State::BelowQuality | State::OverMemory))
        {
            return None;
        }
        let batch = self.limits.batch;
        let smallest = self
            .indexed()
            .filter(|(_, e)| e.state == State::OverMemory)
            .min_by_key(|(_, e)| e.candidate.predicted_footprint(batch));
        Some(match smallest {
            Some((smallest, e)) => Shortfall::Memory {
                smallest,
                predicted_bytes: e.candidate.predicted_footprint(batch),
            },
            None => Shortfall::Quality,
        })
    }

    /// The best-ranked measured candidate that fits.
    fn best_fit(&self) -> Option<(usize, Measurement)> {
        let fitting = self.indexed().filter_map(|(i, e)| match e.state {
            State::Ran(m) if self.limits.admit(&m) => Some((i, e, m)),
            _ => None,
        });
        fitting
            .max_by(|(_, a, am), (_, b, bm)| {
                a.score
                    .total_cmp(&b.score)
                    .then(bm.latency_ms.total_cmp(&am.latency_ms))
            })
            .map(|(i, _, m)| (i, m))
    }

    /// The next candidate worth measuring above the best fit so far, if any
    /// and if the budget allows.
    fn step_up(&self, best: usize, best_measured: &Measurement) -> Option<usize> {
        if self.spent >= self.budget {
            return None;
        }
        let model = self.model?;
        let limit = self.latency_limit();
        let reach = limit * (1.0 + model.margin());
        let best_score = self.entries[best].score;
        let best_latency = f64::from(best_measured.latency_ms);
        let open = self.predicted(model).filter(|&(_, e, predicted)| {
            let above = match e.score.total_cmp(&best_score) {
                Ordering::Greater => true,
                Ordering::Equal => predicted < best_latency,
                Ordering::Less => false,
            };
            above && predicted <= reach
        });
        best_predicted_to_fit(open.clone(), limit)
            .or_else(|| open.min_by(|(_, _, a), (_, _, b)| a.total_cmp(b)))
            .map(|(i, _, _)| i)
    }

    /// The next candidate to measure while none fits, or why none can.
    fn step_down(&self) -> Step {
        let memory = self.limits.memory_bytes;
        let cheapest = self.unmeasured().min_by_key(|(_, e)| e.candidate.macs);
        let floor = cheapest.map_or(u64::MAX, |(_, e)| e.candidate.macs);
        // Candidates at the floor that ran within memory: all too slow.
        let too_slow = self.indexed().filter_map(|(i, e)| match e.state {
            State::Ran(m) if m.memory_bytes <= memory && e.candidate.macs <= floor => {
                Some((i, e.candidate.macs, m))
            }
            _ => None,
        });
        let Some((cheapest, _)) = cheapest.filter(|_| too_slow.clone().count() < FLOOR_CHECKS)
        else {
            let ran = self.indexed().filter_map(|(i, e)| match e.state {
                State::Ran(m) => Some((i, e.candidate.macs, m)),
                _ => None,
            });
            let smallest = too_slow.min_by_key(|&(_, macs, _)| macs);
            return Step::NothingFits(match smallest.or_else(|| ran.min_by_key(|&(_, m, _)| m)) {
                Some((smallest, _, measurement)) => Shortfall::Missed {
                    smallest,
                    measurement,
                },
                None => Shortfall::Failed,
            });
        };
        let best_predicted = self
            .model
            .filter(|_| self.spent < self.budget)
            .and_then(|model| best_predicted_to_fit(self.predicted(model), self.latency_limit()));
        Step::Measure(best_predicted.map_or(cheapest, |(i, _, _)| i))
    }

    fn latency_limit(&self) -> f64 {
        f64::from(self.limits.latency_ms)
    }

    /// Unmeasured candidates with their predicted latency.
    fn predicted(
        &self,
        model: LatencyModel,
    ) -> impl Iterator<Item = (usize, &Entry, f64)> + Clone + '_ {
        self.unmeasured()
            .map(move |(i, e)| (i, e, model.predict(e.candidate.macs)))
    }

    fn indexed(&self) -> impl Iterator<Item = (usize, &Entry)> + Clone + '_ {
        self.entries.iter().enumerate()
    }

    fn unmeasured(&self) -> impl Iterator<Item = (usize, &Entry)> + Clone + '_ {
        self.indexed().filter(|(_, e)| e.state == State::Unmeasured)
    }
}

/// The best-ranked of `candidates` predicted to fit under `limit`.
fn best_predicted_to_fit<'a>(
    candidates: impl Iterator<Item = (usize, &'a Entry, f64)>,
    limit: f64,
) -> Option<(usize, &'a Entry, f64)> {
    candidates.filter(|&(_, _, p)| p <= limit).max_by(rank)
}

/// Orders `(index, entry, predicted latency)` by the objective, then by lower
/// latency, then by lower index: `Greater` ranks better.
fn rank(a: &(usize, &Entry, f64), b: &(usize, &Entry, f64)) -> Ordering {
    a.1.score
        .total_cmp(&b.1.score)
        .then(b.2.total_cmp(&a.2))
        .then(b.0.cmp(&a.0))
}
