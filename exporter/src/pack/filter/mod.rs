//! Which sub-networks a board gets: those whose predicted footprint fits
//! its memory budget, plus those the deployer insists on; of the int8
//! variants only those in the board's activation encoding, and no variant
//! whose fp32 parent stays behind.

use serde::Serialize;
use tailor_runtime::manifest::{ActivationEncoding, Precision, Subnet};
use tailor_runtime::policy::Candidate;

/// What happened to one sub-network of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub id: String,
    /// The memory the runtime predicts it needs at batch 1, in bytes (the
    /// runtime never loads a candidate predicted over its limit).
    pub footprint_bytes: u64,
    pub fate: Fate,
}

/// Whether a sub-network is packed, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Fits the budget.
    Kept,
    /// Over the budget, kept because `--keep` named it.
    KeptOnRequest,
    /// Over the budget: not packed.
    Dropped,
    /// An int8 variant in an activation encoding the board's engine does
    /// not take (or runs slowly): not packed.
    OtherEncoding,
    /// A variant whose fp32 parent is not packed: not packed either.
    ParentDropped,
}

impl Fate {
    pub fn packed(self) -> bool {
        matches!(self, Fate::Kept | Fate::KeptOnRequest)
    }
}

/// Judges every sub-network against `budget_bytes`, in manifest order, and
/// the int8 variants against the board's `encoding`. `keep` names
/// sub-networks packed whatever their footprint; an id that is not in the
/// bundle is returned as the error.
pub(super) fn judge<'a>(
    subnets: &[Subnet<'_>],
    budget_bytes: u64,
    encoding: ActivationEncoding,
    keep: &'a [String],
) -> Result<Vec<Verdict>, &'a str> {
    if let Some(unknown) = keep.iter().find(|k| !subnets.iter().any(|s| s.id == *k)) {
        return Err(unknown.as_str());
    }
    let mut verdicts: Vec<Verdict> = subnets
        .iter()
        .map(|s| {
            let footprint_bytes = Candidate::from(s).predicted_footprint(1);
            let fate = if matches!(s.precision, Precision::Int8 { encoding: e, .. } if e != encoding)
            {
                Fate::OtherEncoding
            } else if footprint_bytes <= budget_bytes {
                Fate::Kept
            } else if keep.iter().any(|k| k == s.id) {
                Fate::KeptOnRequest
            } else {
                Fate::Dropped
            };
            Verdict {
                id: s.id.to_owned(),
                footprint_bytes,
                fate,
            }
        })
        .collect();
    for (i, s) in subnets.iter().enumerate() {
        let parent = s
            .parent()
            .and_then(|p| subnets.iter().position(|q| q.id == p));
        if parent.is_some_and(|p| !verdicts[p].fate.packed()) && verdicts[i].fate.packed() {
            verdicts[i].fate = Fate::ParentDropped;
        }
    }
    Ok(verdicts)
}

#[cfg(test)]
mod tests;
