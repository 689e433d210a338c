//! Selection policy: which sub-network to measure next and which one wins,
//! without allocating (it runs in the no_std core).
//!
//! A bundle holds up to hundreds of candidates whose costs are known from
//! the manifest; on the device each measurement of a candidate's latency
//! and memory costs seconds. The [`Selector`] is a state machine the driver
//! steps: [`Selector::next`] says which candidate to measure, the driver
//! [`Selector::record`]s what it observed (and
//! [`Selector::record_confirmation`] when asked to [`Step::Confirm`]), until
//! the selector answers [`Step::Chosen`] or [`Step::NothingFits`].
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
//! 3. **Latency model.** `latency ≈ a + b · macs + c · depth + d · depth ·
//!    width` (a fixed cost, the arithmetic, a per-block cost, the per-block
//!    element-wise work; see `model` for the measurements behind it),
//!    refitted after each measurement by least squares in relative error
//!    with every coefficient non-negative, over every measured candidate
//!    (a confirmation's measurement in place of the search's). The fit
//!    uses only the features the points can tell apart, and a fit of more
//!    than two features needs a point more than it has features; so two
//!    points give the line `a + b · macs`. A point more than 25% *slower*
//!    than the fit through the others (judged once four points exist; up
//!    to 8 such points) is an anomaly of that candidate and is left out: a
//!    candidate can run far slower than its shape says, never far faster.
//!    The model's margin is the points' largest measured `spread` (at least
//!    2%, a percentile's repeatability) plus the largest relative residual
//!    of the points it kept. With a single point the model is a ray from
//!    the origin through it — an over-prediction on any device with fixed
//!    overhead — and its margin is unbounded.
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
//!    still predicted to fit. The search settles on its best measured fit
//!    when no candidate is open or the budget (default 8 measurements,
//!    confirmations not counted) is spent.
//! 5. **Confirmation.** A measurement that happened to come in under the
//!    limit is likelier to be the one that wins (winner's curse), so the
//!    search's winner is measured again before it is chosen:
//!    [`Step::Confirm`] names it and, as `rival`, the best-ranked candidate
//!    above it that ran within memory and missed the latency limit by no
//!    more than its own spread or 5%, whichever is larger; the driver
//!    measures both interleaved, so drift hits both alike. A confirmation
//!    *replaces* the search's measurement (it is longer, and unbiased). If
//!    the rival's confirmation fits, the rival is chosen (it ranks higher);
//!    else if the winner's does, the winner is; else both are out with
//!    their confirmed figures and the search steps down to its next best
//!    measured fit (measuring open candidates above it first, within the
//!    budget, which each round that missed raises by one measurement, so
//!    a step down is not stuck with a fit far below), which needs its own
//!    confirmation. [`Step::Chosen`] carries
//!    the confirmed measurement. After [`MAX_CONFIRMATIONS`] rounds of
//!    confirmation without a fit, nothing fits: the device does not repeat
//!    its measurements near this limit, and [`Shortfall::Unconfirmed`]
//!    names the confirmed candidate that came closest.
//! 6. **Failures.** A candidate that fails to load or run, or whose measured
//!    memory exceeds the limit, is out and the search goes on. While no
//!    measured candidate fits, the search continues past the budget, best
//!    predicted first within the budget and cheapest first beyond it (and
//!    cheapest first as soon as one of the cheapest ran over memory, since
//!    memory grows with size), until one fits, or the two cheapest
//!    candidates that run within memory have missed the latency limit
//!    ([`Shortfall::Missed`]), or the two cheapest that ran both exceeded
//!    the memory limit ([`Shortfall::OverMemory`]).
//!
//! The winner is always a candidate that was measured, confirmed and fit,
//! never one that was only predicted to or measured once.

mod model;

use core::cmp::Ordering;
use core::fmt;

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::manifest::{Subnet, MAX_SUBNETS};
use model::{LatencyModel, Point, Shape};

/// Measurements a search may spend before settling for the best that fit.
pub const DEFAULT_BUDGET: usize = 8;

/// Nothing fits once this many of the cheapest candidates that run within
/// memory have missed the latency limit: one more than a monotone curve
/// needs, in case the cheapest is an anomaly.
const FLOOR_CHECKS: usize = 2;

/// Rounds of confirmation a search may spend before it gives up on a device
/// whose measurements do not repeat near the limit.
pub const MAX_CONFIRMATIONS: usize = 4;

