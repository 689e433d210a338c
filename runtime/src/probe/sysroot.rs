//! Reading a device's files under a sysroot, never failing: what cannot be
//! read becomes `None` and, when it says something, a note.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Bigger files are cut: every file the probe reads is a few KiB, and a
/// corrupt or hostile tree must not make it read gigabytes.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Files under a root directory, named by their path on the device
/// (`"proc/meminfo"`, without the leading `/`), plus notes on what failed.
pub(super) struct Sysroot<'a> {
    root: &'a Path,
    notes: Vec<String>,
}

impl<'a> Sysroot<'a> {
    pub(super) fn new(root: &'a Path) -> Self {
        Sysroot {
            root,
            notes: Vec::new(),
        }
    }

    /// The notes taken so far, in the order taken.
    pub(super) fn into_notes(self) -> Vec<String> {
        self.notes
    }

    /// Records what could not be learned and why.
    pub(super) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Whether anything (file, directory, device node) exists at `path`.
    pub(super) fn exists(&self, path: &str) -> bool {
        self.full(path).symlink_metadata().is_ok()
    }

    /// A file every Linux device has: its absence is noted.
    pub(super) fn required(&mut self, path: &str) -> Option<String> {
        self.read(path, true)
    }

    /// A file only some devices have: absence is silent, other errors are noted.
    pub(super) fn optional(&mut self, path: &str) -> Option<String> {
        self.read(path, false)
    }

    /// The trimmed content of an optional file parsed as `T`; garbage is noted.
    pub(super) fn parse<T: FromStr>(&mut self, path: &str) -> Option<T> {
        let text = self.optional(path)?;
        let value = text.trim().parse().ok();
        if value.is_none() {
            self.note(format!("/{path}: cannot parse {:?}", clip(text.trim())));
        }
        value
    }

    /// Names of the entries of an optional directory, sorted.
    pub(super) fn entries(&mut self, dir: &str) -> Vec<String> {
        let listing = match fs::read_dir(self.full(dir)) {
            Ok(listing) => listing,
            Err(err) => {
                if err.kind() != io::ErrorKind::NotFound {
                    self.note(format!("/{dir}: {err}"));
                }
                return Vec::new();
            }
        };
        let mut names: Vec<String> = listing
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    fn read(&mut self, path: &str, required: bool) -> Option<String> {
        match read_capped(&self.full(path)) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(err) if err.kind() == io::ErrorKind::NotFound && !required => None,
            Err(err) => {
                self.note(format!("/{path}: {err}"));
                None
            }
        }
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Garbage quoted in a note is cut to a readable length.
pub(super) fn clip(text: &str) -> &str {
    let end = text.char_indices().nth(40).map_or(text.len(), |(i, _)| i);
    &text[..end]
}
