//! A whole directory replaced: built beside its destination, synced, then
//! swapped in with a rollback.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::{parent, sibling, sync_dir};

/// A directory built beside its destination and moved into place whole
/// ([`StagedDir::commit`]); dropped before that, it is removed with all it
/// holds.
#[derive(Debug)]
pub struct StagedDir {
    path: PathBuf,
    dest: PathBuf,
    placed: bool,
}

impl StagedDir {
    /// Creates the empty directory beside `dest` (and `dest`'s parents);
    /// `dest` is not touched yet.
    pub fn create(dest: &Path) -> io::Result<StagedDir> {
        fs::create_dir_all(parent(dest))?;
        let path = sibling(dest, "tmp");
        fs::create_dir(&path)?;
        Ok(StagedDir {
            path,
            dest: dest.to_owned(),
            placed: false,
        })
    }

    /// The directory to fill.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs everything inside, then moves the directory to the destination.
    /// Something already there (a directory or a file) is moved aside first,
    /// moved back if the move in fails, and removed once the new one is in.
    pub fn commit(self) -> io::Result<()> {
        self.commit_with(|from, to| fs::rename(from, to))
    }

    /// [`StagedDir::commit`] moving with `rename`: a seam for the tests to
    /// make a rename fail.
    pub(super) fn commit_with(
        mut self,
        mut rename: impl FnMut(&Path, &Path) -> io::Result<()>,
    ) -> io::Result<()> {
        sync_tree(&self.path)?;
        if self.dest.symlink_metadata().is_err() {
            return self.move_in(rename);
        }
        let aside = sibling(&self.dest, "old");
        rename(&self.dest, &aside)?;
        if let Err(e) = self.move_in(&mut rename) {
            return Err(match rename(&aside, &self.dest) {
                Ok(()) => e,
                Err(back) => io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; the old {} could not be moved back from {} ({back})",
                        self.dest.display(),
                        aside.display()
                    ),
                ),
            });
        }
        // The new one is in place: a failure here only leaves litter.
        let _ = if aside.is_dir() {
            fs::remove_dir_all(&aside)
        } else {
            fs::remove_file(&aside)
        };
        Ok(())
    }

    /// [`StagedDir::commit`], but never over an existing destination
    /// (`ErrorKind::AlreadyExists`).
    pub fn commit_new(mut self) -> io::Result<()> {
        sync_tree(&self.path)?;
        if self.dest.symlink_metadata().is_ok() {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        self.move_in(|from, to| fs::rename(from, to))
    }

    fn move_in(
        &mut self,
        mut rename: impl FnMut(&Path, &Path) -> io::Result<()>,
    ) -> io::Result<()> {
        rename(&self.path, &self.dest)?;
        self.placed = true;
        sync_dir(parent(&self.dest))
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Syncs every file and directory under `dir`, `dir` last.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}
