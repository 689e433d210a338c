//! sha256 into the manifest's [`Sha256`]: bundle files, datasets, manifests.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::Digest;

use crate::manifest::Sha256;

/// A sha256 fed piece by piece ([`Hasher::update`], or as an
/// [`io::Write`] sink), finished into the manifest's digest.
#[derive(Clone, Default)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    pub fn update(&mut self, bytes: impl AsRef<[u8]>) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Sha256 {
        Sha256(self.0.finalize().into())
    }
}

impl Write for Hasher {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Sha256 {
    let mut hasher = Hasher::new();
    hasher.update(bytes);
    hasher.finish()
}

/// sha256 of the file at `path`, streamed (weight files outgrow memory).
pub fn sha256_file(path: &Path) -> io::Result<Sha256> {
    let mut hasher = Hasher::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hasher.finish())
}
