//! What ranks candidates: the [`Objective`] and the [`Score`] it gives.

use core::cmp::Ordering;

use super::Candidate;
use crate::manifest::PrecisionKind;

/// Quality when every candidate has one, else MACs (a bundle calibrated in
/// part cannot compare its scored and unscored candidates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    Quality,
    Macs,
}

impl Objective {
    /// The objective of a set of candidates, all of which it must rank.
    pub fn of<'a>(candidates: impl IntoIterator<Item = &'a Candidate>) -> Objective {
        if candidates.into_iter().all(|c| c.quality.is_some()) {
            Objective::Quality
        } else {
            Objective::Macs
        }
    }

    /// `candidate`'s rank under this objective.
    pub fn score(self, candidate: &Candidate) -> Score {
        let value = match (self, candidate.quality) {
            (Objective::Quality, Some(q)) => f64::from(q),
            _ => candidate.macs as f64,
        };
        Score {
            value,
            precision: candidate.precision,
        }
    }
}

/// A candidate's rank, higher is better: the objective's value, and at an
/// equal value the wider number format (an int8 variant shares its fp32
/// parent's MACs and computes further from what was trained).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    value: f64,
    precision: PrecisionKind,
}

impl Score {
    /// `Greater` when `self` ranks above `other`.
    pub fn rank(&self, other: &Score) -> Ordering {
        self.value
            .total_cmp(&other.value)
            .then(other.precision.cmp(&self.precision))
    }

    /// Whether `self` ranks strictly above `other`.
    pub fn outranks(&self, other: &Score) -> bool {
        self.rank(other) == Ordering::Greater
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(macs: u64, quality: Option<f32>, precision: PrecisionKind) -> Candidate {
        Candidate {
            macs,
            depth: 1,
            width: 1,
            weight_bytes: 1,
            activation_bytes: 1,
            quality,
            precision,
        }
    }

    #[test]
    fn at_equal_macs_the_wider_format_ranks_first() {
        // Broken by ordering formats the other way round, or by ignoring them
        // (an int8 variant would tie with its parent).
        let fp32 = candidate(100, None, PrecisionKind::Fp32);
        let fp16 = candidate(100, None, PrecisionKind::Fp16);
        let int8 = candidate(100, None, PrecisionKind::Int8);
        let objective = Objective::of([&fp32, &fp16, &int8]);
        assert_eq!(objective, Objective::Macs);
        let [a, b, c] = [fp32, fp16, int8].map(|x| objective.score(&x));
        assert!(a.outranks(&b) && b.outranks(&c) && a.outranks(&c));
        assert!(!c.outranks(&a) && !a.outranks(&a));
    }

    #[test]
    fn more_macs_outrank_a_wider_format() {
        // Broken by comparing the format before the objective's value.
        let small_fp32 = candidate(100, None, PrecisionKind::Fp32);
        let large_int8 = candidate(200, None, PrecisionKind::Int8);
        let objective = Objective::Macs;
        assert!(objective
            .score(&large_int8)
            .outranks(&objective.score(&small_fp32)));
    }

    #[test]
    fn quality_ranks_only_when_every_candidate_has_one() {
        // Broken by ranking a partly calibrated set by quality (unscored
        // candidates would fall to the MACs scale, far above any quality).
        let scored = candidate(100, Some(0.9), PrecisionKind::Fp32);
        let unscored = candidate(50, None, PrecisionKind::Int8);
        assert_eq!(Objective::of([&scored, &unscored]), Objective::Macs);
        let better = candidate(50, Some(0.95), PrecisionKind::Int8);
        let objective = Objective::of([&scored, &better]);
        assert_eq!(objective, Objective::Quality);
        assert!(objective.score(&better).outranks(&objective.score(&scored)));
    }
}
