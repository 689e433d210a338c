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
//!    ranks first; otherwise more MACs rank first. At an equal value the
//!    wider number format ranks first (fp32, fp16, int8: a variant has its
//!    parent's MACs); remaining ties go to the lower latency, measured or
//!    else predicted ([`Objective`]). A search over part of a bundle (one
//!    number format's candidates) ranks with the whole bundle's objective.
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
//!    MACs), or the one the driver names ([`Selector::starting_at`]: a look
//!    with another setup starts where an earlier search came closest, as
//!    the cheapest by MACs of the candidates above a choice is often a
//!    deep, narrow one slower than a wide, shallow one); if the two
//!    cheapest miss the latency limit, nothing fits (one check more than a
//!    monotone curve needs, and confirmed: 6). Otherwise,
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
//!    measures both in turns, so drift hits both alike. A confirmation
//!    *replaces* the search's measurement (it is fresh and unbiased). If
//!    the rival's confirmation fits, the rival is chosen (it ranks higher);
//!    else if the winner's does, the winner is; else both are out with
//!    their confirmed figures and the search steps down to its next best
//!    measured fit (measuring open candidates above it first, within the
//!    budget, which each round that missed raises by one measurement, so
//!    a step down is not stuck with a fit far below), which needs its own
//!    confirmation. [`Step::Chosen`] carries the confirmed measurement.
//!    After [`MAX_CONFIRMATIONS`] rounds without a fit the device does not
//!    repeat its measurements near this limit: the search stops measuring
//!    above and steps down to the best-ranked candidate whose own
//!    measurement held (it ran and fit, and no confirmation disproved it),
//!    confirming each alone, no rival, until one fits
//!    ([`Selector::missed_confirmations`] says how many rounds missed). When
//!    none is left it measures the cheapest, as in 6: nothing fits only once
//!    the cheapest candidates were measured over the limit, never while a
//!    fit stands undisproved.
//! 6. **Failures.** A candidate that fails to load or run, or whose measured
//!    memory exceeds the limit, is out and the search goes on. While no
//!    measured candidate fits, the search continues past the budget, best
//!    predicted first within the budget and cheapest first beyond it (and
//!    cheapest first as soon as one of the cheapest ran over memory, since
//!    memory grows with size), until one fits, or the two cheapest
//!    candidates that run within memory have missed the latency limit and
//!    the cheaper of them missed again when confirmed, as a winner is
//!    ([`Shortfall::Missed`]; a confirmation that fits makes it the
//!    winner), or the two cheapest that ran both exceeded the memory limit
//!    ([`Shortfall::OverMemory`]).
//!
//! The winner is always a candidate that was measured, confirmed and fit,
//! never one that was only predicted to or measured once; and "nothing
//! fits" on latency always rests on a confirmation too, never on one short
//! measurement a burst of other load could have stretched.

mod error;
mod model;
mod objective;
mod selector;

use serde::{Deserialize, Serialize};

use crate::manifest::{PrecisionKind, Subnet, MAX_SUBNETS};
use model::Shape;

pub use error::PolicyError;
pub use objective::{Objective, Score};
pub use selector::Selector;

/// Measurements a search may spend before settling for the best that fit.
pub const DEFAULT_BUDGET: usize = 8;

/// Rounds of confirmation that missed before the search stops reaching above
/// its fits, on a device whose measurements do not repeat near the limit.
pub const MAX_CONFIRMATIONS: usize = 4;

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
    /// The number format it computes in.
    pub precision: PrecisionKind,
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
            precision: s.precision.kind(),
        }
    }
}

/// The user's limits resolved on this device to absolute numbers: what the
/// policy admits (the runtime's `select::Limits` are as the user wrote them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Latency at the user's percentile, for a whole batch.
    pub latency_ms: f32,
    /// Peak memory.
    pub memory_bytes: u64,
    /// The lowest acceptable quality, if any.
    pub min_quality: Option<f32>,
    /// Images per inference; activation memory scales with it.
    pub batch: u32,
}

impl Bounds {
    /// Whether a measurement is within the limits.
    pub fn admit(&self, m: &Reading) -> bool {
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

/// A candidate's latency and peak memory as the driver measured them: the
/// policy's reading of a trial (the runtime's `profile::Measurement` holds
/// the full statistics).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
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

impl Reading {
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
    Measured(Reading),
    /// It failed to load or run (including running out of memory).
    Failed,
}

/// What the driver should do now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Measure this candidate and [`Selector::record`] the observation.
    Measure(usize),
    /// Measure `index`, the search's winner, again with more runs, and
    /// `rival` (a close miss ranked above it) in turns with it;
    /// [`Selector::record_confirmation`] each.
    Confirm { index: usize, rival: Option<usize> },
    /// The best candidate that was measured, confirmed and fit, with its
    /// confirmed measurement.
    Chosen { index: usize, measurement: Reading },
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
    /// none did, the cheapest that ran), missed the limits (measured again,
    /// if it was confirmed).
    Missed {
        smallest: usize,
        measurement: Reading,
    },
    /// The two cheapest candidates that ran (by MACs) each exceeded the
    /// memory limit: `(index, measured peak bytes)`, cheapest first.
    OverMemory {
        first: (usize, u64),
        second: (usize, u64),
    },
    /// Every eligible candidate failed to load or run.
    Failed,
}
