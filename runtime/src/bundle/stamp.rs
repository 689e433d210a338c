//! What identifies a file's content without hashing it again, so a cached
//! boot need not re-hash files it verified before.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Sha256;

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

#[cfg(test)]
mod tests {
    use std::fs::File;
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
