//! Inputs a selector cannot work with.

use core::fmt;

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
