//! A whole directory replaced: built beside its destination, synced, then
//! swapped in with a rollback.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::{parent, sibling, sweep::sweep, sync_dir};

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
    /// Creates the empty directory beside `dest` (and `dest`'s parents),
    /// clearing what a killed writer of `dest` left there; `dest` is not
    /// touched yet.
    pub fn create(dest: &Path) -> io::Result<StagedDir> {
        fs::create_dir_all(parent(dest))?;
        sweep(dest);
        let path = sibling(dest, "tmp");
        fs::create_dir(&path)?;
        Ok(StagedDir {
            path,
            dest: dest.to_owned(),
            placed: false,
        })
    }

    /// [`StagedDir::create`], filled with hard links to every file under
    /// `dest` (copies where links are refused) but the top-level names in
    /// `except`: for a writer that changes a few files of a big tree. Such a
    /// file is the live tree's too: replace it (remove, then write), never
    /// write through it.
    pub fn linked(dest: &Path, except: &[&str]) -> io::Result<StagedDir> {
        let staged = StagedDir::create(dest)?;
        link_tree(dest, &staged.path, except)?;
        Ok(staged)
    }

    /// The directory to fill.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs everything inside, then moves the directory to the destination.
    /// Something already there (a directory or a file) is exchanged with it
    /// in one step where the kernel can, so no instant is without one of the
    /// two; elsewhere it is moved aside first, moved back if the move in
    /// fails. The old one is removed once the new one is in.
    pub fn commit(mut self) -> io::Result<()> {
        sync_tree(&self.path)?;
        if self.dest.symlink_metadata().is_ok() && self.exchange()? {
            return Ok(());
        }
        self.swap(|from, to| fs::rename(from, to))
    }

    /// [`StagedDir::commit`] by two renames, moving with `rename`: a seam
    /// for the tests to make a rename fail.
    #[cfg(test)]
    pub(super) fn commit_with(
        mut self,
        rename: impl FnMut(&Path, &Path) -> io::Result<()>,
    ) -> io::Result<()> {
        sync_tree(&self.path)?;
        self.swap(rename)
    }

    /// Exchanges the staged directory and `dest` (Linux's `RENAME_EXCHANGE`);
    /// `false` where the file system cannot. The old tree, now under the
    /// staged name, is removed on drop.
    #[cfg(target_os = "linux")]
    fn exchange(&mut self) -> io::Result<bool> {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;
        match renameat_with(CWD, &self.path, CWD, &self.dest, RenameFlags::EXCHANGE) {
            Ok(()) => sync_dir(parent(&self.dest)).map(|()| true),
            Err(Errno::INVAL | Errno::NOSYS) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn exchange(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    /// Moves `dest` aside, the staged directory in, and `dest` back if that
    /// fails; a kill between the two renames leaves the old tree aside, which
    /// the next [`StagedDir::create`] for `dest` moves back.
    fn swap(&mut self, mut rename: impl FnMut(&Path, &Path) -> io::Result<()>) -> io::Result<()> {
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

/// Writes `bytes` at `path` as a new file, unlinking the one there first:
/// in a [`StagedDir::linked`] tree that one is the live tree's file too.
pub fn write_unlinked(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::write(path, bytes)
}

/// Hard-links every file under `from` into `to`, the top-level names in
/// `except` left out.
fn link_tree(from: &Path, to: &Path, except: &[&str]) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if except.iter().any(|e| name == *e) {
            continue;
        }
        let (source, dest) = (entry.path(), to.join(&name));
        if entry.file_type()?.is_dir() {
            fs::create_dir(&dest)?;
            link_tree(&source, &dest, &[])?;
        } else if fs::hard_link(&source, &dest).is_err() {
            fs::copy(&source, &dest)?;
        }
    }
    Ok(())
}
