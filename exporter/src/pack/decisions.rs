//! `exporter pack --decisions FILE [--trt-cache DIR]`: a reference board's
//! decisions (`runtime cache export`), and optionally its TensorRT caches,
//! shipped where the installed runtime finds them: beside the bundle they
//! were made with, named by runtime.toml's `shipped`. A board whose key
//! matches then measures only the shipped winner on its first boot.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tailor_runtime::manifest::Sha256;
use tailor_runtime::select::{ShippedDecisions, TENSORRT_DIR};
use tailor_targets::board::layout;

use super::archive::Entry;
use super::PackError;

/// What a pack ships of a reference board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shipped {
    /// Decisions made with the packed bundle, shipped.
    pub decisions: usize,
    /// Decisions made with another bundle, left out.
    pub dropped: usize,
    /// TensorRT cache files shipped.
    pub trt_files: usize,
}

/// The device tree's entries for the decisions in `file` made with the
/// bundle of identity `bundle` (others are dropped and counted), and for
/// the files under `trt_cache`.
pub(super) fn entries(
    file: &Path,
    trt_cache: Option<&Path>,
    bundle: &Sha256,
) -> Result<(Vec<Entry>, Shipped), PackError> {
    let all = ShippedDecisions::read(file)?;
    let ours = all.for_bundle(bundle);
    if ours.is_empty() {
        let made_with: BTreeSet<String> = all
            .winners()
            .map(|(key, _)| key.bundle.short().to_string())
            .collect();
        return Err(PackError::ForeignDecisions {
            path: file.to_owned(),
            bundle: bundle.short().to_string(),
            made_with: made_with.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    let decisions = layout::SHIPPED_DECISIONS.trim_start_matches('/');
    let mut tree = vec![Entry::bytes(decisions, 0o644, ours.to_bytes())];
    if let Some(dir) = trt_cache {
        let under = Path::new(decisions).with_file_name(TENSORRT_DIR);
        let before = tree.len();
        tree_of(dir, &under, &mut tree)?;
        if tree.len() == before {
            return Err(PackError::TrtCache {
                path: dir.to_owned(),
                why: "it holds no file".into(),
            });
        }
    }
    let shipped = Shipped {
        decisions: ours.len(),
        dropped: all.len() - ours.len(),
        trt_files: tree.len() - 1,
    };
    Ok((tree, shipped))
}

/// Every regular file under `dir`, as entries under `under`; anything else
/// (a link, a device) is refused rather than followed.
fn tree_of(dir: &Path, under: &Path, tree: &mut Vec<Entry>) -> Result<(), PackError> {
    let refuse = |path: PathBuf, why: String| PackError::TrtCache { path, why };
    let entries = fs::read_dir(dir).map_err(|e| refuse(dir.to_owned(), e.to_string()))?;
    let mut entries = entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refuse(dir.to_owned(), e.to_string()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let kind = entry
            .file_type()
            .map_err(|e| refuse(path.clone(), e.to_string()))?;
        let Some(name) = name.to_str() else {
            return Err(refuse(path, "its name is not UTF-8".into()));
        };
        let dest = under.join(name);
        if kind.is_dir() {
            tree_of(&path, &dest, tree)?;
        } else if kind.is_file() {
            let dest = dest.to_str().expect("made of UTF-8 names").to_owned();
            tree.push(Entry::file(dest, 0o644, &path));
        } else {
            return Err(refuse(path, "it is not a regular file or directory".into()));
        }
    }
    Ok(())
}
