//! Decision cache: the selections made on this device, so the next boot with
//! the same device, bundle and limits skips the measurements.
//!
//! Layout: one postcard file, [`FILE_NAME`] in a cache directory
//! ([`default_path`]: `$TAILOR_CACHE_DIR`, systemd's `$CACHE_DIRECTORY`, the
//! XDG cache), never inside the bundle, which is read-only on devices. It holds
//! `(FORMAT_VERSION, entries, verified)`:
//!
//! - `entries`: up to [`MAX_ENTRIES`] `(key, decision)` pairs, newest
//!   last, so a service that boots with several limits, engines or bundles
//!   keeps a decision for each. Each decision is stored as its own postcard
//!   bytes, so the rest of the file (keys, stamps) reads without knowing the
//!   decision's type.
//! - `verified`: [`FileStamp`]s of files whose sha256 was checked, so a later
//!   boot re-hashes only what changed.
//!
//! The [`Key`] is the caller's (the selection's: everything a decision
//! depends on). Any difference in the key is a miss that names the field; an
//! unreadable, corrupt or other-format file is a miss too, never an error that
//! stops a boot. Writes go to a temporary file in the same directory, then
//! rename over the old one, so a crash never leaves half a file. [`Cache::lock`]
//! serialises runtimes that start at once, so they neither measure while
//! disturbing each other nor lose each other's entries in a read-modify-write.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bundle::FileStamp;

/// The layout of the cache file this build reads and writes.
pub const FORMAT_VERSION: u32 = 5;

/// File name of the cache inside a cache directory.
pub const FILE_NAME: &str = "decisions.postcard";

/// Most decisions kept in one file (oldest dropped first).
pub const MAX_ENTRIES: usize = 64;

/// The default cache file, from the environment: `$TAILOR_CACHE_DIR`, else
/// `$CACHE_DIRECTORY` (systemd's `CacheDirectory=`; of a colon-separated list,
/// the first), else `$XDG_CACHE_HOME/tailor`, else `$HOME/.cache/tailor`;
/// joined with [`FILE_NAME`]. `None` if none is set.
pub fn default_path() -> Option<PathBuf> {
    default_path_from(|name| std::env::var_os(name))
}

/// [`default_path`] with the environment read through `var`. Empty variables
/// count as unset, and so does a relative `$XDG_CACHE_HOME` (the XDG spec).
pub fn default_path_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|value| !value.is_empty());
    let dir = set("TAILOR_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            set("CACHE_DIRECTORY").and_then(|list| {
                list.as_bytes()
                    .split(|&b| b == b':')
                    .find(|dir| !dir.is_empty())
                    .map(|dir| PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
            })
        })
        .or_else(|| {
            set("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute())
                .map(|dir| dir.join("tailor"))
        })
        .or_else(|| set("HOME").map(|home| PathBuf::from(home).join(".cache/tailor")))?;
    Some(dir.join(FILE_NAME))
}

/// What a decision is cached under: an equal key reuses it. A key names
/// what changed when none is equal, so a miss can say why.
pub trait Key: Clone + Eq + Serialize + DeserializeOwned {
    /// A part of the key, to say which one changed.
    type Field: Copy + fmt::Debug + fmt::Display;

    /// Why no entry stored under one of `stored` (oldest first) serves
    /// `self`: the field that changed from the nearest of them.
    fn nearest_change<'a>(
        &self,
        stored: impl DoubleEndedIterator<Item = &'a Self>,
    ) -> Option<Self::Field>
    where
        Self: 'a;
}

/// The outcome of [`Cache::load`].
#[derive(Debug)]
pub enum Lookup<T, F> {
    /// The decision cached for this very key.
    Hit(T),
    /// No usable decision: select afresh.
    Miss(Miss<F>),
}

/// Why the cache had no usable decision.
#[derive(Debug)]
pub enum Miss<F> {
    /// Nothing was cached yet.
    Absent,
    /// Decisions are cached, none for this key; the field is the first that
    /// differs from the nearest cached key.
    KeyChanged(F),
    /// The file exists but could not be read.
    Unreadable(io::Error),
    /// The file was written by a build with another cache layout.
    OtherFormat { version: u32 },
    /// The file is truncated or garbled.
    Corrupt(postcard::Error),
}

impl<F: fmt::Display> fmt::Display for Miss<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Absent => f.write_str("no decision cached yet"),
            Miss::KeyChanged(field) => {
                write!(f, "the {field} changed since the decision was cached")
            }
            Miss::Unreadable(e) => write!(f, "cannot read the cache: {e}"),
            Miss::OtherFormat { version } => write!(
                f,
                "the cache is in format {version}, this build uses format {FORMAT_VERSION}"
            ),
            Miss::Corrupt(e) => write!(f, "the cache is corrupt: {e}"),
        }
    }
}

/// Why the cache could not be written or locked.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot write the decision cache {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot lock the decision cache with {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot encode the decision for the cache: {0}")]
    Encode(postcard::Error),
}

/// What the file holds after its format version.
#[derive(Debug, Serialize, Deserialize)]
struct Contents<K> {
    /// `(key, postcard of the decision)`, newest last.
    entries: Vec<(K, Vec<u8>)>,
    verified: Vec<FileStamp>,
}

impl<K> Default for Contents<K> {
    fn default() -> Self {
        Contents {
            entries: Vec::new(),
            verified: Vec::new(),
        }
    }
}

