//! A bundle directory on the device: its manifest, and integrity checks of
//! the files a sub-network needs before an engine touches them.
//!
//! Each file is hashed at most once per process, and only when a candidate
//! reads it; files whose size, mtime and inode match a [`FileStamp`] from an
//! earlier verification are trusted without hashing (a 1.2 GB weight file
//! costs seconds to hash on a board).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::fs::{sha256, Hasher};
use serde::{Deserialize, Serialize};

use crate::manifest::{BundleFile, DecodeError, Manifest, Sha256, Subnet};

/// The compact manifest the runtime reads.
pub const MANIFEST_POSTCARD: &str = "manifest.postcard";
/// The same manifest for people and scripts.
pub const MANIFEST_JSON: &str = "manifest.json";

/// An opened bundle.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    manifest_bytes: Vec<u8>,
    manifest_sha256: Sha256,
    /// Files known to hold a digest: hashed by this process, or trusted from
    /// a stamp that still matches.
    verified: Mutex<HashMap<PathBuf, Verified>>,
}

#[derive(Debug, Clone)]
struct Verified {
    sha256: Sha256,
    /// Set when this process hashed the file (so it can be recorded).
    stamp: Option<FileStamp>,
}

/// Why a bundle or one of its files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}")]
    Manifest { path: PathBuf, source: DecodeError },
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
    /// Reads and decodes `dir/manifest.postcard`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref().to_owned();
        let path = dir.join(MANIFEST_POSTCARD);
        let manifest_bytes = std::fs::read(&path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        Manifest::from_postcard(&manifest_bytes).map_err(|source| BundleError::Manifest {
            path: path.clone(),
            source,
        })?;
        let manifest_sha256 = sha256(&manifest_bytes);
        Ok(Bundle {
            dir,
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

    /// The graph file of a sub-network.
    pub fn graph_path(&self, subnet: &Subnet<'_>) -> PathBuf {
        self.dir.join(subnet.onnx)
    }

    /// Checks the sizes and sha256 of the graph and weight files of `subnet`
    /// (a corrupted flash is common on boards), each file at most once per
    /// process.
    pub fn verify(&self, subnet: &Subnet<'_>) -> Result<(), BundleError> {
        self.verify_file(subnet.onnx, None, subnet.onnx_sha256)?;
        for w in &subnet.weights {
            self.verify_file(w.path, Some(w.bytes), w.sha256)?;
        }
        Ok(())
    }

    /// Checks the size and sha256 of a non-graph file the manifest lists
    /// (the calibration's ranges).
    pub fn verify_data(&self, file: &BundleFile<'_>) -> Result<(), BundleError> {
        self.verify_file(file.path, Some(file.bytes), file.sha256)
    }

    /// Takes the files of `stamps` whose size, mtime and inode are unchanged
    /// as holding the recorded digest, so [`Bundle::verify`] skips them when
    /// that digest is the manifest's.
    pub fn trust(&self, stamps: &[FileStamp]) {
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        for stamp in stamps.iter().filter(|s| s.still_matches()) {
            verified.entry(stamp.path.clone()).or_insert(Verified {
                sha256: stamp.sha256,
                stamp: None,
            });
        }
    }

    /// Stamps of the files this process hashed, to trust them next time.
    pub fn stamps(&self) -> Vec<FileStamp> {
        let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified.values().filter_map(|v| v.stamp.clone()).collect()
    }

    fn verify_file(
        &self,
        relative: &str,
        size: Option<u64>,
        expected: Sha256,
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
            .map(|v| v.sha256);
        if known == Some(expected) {
            return Ok(());
        }
        // Stamped before hashing and checked after: a file changed meanwhile
        // is not trusted later.
        let before = FileStamp::of(&path, expected).ok();
        check_file(&path, size, expected)?;
        let stamp = before.filter(FileStamp::still_matches);
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                path,
                Verified {
                    sha256: expected,
                    stamp,
                },
            );
        Ok(())
    }
}

/// What identifies a file's content without hashing it again: while size,
/// mtime and inode are unchanged, the recorded sha256 is still the file's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// The file, absolute or as given.
    pub path: PathBuf,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    pub inode: u64,
    /// The sha256 verified when the stamp was taken.
    pub sha256: Sha256,
}

impl FileStamp {
    /// Stats `path` now; `sha256` is what the caller verified it holds.
    pub fn of(path: &Path, sha256: Sha256) -> io::Result<FileStamp> {
        let (size, mtime_ns, inode) = identity(&fs::metadata(path)?);
        Ok(FileStamp {
            path: path.to_owned(),
            size,
            mtime_ns,
            inode,
            sha256,
        })
    }

    /// Whether the file at `path` still has this size, mtime and inode (false
    /// if it cannot be statted).
    pub fn still_matches(&self) -> bool {
        fs::metadata(&self.path)
            .is_ok_and(|meta| identity(&meta) == (self.size, self.mtime_ns, self.inode))
    }
}

/// `(size, mtime in ns, inode)` of a file.
fn identity(meta: &fs::Metadata) -> (u64, i128, u64) {
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    (meta.len(), mtime_ns, meta.ino())
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
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn a_stamp_matches_until_size_mtime_or_inode_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w32.bin");
        fs::write(&file, b"weights-1").unwrap();
        let stamp = FileStamp::of(&file, Sha256([7; 32])).unwrap();
        assert!(stamp.still_matches());
        let then = SystemTime::UNIX_EPOCH + Duration::from_nanos(stamp.mtime_ns as u64);
        let set_mtime = |time: SystemTime| {
            File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(time)
                .unwrap()
        };

        // Same size and inode, new content and mtime.
        fs::write(&file, b"weights-2").unwrap();
        set_mtime(then + Duration::from_secs(1));
        assert!(!stamp.still_matches());
        // Same mtime and inode, another size.
        fs::write(&file, b"weights-22").unwrap();
        set_mtime(then);
        assert!(!stamp.still_matches());
        // Same size and mtime, another inode.
        let replacement = dir.path().join("w32.bin.new");
        fs::write(&replacement, b"weights-1").unwrap();
        fs::rename(&replacement, &file).unwrap();
        set_mtime(then);
        assert_eq!(fs::metadata(&file).unwrap().len(), stamp.size);
        assert!(!stamp.still_matches());
        // Control: with all three restored, it matches again.
        let restored = FileStamp {
            inode: fs::metadata(&file).unwrap().ino(),
            ..stamp.clone()
        };
        assert!(restored.still_matches());

        fs::remove_file(&file).unwrap();
        assert!(!restored.still_matches());
    }
}
