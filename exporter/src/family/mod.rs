//! Elastic families: each module is the one place that knows its
//! architecture's slicing rules, costs and graph.

pub mod swin;
pub mod vit;

use std::fmt;
use std::str::FromStr;

/// One sub-network of an elastic grid: a width and a depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetSpec {
    pub width: u32,
    pub depth: u32,
}

impl SubnetSpec {
    /// The bundle-wide identifier, e.g. `w384-d12`.
    pub fn id(&self) -> String {
        format!("w{}-d{}", self.width, self.depth)
    }
}

impl fmt::Display for SubnetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.depth)
    }
}

impl FromStr for SubnetSpec {
    type Err = String;

    /// Parses `WIDTHxDEPTH` (e.g. `384x12`) or an id (`w384-d12`).
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = s
            .split_once('x')
            .or_else(|| s.strip_prefix('w').and_then(|r| r.split_once("-d")))
            .and_then(|(w, d)| Some((w.parse().ok()?, d.parse().ok()?)));
        match parsed {
            Some((width, depth)) if width > 0 && depth > 0 => Ok(SubnetSpec { width, depth }),
            _ => Err(format!(
                "`{s}` is not a sub-network: expected WIDTHxDEPTH such as 384x12"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings() {
        let want = SubnetSpec {
            width: 384,
            depth: 12,
        };
        assert_eq!("384x12".parse::<SubnetSpec>(), Ok(want));
        assert_eq!("w384-d12".parse::<SubnetSpec>(), Ok(want));
        assert_eq!(want.id(), "w384-d12");
        for bad in ["384", "x12", "0x12", "384x", "wide-d12", "-3x4"] {
            assert!(bad.parse::<SubnetSpec>().is_err(), "{bad}");
        }
    }
}
