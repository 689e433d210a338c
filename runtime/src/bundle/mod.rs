//! A bundle directory on the device: its manifest, whose file names are
//! checked to stay inside the bundle when it is opened, and integrity checks
//! of the files a sub-network needs before an engine touches them.
//!
//! Each file is hashed at most once per process, and only when a candidate
//! reads it; files whose size, mtime and inode match a [`FileStamp`] from an
//! earlier verification may be trusted without hashing (a 1.2 GB weight file
//! costs seconds to hash on a board), except by [`Bundle::verify_in_full`]:
//! bit-rot on flash changes neither size nor mtime.

mod names;
mod stamp;

pub use names::Refused;
pub use stamp::FileStamp;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::fs::{resolve_inside, sha256, Escape, Hasher};
use crate::manifest::{BundleFile, DecodeError, Manifest, Sha256, Subnet};

/// The compact manifest the runtime reads.
pub const MANIFEST_POSTCARD: &str = "manifest.postcard";
/// The same manifest for people and scripts.
pub const MANIFEST_JSON: &str = "manifest.json";

/// An opened bundle.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    /// `dir` canonical: what the manifest's names must stay inside.
    root: PathBuf,
    manifest_bytes: Vec<u8>,
    manifest_sha256: Sha256,
    /// Files known to hold a digest: hashed by this process, or trusted from
    /// a stamp that still matches.
    verified: Mutex<HashMap<PathBuf, Verified>>,
}

#[derive(Debug, Clone)]
struct Verified {
    sha256: Sha256,
    how: Known,
}

/// How this process knows a file's digest.
#[derive(Debug, Clone)]
enum Known {
    /// It hashed the file; the stamp to record, if the file held still.
    Hashed(Option<FileStamp>),
    /// A stamp recorded earlier still matches.
    Trusted,
}

/// Why a bundle or one of its files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}")]
    Manifest { path: PathBuf, source: DecodeError },
    #[error(transparent)]
    Outside(Box<Refused>),
    #[error("{path} is corrupted: sha256 is {actual}, the manifest says {expected}")]
    Corrupted {
        path: PathBuf,
        expected: Sha256,
        actual: Sha256,
    },
    #[error("{path} has {actual} bytes, the manifest says {expected}")]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{dir} has no sub-network `{id}`")]
    UnknownSubnet { dir: PathBuf, id: String },
}

impl Bundle {
    /// Reads and decodes `dir/manifest.postcard`, and checks that every file
    /// it names is inside `dir`, symlinks followed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_owned();
        let path = dir.join(MANIFEST_POSTCARD);
        let manifest_bytes = fs::read(&path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        let root = fs::canonicalize(&dir).map_err(|source| BundleError::Io {
            path: dir.clone(),
            source,
        })?;
        let manifest =
            Manifest::from_postcard(&manifest_bytes).map_err(|source| BundleError::Manifest {
                path: path.clone(),
                source,
            })?;
        names::check(&root, &path, &manifest).map_err(|r| BundleError::Outside(Box::new(r)))?;
        drop(manifest);
        let manifest_sha256 = sha256(&manifest_bytes);
        Ok(Bundle {
            dir,
            root,
            manifest_bytes,
            manifest_sha256,
            verified: Mutex::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest, borrowed from the bytes read at open.
    pub fn manifest(&self) -> Manifest<'_> {
        Manifest::from_postcard(&self.manifest_bytes).expect("decoded at open")
    }

    /// Identifies the bundle's content: the sha256 of its manifest, which
    /// holds the sha256 of every file.
    pub fn identity(&self) -> Sha256 {
        self.manifest_sha256
    }

    /// Looks up a sub-network by id.
    pub fn subnet(&self, id: &str) -> Result<Subnet<'_>, BundleError> {
        self.manifest()
            .subnets
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| BundleError::UnknownSubnet {
                dir: self.dir.clone(),
                id: id.to_owned(),
            })
    }

    /// `dir/name`, if `name` is relative and leads nowhere outside the
    /// bundle, symlinks followed: where a writer may put a new file.
    pub fn inside(&self, name: &str) -> Result<PathBuf, Escape> {
        resolve_inside(&self.root, name).map(|_| self.dir.join(name))
    }

