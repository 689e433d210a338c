//! One file replaced whole: written beside its destination, synced, renamed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{parent, sibling, sweep::sweep, sync_dir};

/// A file written beside its destination and renamed over it only when
/// complete ([`StagedFile::commit`]); dropped before that, it is removed, so
/// no reader ever sees half of it under the destination's name.
#[derive(Debug)]
pub struct StagedFile {
    out: BufWriter<File>,
    temp: PathBuf,
    dest: PathBuf,
    placed: bool,
}

impl StagedFile {
    /// Creates the temporary file beside `dest`, clearing what a killed
    /// writer of `dest` left there; `dest` is not touched yet.
    pub fn create(dest: &Path) -> io::Result<StagedFile> {
        sweep(dest);
        let temp = sibling(dest, "tmp");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        Ok(StagedFile {
            out: BufWriter::with_capacity(1 << 16, file),
            temp,
            dest: dest.to_owned(),
            placed: false,
        })
    }

    /// The temporary file, to read back what was written before committing.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Where [`StagedFile::commit`] puts it.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Syncs the file, renames it over the destination (replacing a file
    /// there) and syncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        self.sync()?;
        fs::rename(&self.temp, &self.dest)?;
        self.placed = true;
        sync_dir(parent(&self.dest))
    }

    /// [`StagedFile::commit`], but never over an existing destination
    /// (`ErrorKind::AlreadyExists`).
    pub fn commit_new(mut self) -> io::Result<()> {
        self.sync()?;
        // A link, unlike a rename, fails when the name is taken; where the
        // file system has no links, a check before the rename has to do.
        match fs::hard_link(&self.temp, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) if self.dest.symlink_metadata().is_ok() => {
                return Err(io::ErrorKind::AlreadyExists.into())
            }
            Err(_) => {
                fs::rename(&self.temp, &self.dest)?;
                self.placed = true;
            }
        }
        sync_dir(parent(&self.dest))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}

impl Write for StagedFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.out.write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// For formats that patch a header once the rest is written (zip).
impl Seek for StagedFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.out.seek(to)
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.placed {
            // Best effort: the error that matters is the caller's.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Replaces `dest` with `bytes`, whole or not at all, durably
/// ([`StagedFile`] in one call).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut staged = StagedFile::create(dest)?;
    staged.write_all(bytes)?;
    staged.commit()
}
