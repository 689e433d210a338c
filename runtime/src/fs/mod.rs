//! Durable file writes and file digests, the one way the workspace does
//! either: a crash or a power cut leaves a destination as it was or as it
//! was meant to be, never in between.
//!
//! - [`StagedFile`] / [`write_atomic`]: a file written beside its
//!   destination, synced, then renamed over it, and the directory synced;
//! - [`StagedDir`]: a whole directory built beside its destination, then
//!   swapped in (exchanged in one step on Linux), with the old one moved
//!   back if the swap fails;
//! - what a killed writer left beside a destination (a `.NAME.tmp-PID-N`)
//!   is cleared by the next writer of that destination;
//! - [`Hasher`], [`sha256`], [`sha256_file`]: the manifest's [`Sha256`]
//!   digest of bytes, of a stream, of a file;
//! - [`relative`], [`file_name`], [`resolve_inside`]: names read from a file
//!   that must not lead outside a directory.
//!
//! [`Sha256`]: crate::manifest::Sha256

mod digest;
mod inside;
mod staged;
mod swap;
mod sweep;
#[cfg(test)]
mod tests;

pub use digest::{sha256, sha256_file, Hasher};
pub use inside::{file_name, relative, resolve_inside, Escape};
pub use staged::{write_atomic, StagedFile};
pub use swap::{write_unlinked, StagedDir};

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The directory `path` lives in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A name beside `dest` no other writer uses, `.NAME.WHAT-PID-N`: hidden,
/// and telling which destination it was for.
fn sibling(dest: &Path, what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = OsString::from(".");
    name.push(dest.file_name().unwrap_or(dest.as_os_str()));
    name.push(format!(
        ".{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    parent(dest).join(name)
}

/// Makes the entries of directory `dir` (a rename into or out of it) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