/// A rival missed the limit by at most its spread, or by this much if more:
/// a percentile's repeatability between two measurements.
const RIVAL_REACH: f32 = 0.05;

/// Search measurements each round of confirmation that missed adds to the
/// budget: the step down measures near the limit again rather than settle
/// for a fit far below it.
const ROUND_BUDGET: usize = 1;

/// Predicted footprints are the tensors' bytes times this ratio.
const FOOTPRINT_SAFETY: (u64, u64) = (5, 4);

/// A selector sized for any bundle a manifest can describe.
pub type BundleSelector = Selector<MAX_SUBNETS>;

/// What the manifest says a sub-network costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Blocks: each costs time beyond its MACs (dispatch, element-wise work).
    pub depth: u32,
    /// Embedding width: element-wise work per block scales with it.
    pub width: u32,
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

    fn shape(&self) -> Shape {
        Shape {
            macs: self.macs,
            depth: self.depth,
            width: self.width,
        }
    }
}

impl From<&Subnet<'_>> for Candidate {
    fn from(s: &Subnet<'_>) -> Self {
        Candidate {
            macs: s.macs,
            depth: s.depth,
            width: s.width,
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
    /// How far above `latency_ms` the true latency may be, relative (e.g.
    /// an order-statistic upper bound of the percentile, minus it, over
    /// it); 0 for exact.
    #[serde(default)]
    pub spread: f32,
}

impl Measurement {
    fn is_valid(&self) -> bool {
        self.latency_ms.is_finite()
            && self.latency_ms > 0.0
            && self.spread.is_finite()
            && self.spread >= 0.0
    }
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
    /// Measure `index`, the search's winner, again with more runs, and
    /// `rival` (a close miss ranked above it) interleaved with it;
    /// [`Selector::record_confirmation`] each.
    Confirm { index: usize, rival: Option<usize> },
    /// The best candidate that was measured, confirmed and fit, with its
    /// confirmed measurement.
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
    /// The two cheapest candidates that ran (by MACs) each exceeded the
    /// memory limit: `(index, measured peak bytes)`, cheapest first.
    OverMemory {
        first: (usize, u64),
        second: (usize, u64),
    },
    /// [`MAX_CONFIRMATIONS`] winners missed the limits when measured again;
    /// `closest` is the confirmed candidate with the lowest latency.
    Unconfirmed {
        closest: usize,
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
    /// A latency that is not a positive, finite number, or a spread that is
    /// negative or not finite.
    InvalidMeasurement { index: usize },
    /// An observation the selector did not ask for: a confirmation of a
    /// candidate the current [`Step::Confirm`] does not name (or already
    /// got), a search measurement while a confirmation is open or of a
    /// confirmed candidate.
    NotRequested { index: usize },
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
            PolicyError::InvalidMeasurement { index } => write!(
                f,
                "candidate {index}: latency must be positive and finite, spread non-negative and finite"
            ),
            PolicyError::NotRequested { index } => write!(
                f,
                "candidate {index}: observation not requested (follow the selector's last step)"
            ),
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
    /// Measured again when it won: replaces the search's measurement.
    Confirmed(Measurement),
    Failed,
}

impl State {
    /// The latest measurement, if the candidate ran.
    fn measurement(&self) -> Option<Measurement> {
        match *self {
            State::Ran(m) | State::Confirmed(m) => Some(m),
            _ => None,
        }
    }
}

/// A round of confirmation the driver has started recording.
#[derive(Debug, Clone, Copy)]
struct Round {
    index: usize,
    rival: Option<usize>,
    /// Whether `index` and `rival` still await their confirmation.
    awaiting: (bool, bool),
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
    /// Rounds of confirmation completed.
    confirmations: usize,
    round: Option<Round>,
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
            confirmations: 0,
            round: None,
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
        if let Some(round) = self.round {
            return Step::Confirm {
                index: round.index,
                rival: round.rival,
            };
        }
        if let Some(shortfall) = self.ineligible_shortfall() {
            return Step::NothingFits(shortfall);
        }
        match self.best_fit() {
            Some((index, State::Confirmed(measurement))) => Step::Chosen { index, measurement },
            Some((index, state)) => match state.measurement().and_then(|m| self.step_up(index, &m))
            {
                Some(next) => Step::Measure(next),
                None => self.confirm(index),
            },
            None => self.step_down(),
        }
    }

    /// Records what measuring candidate `index` gave, as [`Step::Measure`]
    /// asked.
    pub fn record(&mut self, index: usize, obs: Observation) -> Result<(), PolicyError> {
        let entry = self.eligible(index)?;
        if self.round.is_some() || matches!(entry.state, State::Confirmed(_)) {
            return Err(PolicyError::NotRequested { index });
        }
        let state = observed(index, obs, State::Ran)?;
        self.entries[index].state = state;
        self.spent += 1;
        self.refit();
        Ok(())
    }

    /// Records what measuring candidate `index` again gave, as
    /// [`Step::Confirm`] asked (for its `index` and its `rival`, in any
    /// order); it replaces the search's measurement.
    pub fn record_confirmation(
        &mut self,
        index: usize,
        obs: Observation,
    ) -> Result<(), PolicyError> {
        self.eligible(index)?;
        let mut round = match (self.round, self.next()) {
            (Some(round), _) => round,
            (None, Step::Confirm { index, rival }) => Round {
                index,
                rival,
                awaiting: (true, rival.is_some()),
            },
            (None, _) => return Err(PolicyError::NotRequested { index }),
        };
        if index == round.index && round.awaiting.0 {
            round.awaiting.0 = false;
        } else if Some(index) == round.rival && round.awaiting.1 {
            round.awaiting.1 = false;
        } else {
            return Err(PolicyError::NotRequested { index });
        }
        let state = observed(index, obs, State::Confirmed)?;
        self.entries[index].state = state;
        self.round = if round.awaiting == (false, false) {
            self.confirmations += 1;
            None
        } else {
            Some(round)
        };
        self.refit();
        Ok(())
    }

    /// The model's latency for candidate `index`, once any candidate ran
    /// (a rough ray until two of different shapes have).
    pub fn predicted_latency_ms(&self, index: usize) -> Option<f32> {
        let entry = self.entries.get(index)?;
        Some(self.model?.predict(&entry.candidate.shape()) as f32)
    }

    /// The candidates whose objective ranks strictly above `index`'s: all
    /// another engine could choose that would beat this choice.
    pub fn ranked_above(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        let score = self.entries.get(index).map_or(f64::INFINITY, |e| e.score);
        self.indexed()
            .filter(move |(_, e)| e.score > score)
            .map(|(i, _)| i)
    }

    /// Every observation recorded so far, by candidate index (a
    /// confirmation in place of the search's measurement).
    pub fn measured(&self) -> impl Iterator<Item = (usize, Observation)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.state {
                State::Failed => Some((i, Observation::Failed)),
                state => state.measurement().map(|m| (i, Observation::Measured(m))),
            })
    }

    /// Candidate `index`, if it exists and may be measured.
    fn eligible(&self, index: usize) -> Result<&Entry, PolicyError> {
        let count = self.entries.len();
        let entry = self
            .entries
            .get(index)
            .ok_or(PolicyError::UnknownCandidate { index, count })?;
        if matches!(entry.state, State::BelowQuality | State::OverMemory) {
            return Err(PolicyError::Ineligible { index });
        }
        Ok(entry)
    }

    fn refit(&mut self) {
        self.model = LatencyModel::fit(|| self.points());
    }

    fn points(&self) -> impl Iterator<Item = Point> + '_ {
        self.indexed().filter_map(|(id, e)| {
            e.state.measurement().map(|m| Point {
                id,
                shape: e.candidate.shape(),
                latency_ms: m.latency_ms,
                spread: m.spread,
            })
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

    /// The best-ranked measured candidate that fits, with its state.
    fn best_fit(&self) -> Option<(usize, State)> {
        let fitting = self.indexed().filter_map(|(i, e)| {
            let m = e.state.measurement()?;
            self.limits.admit(&m).then_some((i, e, m))
        });
        fitting
            .max_by(|(_, a, am), (_, b, bm)| {
                a.score
                    .total_cmp(&b.score)
                    .then(bm.latency_ms.total_cmp(&am.latency_ms))
            })
            .map(|(i, e, _)| (i, e.state))
    }

    /// Confirmation of the search's winner `index`, or why the search gives
    /// up after [`MAX_CONFIRMATIONS`] rounds.
    fn confirm(&self, index: usize) -> Step {
        let closest = self
            .indexed()
            .filter_map(|(i, e)| match e.state {
                State::Confirmed(m) => Some((i, m)),
                _ => None,
            })
            .min_by(|(_, a), (_, b)| a.latency_ms.total_cmp(&b.latency_ms));
        match closest {
            Some((closest, measurement)) if self.confirmations >= MAX_CONFIRMATIONS => {
                Step::NothingFits(Shortfall::Unconfirmed {
                    closest,
                    measurement,
                })
            }
            _ => Step::Confirm {
                index,
                rival: self.rival(index),
            },
        }
    }

    /// The best-ranked candidate above `winner` whose search measurement ran
    /// within memory and missed the latency limit by no more than its
    /// spread (or [`RIVAL_REACH`]).
    fn rival(&self, winner: usize) -> Option<usize> {
        let score = self.entries[winner].score;
        let limit = self.limits.latency_ms;
        self.indexed()
            .filter_map(|(i, e)| match e.state {
                State::Ran(m)
                    if e.score > score
                        && m.memory_bytes <= self.limits.memory_bytes
                        && m.latency_ms > limit
                        && m.latency_ms <= limit * (1.0 + m.spread.max(RIVAL_REACH)) =>
                {
                    Some((i, e, f64::from(m.latency_ms)))
                }
                _ => None,
            })
            .max_by(rank)
            .map(|(i, _, _)| i)
    }

    /// The next candidate worth measuring above the best fit so far, if any
    /// and if the budget allows.
    fn step_up(&self, best: usize, best_measured: &Measurement) -> Option<usize> {
        // Each round of confirmation so far missed: it buys a measurement.
        if self.spent >= self.budget + ROUND_BUDGET * self.confirmations {
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
        // Candidates at the floor (nothing cheaper is unmeasured) that ran.
        let at_floor = self.indexed().filter_map(move |(i, e)| {
            let m = e.state.measurement()?;
            (e.candidate.macs <= floor).then_some((i, e.candidate.macs, m))
        });
        let too_slow = at_floor
            .clone()
            .filter(|(_, _, m)| m.memory_bytes <= memory);
        let mut over_memory = at_floor.filter(|(_, _, m)| m.memory_bytes > memory);
        let Some((cheapest, _)) = cheapest.filter(|_| too_slow.clone().count() < FLOOR_CHECKS)
        else {
            let ran = self
                .indexed()
                .filter_map(|(i, e)| Some((i, e.candidate.macs, e.state.measurement()?)));
            let smallest = too_slow.min_by_key(|&(_, macs, _)| macs);
            return Step::NothingFits(match smallest.or_else(|| ran.min_by_key(|&(_, m, _)| m)) {
                Some((smallest, _, measurement)) => Shortfall::Missed {
                    smallest,
                    measurement,
                },
                None => Shortfall::Failed,
            });
        };
        let first = over_memory.clone().min_by_key(|&(i, macs, _)| (macs, i));
        let second = first.and_then(|(first, ..)| {
            over_memory
                .clone()
                .filter(|&(i, ..)| i != first)
                .min_by_key(|&(i, macs, _)| (macs, i))
        });
        if let (Some((i, _, a)), Some((j, _, b))) = (first, second) {
            return Step::NothingFits(Shortfall::OverMemory {
                first: (i, a.memory_bytes),
                second: (j, b.memory_bytes),
            });
        }
        let best_predicted = self
            .model
            .filter(|_| self.spent < self.budget && over_memory.next().is_none())
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
            .map(move |(i, e)| (i, e, model.predict(&e.candidate.shape())))
    }

    fn indexed(&self) -> impl Iterator<Item = (usize, &Entry)> + Clone + '_ {
        self.entries.iter().enumerate()
    }

    fn unmeasured(&self) -> impl Iterator<Item = (usize, &Entry)> + Clone + '_ {
        self.indexed().filter(|(_, e)| e.state == State::Unmeasured)
    }
}

/// The state a valid observation of candidate `index` leaves it in.
fn observed(
    index: usize,
    obs: Observation,
    ran: fn(Measurement) -> State,
) -> Result<State, PolicyError> {
    match obs {
        Observation::Measured(m) if m.is_valid() => Ok(ran(m)),
        Observation::Measured(_) => Err(PolicyError::InvalidMeasurement { index }),
        Observation::Failed => Ok(State::Failed),
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