impl<K: Key> Contents<K> {
    /// Replaces the entry for `key` or appends one, dropping the oldest
    /// beyond [`MAX_ENTRIES`].
    fn insert(&mut self, key: &K, value: Vec<u8>) {
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.clone(), value));
        let excess = self.entries.len().saturating_sub(MAX_ENTRIES);
        self.entries.drain(..excess);
    }

    /// Adds `stamps`, replacing those of the same path; stamps of files that
    /// changed or vanished since are dropped, so the list cannot only grow.
    fn merge_verified(&mut self, stamps: &[FileStamp]) {
        self.verified
            .retain(|old| old.still_matches() && stamps.iter().all(|new| new.path != old.path));
        self.verified.extend_from_slice(stamps);
    }
}

/// Decodes all of `bytes` as a `T`: trailing bytes are corruption too.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

/// The decision cache file, its decisions keyed by `K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache<K> {
    path: PathBuf,
    key: PhantomData<fn() -> K>,
}

/// The cache's lock, held until dropped (closing the file releases it).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl<K: Key> Cache<K> {
    /// A cache kept in the file at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Cache<K> {
        Cache {
            path: path.into(),
            key: PhantomData,
        }
    }

    /// The file the cache lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decision cached for exactly `key`, or why there is none.
    pub fn load<T: DeserializeOwned>(&self, key: &K) -> Lookup<T, K::Field> {
        let found = self.contents().and_then(|contents| {
            if contents.entries.is_empty() {
                return Err(Miss::Absent);
            }
            match contents.entries.iter().find(|(k, _)| k == key) {
                Some((_, value)) => decode_exact(value).map_err(Miss::Corrupt),
                None => Err(key
                    .nearest_change(contents.entries.iter().map(|(k, _)| k))
                    .map_or(Miss::Absent, Miss::KeyChanged)),
            }
        });
        match found {
            Ok(value) => Lookup::Hit(value),
            Err(miss) => Lookup::Miss(miss),
        }
    }

    /// Every cached decision with its key, oldest first, or why there is
    /// none (a file without entries is [`Miss::Absent`]).
    pub fn decisions<T: DeserializeOwned>(&self) -> Result<Vec<(K, T)>, Miss<K::Field>> {
        let contents = self.contents()?;
        if contents.entries.is_empty() {
            return Err(Miss::Absent);
        }
        contents
            .entries
            .into_iter()
            .map(|(key, value)| Ok((key, decode_exact(&value).map_err(Miss::Corrupt)?)))
            .collect()
    }

    /// Caches `value` as the decision for `key`: replaces the entry of an
    /// equal key or appends (newest last), keeping at most [`MAX_ENTRIES`],
    /// and records the files `verified` for it (merged with those recorded:
    /// a stamp of the same path replaced, stamps of changed or vanished
    /// files dropped), in the same write: a kill cannot leave a decision on disk with
    /// its stamps' write still pending (a temporary that no later run, a
    /// hit, would sweep). An unreadable, corrupt or other-format file is
    /// replaced. Read-modify-write: hold [`Cache::lock`] so that another
    /// process's entry written meanwhile is not lost.
    pub fn store<T: Serialize>(
        &self,
        key: &K,
        value: &T,
        verified: &[FileStamp],
    ) -> Result<(), CacheError> {
        let value = postcard::to_stdvec(value).map_err(CacheError::Encode)?;
        self.update(|contents| {
            contents.insert(key, value);
            contents.merge_verified(verified);
        })
    }

    /// Files whose sha256 was verified earlier, as recorded (empty on any
    /// problem with the file).
    pub fn verified(&self) -> Vec<FileStamp> {
        self.contents()
            .map(|contents| contents.verified)
            .unwrap_or_default()
    }

    /// Blocks until this process holds the cache's lock (an exclusive `flock`
    /// on `<path>.lock`, created with its directory if needed), so runtimes
    /// starting at once on one board measure one after the other and the
    /// second finds the first's decision. Not reentrant: a second `lock()` in
    /// the same process blocks too. An error means the location cannot be
    /// written: go on without the lock, as with an unwritable cache.
    pub fn lock(&self) -> Result<CacheLock, CacheError> {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let locked = (|| {
            fs::create_dir_all(self.dir())?;
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        })();
        match locked {
            Ok(file) => Ok(CacheLock { _file: file }),
            Err(source) => Err(CacheError::Lock { path, source }),
        }
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// The file's contents, or why they cannot be used.
    fn contents(&self) -> Result<Contents<K>, Miss<K::Field>> {
        let bytes = fs::read(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Miss::Absent,
            _ => Miss::Unreadable(e),
        })?;
        let (version, _) = postcard::take_from_bytes::<u32>(&bytes).map_err(Miss::Corrupt)?;
        if version != FORMAT_VERSION {
            return Err(Miss::OtherFormat { version });
        }
        let (_, contents): (u32, Contents<K>) = decode_exact(&bytes).map_err(Miss::Corrupt)?;
        Ok(contents)
    }

    /// Applies `change` to the contents (empty if unusable) and writes them.
    fn update(&self, change: impl FnOnce(&mut Contents<K>)) -> Result<(), CacheError> {
        let mut contents = self.contents().unwrap_or_default();
        change(&mut contents);
        let bytes =
            postcard::to_stdvec(&(FORMAT_VERSION, &contents)).map_err(CacheError::Encode)?;
        self.replace_with(&bytes)
            .map_err(|source| CacheError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Replaces the cache file whole (durably: `crate::fs::write_atomic`).
    fn replace_with(&self, bytes: &[u8]) -> io::Result<()> {
        fs::create_dir_all(self.dir())?;
        crate::fs::write_atomic(&self.path, bytes)
    }
}

#[cfg(test)]
mod tests;
