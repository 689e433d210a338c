//! Which number formats a selection chooses among (`--precision`), and the
//! groups of candidates that share one latency curve.
//!
//! An int8 or fp16 variant has its fp32 parent's MACs but not its speed:
//! each engine runs each format at its own rate, so each format (and int8
//! encoding) is searched as its own curve, as each setup is, and the
//! formats' winners compete by the bundle's one objective.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::engine::ExecutionProvider;
use crate::manifest::{Manifest, Precision, PrecisionKind};

/// A set of number formats, widest first, never empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precisions(Vec<PrecisionKind>);

impl Precisions {
    /// The default: every format the bundle has, or only int8 for a
    /// provider that runs quantised graphs only (an NPU's).
    pub fn default_for(provider: ExecutionProvider) -> Precisions {
        match provider {
            ExecutionProvider::Qnn => Precisions(vec![PrecisionKind::Int8]),
            _ => Precisions::every(),
        }
    }

    /// Every format there is.
    pub fn every() -> Precisions {
        Precisions(PrecisionKind::ALL.to_vec())
    }

    pub fn contains(&self, kind: PrecisionKind) -> bool {
        self.0.contains(&kind)
    }

    /// The formats of this set that `manifest` has, widest first: what a
    /// selection chose among, as its cache key records it.
    pub fn present_in(&self, manifest: &Manifest<'_>) -> Vec<PrecisionKind> {
        self.0
            .iter()
            .copied()
            .filter(|&k| manifest.subnets.iter().any(|s| s.precision.kind() == k))
            .collect()
    }
}

/// `fp32,int8`.
impl fmt::Display for Precisions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|k| k.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Precisions {
    type Err = String;

    /// Comma-separated names, in any order, e.g. `int8,fp32`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut kinds = s
            .split(',')
            .map(|name| {
                let name = name.trim();
                name.parse::<PrecisionKind>()
                    .map_err(|e| format!("unknown precision {name:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        kinds.sort_unstable();
        kinds.dedup();
        Ok(Precisions(kinds))
    }
}

/// The candidates that share one latency curve: one number format, and
/// for int8 one activation encoding (ONNX Runtime runs u8 and s8 at
/// different speeds).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Curve {
    /// `fp32`, `fp16`, `int8-u8` or `int8-s8`.
    pub(super) name: String,
    /// Manifest indices.
    pub(super) members: Vec<usize>,
}

/// The curves of `manifest`'s candidates in `precisions`, widest first
/// (fp32's first when the set has it), members in manifest order.
pub(super) fn curves(manifest: &Manifest<'_>, precisions: &Precisions) -> Vec<Curve> {
    let mut curves: Vec<(PrecisionKind, Curve)> = Vec::new();
    for (index, subnet) in manifest.subnets.iter().enumerate() {
        let kind = subnet.precision.kind();
        if !precisions.contains(kind) {
            continue;
        }
        let name = match subnet.precision {
            Precision::Int8 { encoding, .. } => format!("int8-{}", encoding.name()),
            other => other.name().to_owned(),
        };
        match curves.iter_mut().find(|(_, c)| c.name == name) {
            Some((_, curve)) => curve.members.push(index),
            None => curves.push((
                kind,
                Curve {
                    name,
                    members: vec![index],
                },
            )),
        }
    }
    curves.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    curves.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_parses_in_any_order_into_one_set() {
        // Broken by keeping the user's order or repeats: the cache key would
        // tell `int8,fp32` from `fp32,int8`.
        let a: Precisions = "int8, fp32,int8".parse().unwrap();
        let b: Precisions = "FP32,int8".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "fp32,int8");
        assert!(a.contains(PrecisionKind::Int8) && !a.contains(PrecisionKind::Fp16));
    }

    #[test]
    fn an_unknown_or_empty_name_is_refused_with_the_names_allowed() {
        for bad in ["int4", "", "fp32,,int8"] {
            let e = bad.parse::<Precisions>().unwrap_err();
            assert!(e.contains("expected fp32, fp16 or int8"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn an_npu_provider_defaults_to_quantised_graphs_only() {
        assert_eq!(
            Precisions::default_for(ExecutionProvider::Qnn).to_string(),
            "int8"
        );
        assert_eq!(
            Precisions::default_for(ExecutionProvider::Cpu).to_string(),
            "fp32,fp16,int8"
        );
    }
}
