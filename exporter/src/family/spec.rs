//! A sub-network of any family: the width slice it reads and the blocks it
//! keeps per stage, with the id and the `--subnets` syntax every family shares.

use std::fmt;
use std::str::FromStr;

use tailor_runtime::manifest::{MAX_ROUTE, MAX_STAGES};

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

/// One individual group per SDR block, in network order: an SDR path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    len: u8,
    groups: [u8; MAX_ROUTE],
}

impl Route {
    /// `None` for no blocks or more than [`MAX_ROUTE`].
    pub fn new(groups: &[u8]) -> Option<Route> {
        if groups.is_empty() || groups.len() > MAX_ROUTE {
            return None;
        }
        let mut r = Route {
            len: groups.len() as u8,
            groups: [0; MAX_ROUTE],
        };
        r.groups[..groups.len()].copy_from_slice(groups);
        Some(r)
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.groups[..self.len as usize]
    }
}

/// Which sub-network of an SDR teacher: the whole SDRnet or one path.
/// `Full` orders first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SdrPath {
    Full,
    Route(Route),
}

/// One sub-network of a teacher. Ordered by width, then depths, then path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetSpec {
    /// The first stage's width, which names the shared weight slice: ViT's
    /// embedding width, Swin's stage-1 width, ResNet's stage-1 mid width,
    /// an SDR teacher's output channels (one slice for all its paths).
    pub width: u32,
    pub depths: Depths,
    /// The SDR path (`None` for the elastic families). A parsed SDR id
    /// has width 0 and one empty stage until the family's `check` fills
    /// in its teacher's.
    pub path: Option<SdrPath>,
}

impl SubnetSpec {
    /// A single-stage (ViT) sub-network.
    pub fn single(width: u32, depth: u32) -> SubnetSpec {
        SubnetSpec {
            width,
            depths: Depths::single(depth),
            path: None,
        }
    }

    /// An SDR sub-network as parsed, before its teacher's `check` fills in
    /// the width and depths.
    fn sdr(path: SdrPath) -> SubnetSpec {
        SubnetSpec {
            width: 0,
            depths: Depths::single(0),
            path: Some(path),
        }
    }

    /// The bundle-wide identifier: `w384-d12`, `w64-d3.4.6.3` per stage,
    /// `full` or `r0.1.1.0` (one group per SDR block) for SDR.
    pub fn id(&self) -> String {
        match self.path {
            None => format!("w{}-d{}", self.width, self.depths),
            Some(_) => self.to_string(),
        }
    }
}

impl fmt::Display for SubnetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path {
            None => write!(f, "{}x{}", self.width, self.depths),
            Some(SdrPath::Full) => f.write_str("full"),
            Some(SdrPath::Route(r)) => {
                f.write_str("r")?;
                for (i, g) in r.as_slice().iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    write!(f, "{g}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for SubnetSpec {
    type Err = String;

    /// Parses `WIDTHxDEPTHS` (`384x12`, `64x3.4.6.3`), an id (`w384-d12`),
    /// or an SDR id (`full`, `r0.1.1.0`).
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "full" {
            return Ok(SubnetSpec::sdr(SdrPath::Full));
        }
        if let Some(route) = s.strip_prefix('r') {
            let groups: Option<Vec<u8>> = route.split('.').map(|g| g.parse().ok()).collect();
            return match groups.as_deref().and_then(Route::new) {
                Some(r) => Ok(SubnetSpec::sdr(SdrPath::Route(r))),
                None => Err(format!(
                    "`{s}` is not an SDR route: expected r followed by one group index per SDR block, such as r0.1.1.0"
                )),
            };
        }
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
            Some((width, depths)) if width > 0 => Ok(SubnetSpec {
                width,
                depths,
                path: None,
            }),
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
    fn sdr_ids_parse_and_print_back() {
        let route: SubnetSpec = "r0.1.1.0".parse().unwrap();
        assert_eq!(
            route.path,
            Some(SdrPath::Route(Route::new(&[0, 1, 1, 0]).unwrap()))
        );
        assert_eq!(route.id(), "r0.1.1.0");
        let full: SubnetSpec = "full".parse().unwrap();
        assert_eq!((full.path, full.id()), (Some(SdrPath::Full), "full".into()));
        assert!(full < route, "the whole net lists first");
        for bad in [
            "r",
            "r0..1",
            "r0.x",
            "r256",
            "r0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0",
            "fully",
        ] {
            assert!(bad.parse::<SubnetSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn staged_specs_parse_and_name_every_stage() {
        let want = SubnetSpec {
            width: 96,
            depths: Depths::new(&[3, 5, 17, 3]).unwrap(),
            path: None,
        };
        assert_eq!("96x3.5.17.3".parse::<SubnetSpec>(), Ok(want));
        assert_eq!("w96-d3.5.17.3".parse::<SubnetSpec>(), Ok(want));
        assert_eq!(want.id(), "w96-d3.5.17.3");
        assert_eq!(want.depths.total(), 28);
        assert!("96x1.2.3.4.5".parse::<SubnetSpec>().is_err(), "five stages");
    }
}
