//! The [`Selector`] state machine: the search and confirmation the
//! module's documentation describes, over a fixed-capacity list of
//! candidates (no allocation).

use core::cmp::Ordering;

use heapless::Vec;

use super::model::{LatencyModel, Point};
use super::{
    Bounds, Candidate, Objective, Observation, PolicyError, Reading, Score, Shortfall, Step,
    DEFAULT_BUDGET, MAX_CONFIRMATIONS,
};

/// Nothing fits once this many of the cheapest candidates that run within
/// memory have missed the latency limit: one more than a monotone curve
/// needs, in case the cheapest is an anomaly.
const FLOOR_CHECKS: usize = 2;

/// A rival missed the limit by at most its spread, or by this much if more:
/// a percentile's repeatability between two measurements.
const RIVAL_REACH: f32 = 0.05;

/// Search measurements each round of confirmation that missed adds to the
/// budget: the step down measures near the limit again rather than settle
/// for a fit far below it.
const ROUND_BUDGET: usize = 1;

/// Where a candidate stands in the search.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    BelowQuality,
    OverMemory,
    Unmeasured,
    Ran(Reading),
    /// Measured again when it won: replaces the search's measurement.
    Confirmed(Reading),
    Failed,
}

impl State {
    /// The latest measurement, if the candidate ran.
    fn measurement(&self) -> Option<Reading> {
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
    /// Its rank under the search's objective.
    score: Score,
    state: State,
}

/// Searches up to `N` candidates for the best one that fits the limits.
#[derive(Debug, Clone)]
pub struct Selector<const N: usize> {
    entries: Vec<Entry, N>,
    limits: Bounds,
    budget: usize,
    /// Observations recorded, failures included.
    spent: usize,
    /// Rounds of confirmation in which neither candidate fit.
    missed: usize,
    round: Option<Round>,
    model: Option<LatencyModel>,
    /// The first candidate to measure, if not the cheapest.
    start: Option<usize>,
}

impl<const N: usize> Selector<N> {
    /// Starts a search over `candidates` (indices are positions in it),
    /// ranked by their own [`Objective`].
    pub fn new(candidates: &[Candidate], limits: Bounds) -> Result<Self, PolicyError> {
        Self::ranked_by(candidates, limits, Objective::of(candidates))
    }

    /// Starts a search over `candidates` ranked by `objective`: a search
    /// over part of a bundle ranks as the whole bundle does.
    pub fn ranked_by(
        candidates: &[Candidate],
        limits: Bounds,
        objective: Objective,
    ) -> Result<Self, PolicyError> {
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
                Entry {
                    candidate,
                    score: objective.score(&candidate),
                    state,
                }
            })
            .collect();
        Ok(Selector {
            entries,
            limits,
            budget: DEFAULT_BUDGET,
            spent: 0,
            missed: 0,
            round: None,
            model: None,
            start: None,
        })
    }

    /// Measures candidate `index` first rather than the cheapest: where an
    /// earlier search on another curve came closest to the limit, on a pool
    /// whose cheapest by MACs need not be the fastest. Ignored if `index`
    /// is out of range or excluded before measuring.
    pub fn starting_at(mut self, index: usize) -> Self {
        self.start = Some(index);
        self
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
            // Past the cap the device does not repeat near the limit: no
            // reaching above, the fit that held is confirmed alone.
            Some((index, _)) if self.missed >= MAX_CONFIRMATIONS => {
                Step::Confirm { index, rival: None }
            }
            Some((index, state)) => match state.measurement().and_then(|m| self.step_up(index, &m))
            {
                Some(next) => Step::Measure(next),
                None => Step::Confirm {
                    index,
                    rival: self.rival(index),
                },
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
            let fits = |i: usize| {
                let m = self.entries[i].state.measurement();
                m.is_some_and(|m| self.limits.admit(&m))
            };
            if !fits(round.index) && !round.rival.is_some_and(fits) {
                self.missed += 1;
            }
            None
        } else {
            Some(round)
        };
        self.refit();
        Ok(())
    }

    /// Rounds of confirmation whose candidates all missed the limits: how
    /// far the search stepped down from the winners it first found.
    pub fn missed_confirmations(&self) -> usize {
        self.missed
    }

    /// The model's latency for candidate `index`, once any candidate ran
    /// (a rough ray until two of different shapes have).
    pub fn predicted_latency_ms(&self, index: usize) -> Option<f32> {
        let entry = self.entries.get(index)?;
        Some(self.model?.predict(&entry.candidate.shape()) as f32)
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
                    .rank(&b.score)
                    .then(bm.latency_ms.total_cmp(&am.latency_ms))
            })
            .map(|(i, e, _)| (i, e.state))
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
                    if e.score.outranks(&score)
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
    fn step_up(&self, best: usize, best_measured: &Reading) -> Option<usize> {
        // Each round of confirmation so far missed: it buys a measurement.
        if self.spent >= self.budget + ROUND_BUDGET * self.missed {
            return None;
        }
        let model = self.model?;
        let limit = self.latency_limit();
        let reach = limit * (1.0 + model.margin());
        let best_score = self.entries[best].score;
        let best_latency = f64::from(best_measured.latency_ms);
        let open = self.predicted(model).filter(|&(_, e, predicted)| {
            let above = match e.score.rank(&best_score) {
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
            // A verdict on one short measurement is as open to a burst of
            // other load as a win: the cheapest is measured again first.
            if let Some((i, ..)) = smallest.filter(|&(i, ..)| self.is_unconfirmed(i)) {
                return Step::Confirm {
                    index: i,
                    rival: None,
                };
            }
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
        let start = self.start.filter(|&i| {
            self.spent == 0
                && self
                    .entries
                    .get(i)
                    .is_some_and(|e| e.state == State::Unmeasured)
        });
        if let Some(start) = start {
            return Step::Measure(start);
        }
        let best_predicted = self
            .model
            .filter(|_| self.spent < self.budget && over_memory.next().is_none())
            .and_then(|model| best_predicted_to_fit(self.predicted(model), self.latency_limit()));
        Step::Measure(best_predicted.map_or(cheapest, |(i, _, _)| i))
    }

    /// Whether candidate `i` ran but was not measured again.
    fn is_unconfirmed(&self, i: usize) -> bool {
        matches!(self.entries[i].state, State::Ran(_))
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
    ran: fn(Reading) -> State,
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
        .rank(&b.1.score)
        .then(b.2.total_cmp(&a.2))
        .then(b.0.cmp(&a.0))
}
