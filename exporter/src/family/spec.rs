//! A sub-network of any family: the width slice it reads and the blocks it
//! keeps per stage, with the id and the `--subnets` syntax every family shares.

use std::fmt;
use std::str::FromStr;

use tailor_runtime::manifest::MAX_STAGES;

/// Blocks kept per stage: one stage for ViT, four for Swin and ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Depths {
    len: u8,
    stages: [u32; MAX_STAGES],
}

impl Depths {
    /// `None` for no stages or more than [`MAX_STAGES`].
    pub fn new(stages: &[u32]) -> Option<Depths> {
        if stages.is_empty() || stages.len() > MAX_STAGES {
            return None;
        }
        let mut d = Depths {
            len: stages.len() as u8,
            stages: [0; MAX_STAGES],
        };
        d.stages[..stages.len()].copy_from_slice(stages);
        Some(d)
    }

    /// One stage of `depth` blocks.
    pub fn single(depth: u32) -> Depths {
        Depths::new(&[depth]).expect("one stage")
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.stages[..self.len as usize]
    }

    /// Blocks in all stages.
    pub fn total(&self) -> u32 {
        self.as_slice().iter().sum()
    }
}

impl fmt::Display for Depths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// One sub-network of an elastic grid. Ordered by width, then depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetSpec {
    /// The first stage's width, which names the shared weight slice: ViT's
    /// embedding width, Swin's stage-1 width, ResNet's stage-1 mid width.
    pub width: u32,
    pub depths: Depths,
}

impl SubnetSpec {
    /// A single-stage (ViT) sub-network.
    pub fn single(width: u32, depth: u32) -> SubnetSpec {
        SubnetSpec {
            width,
            depths: Depths::single(depth),
        }
    }

    /// The bundle-wide identifier: `w384-d12`, or `w64-d3.4.6.3` per stage.
    pub fn id(&self) -> String {
        format!("w{}-d{}", self.width, self.depths)
    }
}

impl fmt::Display for SubnetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.depths)
    }
}

impl FromStr for SubnetSpec {
    type Err = String;

    /// Parses `WIDTHxDEPTHS` (`384x12`, `64x3.4.6.3`) or an id (`w384-d12`).
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = s
            .split_once('x')
            .or_else(|| s.strip_prefix('w').and_then(|r| r.split_once("-d")))
            .and_then(|(w, d)| {
                let depths: Option<Vec<u32>> = d
                    .split('.')
                    .map(|v| v.parse().ok().filter(|&v| v > 0))
                    .collect();
                Some((w.parse().ok()?, Depths::new(&depths?)?))
            });
        match parsed {
            Some((width, depths)) if width > 0 => Ok(SubnetSpec { width, depths }),
            _ => Err(format!(
                "`{s}` is not a sub-network: expected WIDTHxDEPTH such as 384x12, \
                 or WIDTHxD1.D2.D3.D4 for staged families such as 64x3.4.6.3"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings() {
        let want = SubnetSpec::single(384, 12);
        assert_eq!("384x12".parse::<SubnetSpec>(), Ok(want));
        assert_eq!("w384-d12".parse::<SubnetSpec>(), Ok(want));
        assert_eq!(want.id(), "w384-d12");
        for bad in [
            "384", "x12", "0x12", "384x", "wide-d12", "-3x4", "64x3..4", "64x0.4",
        ] {
            assert!(bad.parse::<SubnetSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn staged_specs_parse_and_name_every_stage() {
        let want = SubnetSpec {
            width: 96,
            depths: Depths::new(&[3, 5, 17, 3]).unwrap(),
        };
        assert_eq!("96x3.5.17.3".parse::<SubnetSpec>(), Ok(want));
        assert_eq!("w96-d3.5.17.3".parse::<SubnetSpec>(), Ok(want));
        assert_eq!(want.id(), "w96-d3.5.17.3");
        assert_eq!(want.depths.total(), 28);
        assert!("96x1.2.3.4.5".parse::<SubnetSpec>().is_err(), "five stages");
    }
}