    /// The graph file of a sub-network.
    pub fn graph_path(&self, subnet: &Subnet<'_>) -> PathBuf {
        self.dir.join(subnet.onnx)
    }

    /// Checks the sizes and sha256 of the graph and weight files of `subnet`
    /// (a corrupted flash is common on boards), each file at most once per
    /// process; a file [`Bundle::trust`]ed is taken as checked.
    pub fn verify(&self, subnet: &Subnet<'_>) -> Result<(), BundleError> {
        self.verify_subnet(subnet, Trust::Stamps)
    }

    /// [`Bundle::verify`], hashing also the files only trusted from a stamp:
    /// for the sub-network about to be served.
    pub fn verify_in_full(&self, subnet: &Subnet<'_>) -> Result<(), BundleError> {
        self.verify_subnet(subnet, Trust::Hashes)
    }

    /// Checks the size and sha256 of a non-graph file the manifest lists
    /// (the calibration's ranges).
    pub fn verify_data(&self, file: &BundleFile<'_>) -> Result<(), BundleError> {
        self.verify_file(file.path, Some(file.bytes), file.sha256, Trust::Stamps)
    }

    /// Takes the files of `stamps` whose size, mtime and inode are unchanged
    /// as holding the recorded digest, so [`Bundle::verify`] skips them when
    /// that digest is the manifest's.
    pub fn trust(&self, stamps: &[FileStamp]) {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        for stamp in stamps.iter().filter(|s| s.still_matches()) {
            verified.entry(stamp.path.clone()).or_insert(Verified {
                sha256: stamp.sha256,
                how: Known::Trusted,
            });
        }
    }

    /// Stamps of the files this process hashed, to trust them next time.
    pub fn stamps(&self) -> Vec<FileStamp> {
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified
            .values()
            .filter_map(|v| match &v.how {
                Known::Hashed(stamp) => stamp.clone(),
                Known::Trusted => None,
            })
            .collect()
    }

    fn verify_subnet(&self, subnet: &Subnet<'_>, trust: Trust) -> Result<(), BundleError> {
        self.verify_file(subnet.onnx, None, subnet.onnx_sha256, trust)?;
        for w in &subnet.weights {
            self.verify_file(w.path, Some(w.bytes), w.sha256, trust)?;
        }
        Ok(())
    }

    fn verify_file(
        &self,
        relative: &str,
        size: Option<u64>,
        expected: Sha256,
        trust: Trust,
    ) -> Result<(), BundleError> {
        let path =
            std::path::absolute(self.dir.join(relative)).map_err(|source| BundleError::Io {
                path: self.dir.join(relative),
                source,
            })?;
        let known = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&path)
            .filter(|v| matches!(v.how, Known::Hashed(_)) || trust == Trust::Stamps)
            .map(|v| v.sha256);
        if known == Some(expected) {
            return Ok(());
        }
        // Stamped before hashing and checked after: a file changed meanwhile
        // is not trusted later.
        let before = FileStamp::of(&path, expected).ok();
        let checked = check_file(&path, size, expected);
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = checked {
            // Whatever a stamp said, this file is not to be trusted again.
            verified.remove(&path);
            return Err(e);
        }
        let how = Known::Hashed(before.filter(FileStamp::still_matches));
        verified.insert(
            path,
            Verified {
                sha256: expected,
                how,
            },
        );
        Ok(())
    }
}

/// Which digests [`Bundle::verify_file`] takes without hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// Those this process hashed, and those [`Bundle::trust`]ed.
    Stamps,
    /// Only those this process hashed.
    Hashes,
}

fn check_file(path: &Path, size: Option<u64>, expected: Sha256) -> Result<(), BundleError> {
    let io_err = |source| BundleError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    if let Some(expected) = size {
        let actual = file.metadata().map_err(io_err)?.len();
        if actual != expected {
            return Err(BundleError::Size {
                path: path.to_owned(),
                expected,
                actual,
            });
        }
    }
    let mut hasher = Hasher::new();
    io::copy(&mut file, &mut hasher).map_err(io_err)?;
    let actual = hasher.finish();
    if actual != expected {
        return Err(BundleError::Corrupted {
            path: path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
