//! The routing spec beside an SDR checkpoint (`sdr.json`, docs/sdr.md):
//! read, and checked so that every SDR block's groups partition its mid
//! channels.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::family::FamilyError;

/// The spec's file name, in the checkpoint's directory.
pub const SPEC_FILE: &str = "sdr.json";
/// The `format` this exporter reads.
const FORMAT: &str = "tailor-sdr/1";

/// `sdr.json` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    pub format: String,
    pub image_size: u32,
    pub bn_eps: f32,
    pub stem: StemSpec,
    /// Stride of each stage's first block (on its 3×3 conv and shortcut).
    pub strides: Vec<u32>,
    pub sdr_blocks: Vec<BlockSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StemSpec {
    pub stride: u32,
    /// A 3×3/2 max pool padded by 1 after the stem's ReLU.
    pub max_pool: bool,
}

/// One SDR block's channel groups, as teacher mid-channel indices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    /// The bottleneck, e.g. `layer2.0`.
    pub module: String,
    pub mid_channels: u32,
    pub shared: Vec<u32>,
    pub groups: Vec<Vec<u32>>,
}

/// A block's mid channels as parts, each a list of teacher channel
/// indices: the shared part first, then the individual groups (none for a
/// block outside the spec: one shared part of every channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    pub shared: Vec<u32>,
    pub groups: Vec<Vec<u32>>,
}

impl Parts {
    /// Every channel shared: a plain bottleneck.
    pub fn plain(mid: u32) -> Parts {
        Parts {
            shared: (0..mid).collect(),
            groups: Vec::new(),
        }
    }

    /// The shared part, then every group: the parts of the whole SDRnet.
    pub fn all(&self) -> impl Iterator<Item = &[u32]> {
        std::iter::once(self.shared.as_slice()).chain(self.groups.iter().map(Vec::as_slice))
    }
}

/// The spec file of the checkpoint at `teacher`, if there is one.
pub fn spec_beside(teacher: &Path) -> Option<PathBuf> {
    let path = teacher.with_file_name(SPEC_FILE);
    path.is_file().then_some(path)
}

impl SpecFile {
    /// Reads and checks the format; the blocks are checked against the
    /// checkpoint by [`BlockSpec::parts`].
    pub fn read(path: &Path) -> Result<SpecFile, FamilyError> {
        let bad = |problem: String| FamilyError::SdrSpec {
            path: path.to_owned(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let spec: SpecFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if spec.format != FORMAT {
            return Err(bad(format!(
                "format `{}` is not `{FORMAT}`, the one this exporter reads",
                spec.format
            )));
        }
        if spec.sdr_blocks.is_empty() {
            return Err(bad("no sdr_blocks: the teacher has no paths".into()));
        }
        Ok(spec)
    }
}

impl BlockSpec {
    /// Checks the groups partition `mid` channels (the checkpoint's conv1
    /// rows): indices in range, no channel twice, none left out, no empty
    /// part.
    pub fn parts(&self, mid: u32) -> Result<Parts, String> {
        let m = &self.module;
        if self.mid_channels != mid {
            return Err(format!(
                "block {m}: mid_channels {} but the checkpoint's conv1 has {mid} output channels",
                self.mid_channels
            ));
        }
        if self.groups.is_empty() {
            return Err(format!("block {m}: no individual groups"));
        }
        let mut owner: Vec<Option<String>> = vec![None; mid as usize];
        let named = std::iter::once(("the shared channels".to_owned(), &self.shared)).chain(
            self.groups
                .iter()
                .enumerate()
                .map(|(g, c)| (format!("group {g}"), c)),
        );
        for (part, channels) in named {
            if channels.is_empty() {
                return Err(format!("block {m}: {part} hold no channel"));
            }
            for &c in channels {
                let Some(slot) = owner.get_mut(c as usize) else {
                    return Err(format!(
                        "block {m}: channel {c} in {part} is beyond its {mid} mid channels"
                    ));
                };
                if let Some(first) = slot.replace(part.clone()) {
                    return Err(format!(
                        "block {m}: channel {c} is in both {first} and {part} (groups must not overlap)"
                    ));
                }
            }
        }
        if let Some(c) = owner.iter().position(Option::is_none) {
            return Err(format!(
                "block {m}: channel {c} of {mid} is in no group (the groups must cover every mid channel)"
            ));
        }
        Ok(Parts {
            shared: self.shared.clone(),
            groups: self.groups.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::BlockSpec;

    fn block(shared: &[u32], groups: &[&[u32]]) -> BlockSpec {
        BlockSpec {
            module: "layer1.0".into(),
            mid_channels: 6,
            shared: shared.to_vec(),
            groups: groups.iter().map(|g| g.to_vec()).collect(),
        }
    }

    #[test]
    fn groups_must_partition_the_mid_channels() {
        let ok = block(&[0, 2], &[&[1, 5], &[3, 4]]).parts(6).unwrap();
        assert_eq!(
            ok.all().collect::<Vec<_>>(),
            [&[0, 2][..], &[1, 5], &[3, 4]]
        );
        let err = |b: BlockSpec, mid| b.parts(mid).unwrap_err();
        assert!(err(block(&[0, 2], &[&[1, 2], &[3, 4, 5]]), 6)
            .contains("channel 2 is in both the shared channels and group 0"));
        assert!(err(block(&[0, 2], &[&[1, 5], &[3]]), 6).contains("channel 4 of 6 is in no group"));
        assert!(err(block(&[0, 2], &[&[1, 5], &[3, 4, 6]]), 6)
            .contains("channel 6 in group 1 is beyond"));
        assert!(err(block(&[0, 2], &[&[1, 5], &[]]), 6).contains("group 1 hold no channel"));
        assert!(err(block(&[0, 1, 2, 3, 4, 5], &[]), 6).contains("no individual groups"));
        assert!(err(block(&[0, 2], &[&[1, 5], &[3, 4]]), 8).contains("mid_channels 6 but"));
    }
}
