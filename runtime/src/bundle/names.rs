//! Every name a manifest gives a file, checked once, when the bundle is
//! opened: whatever reads or writes by these names afterwards (the engines,
//! calibrate, route, quantize, pack) stays inside the bundle.

use std::path::{Path, PathBuf};

use crate::fs::{file_name, resolve_inside, Escape};
use crate::manifest::Manifest;

/// A manifest's name that would lead outside its bundle.
#[derive(Debug, thiserror::Error)]
#[error("{}: refused: {entry} is `{name}`, which {problem}", manifest.display())]
pub struct Refused {
    /// The manifest file.
    pub manifest: PathBuf,
    /// The entry, e.g. "the graph of `w32-d4`".
    pub entry: String,
    pub name: String,
    pub problem: Escape,
}

/// Checks every name of `manifest`, read from `path` in the bundle at
/// `root` (canonical).
pub(super) fn check(root: &Path, path: &Path, manifest: &Manifest<'_>) -> Result<(), Refused> {
    let refuse = |checked: Result<(), Escape>, name: &str, entry: &dyn Fn() -> String| {
        checked.map_err(|problem| Refused {
            manifest: path.to_owned(),
            entry: entry(),
            name: name.to_owned(),
            problem,
        })
    };
    let teacher = manifest.teacher.file;
    // Not a file of the bundle, but documented as a bare file name.
    refuse(file_name(teacher).map(drop), teacher, &|| {
        "the teacher's file".into()
    })?;
    for s in &manifest.subnets {
        // Writers name new graphs after it (`ID.onnx`).
        refuse(file_name(s.id).map(drop), s.id, &|| {
            "a sub-network id".into()
        })?;
        refuse(resolve_inside(root, s.onnx).map(drop), s.onnx, &|| {
            format!("the graph of `{}`", s.id)
        })?;
        for w in &s.weights {
            refuse(resolve_inside(root, w.path).map(drop), w.path, &|| {
                format!("a weight file of `{}`", s.id)
            })?;
        }
    }
    if let Some(c) = &manifest.calibration {
        let ranges = c.ranges.path;
        refuse(resolve_inside(root, ranges).map(drop), ranges, &|| {
            "the calibration's ranges".into()
        })?;
    }
    Ok(())
}
