//! Decision cache: the selections made on this device, so the next boot with
//! the same device, bundle and limits skips the measurements.
//!
//! Layout: one postcard file, [`FILE_NAME`] in a cache directory
//! ([`default_path`]: `$TAILOR_CACHE_DIR`, systemd's `$CACHE_DIRECTORY`, the
//! XDG cache), never inside the bundle, which is read-only on devices. It holds
//! `(FORMAT_VERSION, entries, verified)`:
//!
//! - `entries`: up to [`MAX_ENTRIES`] `(CacheKey, decision)` pairs, newest
//!   last, so a service that boots with several limits, engines or bundles
//!   keeps a decision for each. Each decision is stored as its own postcard
//!   bytes, so the rest of the file (keys, stamps) reads without knowing the
//!   decision's type.
//! - `verified`: [`FileStamp`]s of files whose sha256 was checked, so a later
//!   boot re-hashes only what changed.
//!
//! The key holds the limits as the user wrote them (a memory fraction stays a
//! fraction): a key resolved to bytes would change with `MemAvailable` and
//! never hit. Any difference in the key is a miss that names the field; an
//! unreadable, corrupt or other-format file is a miss too, never an error that
//! stops a boot. Writes go to a temporary file in the same directory, then
//! rename over the old one, so a crash never leaves half a file. [`Cache::lock`]
//! serialises runtimes that start at once, so they neither measure while
//! disturbing each other nor lose each other's entries in a read-modify-write.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::manifest::Sha256;
use crate::profile::MeasureOptions;
use crate::select::{Limits, MemoryLimit};

/// The layout of the cache file this build reads and writes.
pub const FORMAT_VERSION: u32 = 3;

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

/// Everything a selection depends on: a decision is reused only for an
/// equal key. Floats compare by their bits, so equality is an equivalence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheKey {
    /// The probe's device fingerprint (model, SoC, memory).
    pub device: String,
    /// The power mode the device ran in (e.g. `nvpmodel` mode), if it has any.
    pub power_mode: Option<String>,
    /// CPU governor / clock-lock state, e.g. `schedutil` or
    /// `performance,locked`; `None` if unknown.
    pub clocks: Option<String>,
    /// Engine, execution provider and library versions, e.g. `tract 0.23` or
    /// `ort 1.31.1 cuda tensorrt 10.3`.
    pub engine: String,
    /// tailor's version (`env!("CARGO_PKG_VERSION")` of the caller).
    pub tailor: String,
    /// sha256 of the bundle's manifest.
    pub bundle: Sha256,
    /// The limits as the user wrote them.
    pub limits: Limits,
    /// Threads the engine ran with.
    pub threads: u32,
    /// How candidates were measured.
    pub measuring: MeasureOptions,
}

/// A part of the [`CacheKey`], to say which one changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    Device,
    PowerMode,
    Clocks,
    Engine,
    Tailor,
    Bundle,
    LatencyLimit,
    Percentile,
    Batch,
    MemoryLimit,
    MinQuality,
    Threads,
    Measuring,
}

impl fmt::Display for KeyField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyField::Device => "device fingerprint",
            KeyField::PowerMode => "power mode",
            KeyField::Clocks => "CPU clock state (governor, clock lock)",
            KeyField::Engine => "engine or its library version",
            KeyField::Tailor => "tailor version",
            KeyField::Bundle => "bundle (manifest sha256)",
            KeyField::LatencyLimit => "latency limit",
            KeyField::Percentile => "latency percentile",
            KeyField::Batch => "batch size",
            KeyField::MemoryLimit => "memory limit",
            KeyField::MinQuality => "minimum quality",
            KeyField::Threads => "thread count",
            KeyField::Measuring => "measuring options",
        })
    }
}

impl CacheKey {
    /// The fields in which `self` and `other` differ, in declaration order.
    fn differences(&self, other: &CacheKey) -> impl Iterator<Item = KeyField> {
        let (a, b) = (&self.limits, &other.limits);
        let same_memory = match (a.memory, b.memory) {
            (MemoryLimit::Bytes(x), MemoryLimit::Bytes(y)) => x == y,
            (MemoryLimit::FractionOfAvailable(x), MemoryLimit::FractionOfAvailable(y)) => {
                x.to_bits() == y.to_bits()
            }
            _ => false,
        };
        [
            (self.device == other.device, KeyField::Device),
            (self.power_mode == other.power_mode, KeyField::PowerMode),
            (self.clocks == other.clocks, KeyField::Clocks),
            (self.engine == other.engine, KeyField::Engine),
            (self.tailor == other.tailor, KeyField::Tailor),
            (self.bundle == other.bundle, KeyField::Bundle),
            (
                a.latency_ms.to_bits() == b.latency_ms.to_bits(),
                KeyField::LatencyLimit,
            ),
            (a.percentile == b.percentile, KeyField::Percentile),
            (a.batch == b.batch, KeyField::Batch),
            (same_memory, KeyField::MemoryLimit),
            (
                a.min_quality.map(f32::to_bits) == b.min_quality.map(f32::to_bits),
                KeyField::MinQuality,
            ),
            (self.threads == other.threads, KeyField::Threads),
            (self.measuring == other.measuring, KeyField::Measuring),
        ]
        .into_iter()
        .filter_map(|(same, field)| (!same).then_some(field))
    }

    /// Why an entry stored for one of `stored` keys does not serve `self`:
    /// the first changed field of the nearest key (same device and bundle
    /// first, then fewest differences, then newest).
    fn nearest_change<'a>(
        &self,
        stored: impl DoubleEndedIterator<Item = &'a CacheKey>,
    ) -> Option<KeyField> {
        stored
            .rev()
            .map(|other| {
                let changed: Vec<KeyField> = self.differences(other).collect();
                let elsewhere = changed
                    .iter()
                    .any(|f| matches!(f, KeyField::Device | KeyField::Bundle));
                ((elsewhere, changed.len()), changed.first().copied())
            })
            .min_by_key(|(rank, _)| *rank)
            .and_then(|(_, first)| first)
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        self.differences(other).next().is_none()
    }
}

impl Eq for CacheKey {}

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

/// The outcome of [`Cache::load`].
#[derive(Debug)]
pub enum Lookup<T> {
    /// The decision cached for this very key.
    Hit(T),
    /// No usable decision: select afresh.
    Miss(Miss),
}

/// Why the cache had no usable decision.
#[derive(Debug)]
pub enum Miss {
    /// Nothing was cached yet.
    Absent,
    /// Decisions are cached, none for this key; the field is the first that
    /// differs from the nearest cached key.
    KeyChanged(KeyField),
    /// The file exists but could not be read.
    Unreadable(io::Error),
    /// The file was written by a build with another cache layout.
    OtherFormat { version: u32 },
    /// The file is truncated or garbled.
    Corrupt(postcard::Error),
}

impl fmt::Display for Miss {
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
#[derive(Debug, Default, Serialize, Deserialize)]
struct Contents {
    /// `(key, postcard of the decision)`, newest last.
    entries: Vec<(CacheKey, Vec<u8>)>,
    verified: Vec<FileStamp>,
}

impl Contents {
    /// Replaces the entry for `key` or appends one, dropping the oldest
    /// beyond [`MAX_ENTRIES`].
    fn insert(&mut self, key: &CacheKey, value: Vec<u8>) {
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
fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

/// The decision cache file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    path: PathBuf,
}

/// The cache's lock, held until dropped (closing the file releases it).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl Cache {
    /// A cache kept in the file at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Cache {
        Cache { path: path.into() }
    }

    /// The file the cache lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decision cached for exactly `key`, or why there is none.
    pub fn load<T: DeserializeOwned>(&self, key: &CacheKey) -> Lookup<T> {
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

    /// Caches `value` as the decision for `key`: replaces the entry of an
    /// equal key or appends (newest last), keeping at most [`MAX_ENTRIES`] and
    /// the verified stamps. An unreadable, corrupt or other-format file is
    /// replaced. Read-modify-write: hold [`Cache::lock`] so that another
    /// process's entry written meanwhile is not lost.
    pub fn store<T: Serialize>(&self, key: &CacheKey, value: &T) -> Result<(), CacheError> {
        let value = postcard::to_stdvec(value).map_err(CacheError::Encode)?;
        self.update(|contents| contents.insert(key, value))
    }

    /// Files whose sha256 was verified earlier, as recorded (empty on any
    /// problem with the file).
    pub fn verified(&self) -> Vec<FileStamp> {
        self.contents()
            .map(|contents| contents.verified)
            .unwrap_or_default()
    }

    /// Records verified files, merged with those recorded (a stamp of the
    /// same path is replaced; stamps of changed or vanished files dropped),
    /// in the same file and as [`Cache::store`] does.
    pub fn record_verified(&self, stamps: &[FileStamp]) -> Result<(), CacheError> {
        self.update(|contents| contents.merge_verified(stamps))
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
    fn contents(&self) -> Result<Contents, Miss> {
        let bytes = fs::read(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Miss::Absent,
            _ => Miss::Unreadable(e),
        })?;
        let (version, _) = postcard::take_from_bytes::<u32>(&bytes).map_err(Miss::Corrupt)?;
        if version != FORMAT_VERSION {
            return Err(Miss::OtherFormat { version });
        }
        let (_, contents): (u32, Contents) = decode_exact(&bytes).map_err(Miss::Corrupt)?;
        Ok(contents)
    }

    /// Applies `change` to the contents (empty if unusable) and writes them.
    fn update(&self, change: impl FnOnce(&mut Contents)) -> Result<(), CacheError> {
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

    /// Writes a sibling temporary file, then renames it over the cache.
    fn replace_with(&self, bytes: &[u8]) -> io::Result<()> {
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let dir = self.dir();
        fs::create_dir_all(dir)?;
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(
            ".{}-{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = dir.join(name);
        let written = File::create(&temp).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
        let renamed = written.and_then(|()| fs::rename(&temp, &self.path));
        if renamed.is_err() {
            // Best effort: the error that matters is the one returned.
            let _ = fs::remove_file(&temp);
        }
        renamed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::profile::Percentile;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Decision {
        subnet: String,
        p90_ms: f64,
    }

    fn decision(subnet: &str) -> Decision {
        Decision {
            subnet: subnet.into(),
            p90_ms: 21.5,
        }
    }

    fn key() -> CacheKey {
        CacheKey {
            device: "jetson-orin-nano-8gb".into(),
            power_mode: Some("15W".into()),
            clocks: Some("schedutil".into()),
            engine: "ort 1.31.1 cuda".into(),
            tailor: "0.1.0".into(),
            bundle: Sha256([3; 32]),
            limits: Limits::latency_ms(25.0).memory_mb(900).min_quality(80.0),
            threads: 4,
            measuring: MeasureOptions::default(),
        }
    }

    fn key_with(change: impl FnOnce(&mut CacheKey)) -> CacheKey {
        let mut k = key();
        change(&mut k);
        k
    }

    fn cache_in(dir: &tempfile::TempDir) -> Cache {
        Cache::at(dir.path().join(FILE_NAME))
    }

    fn stored() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(&dir);
        cache.store(&key(), &decision("w640-d18")).unwrap();
        (dir, cache)
    }

    /// The file's layout, spelled out here rather than taken from the cache.
    type Layout = (u32, Vec<(CacheKey, Vec<u8>)>, Vec<FileStamp>);

    /// The file's entries and stamps, decoded here rather than by the cache.
    fn decoded(cache: &Cache) -> Layout {
        postcard::from_bytes(&fs::read(cache.path()).unwrap()).unwrap()
    }

    fn hit(cache: &Cache, key: &CacheKey) -> Option<Decision> {
        match cache.load(key) {
            Lookup::Hit(d) => Some(d),
            Lookup::Miss(_) => None,
        }
    }

    fn files_in(dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn each_key_keeps_its_own_decision() {
        let (_dir, cache) = stored();
        let other = key_with(|k| k.threads = 8);
        cache.store(&other, &decision("w384-d12")).unwrap();
        assert_eq!(hit(&cache, &key()), Some(decision("w640-d18")));
        assert_eq!(hit(&cache, &other), Some(decision("w384-d12")));
    }

    #[test]
    fn an_equal_key_replaces_its_entry() {
        let (_dir, cache) = stored();
        cache.store(&key(), &decision("w384-d12")).unwrap();
        let (version, entries, _) = decoded(&cache);
        assert_eq!((version, entries.len()), (FORMAT_VERSION, 1));
        assert_eq!(hit(&cache, &key()), Some(decision("w384-d12")));
    }

    #[test]
    fn the_oldest_entry_goes_beyond_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(&dir);
        let keys: Vec<CacheKey> = (0..=MAX_ENTRIES as u32)
            .map(|threads| key_with(|k| k.threads = threads))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            cache.store(k, &decision(&format!("n{i}"))).unwrap();
        }
        assert_eq!(decoded(&cache).1.len(), MAX_ENTRIES);
        assert!(hit(&cache, &keys[0]).is_none());
        assert_eq!(hit(&cache, &keys[1]), Some(decision("n1")));
        assert_eq!(
            hit(&cache, &keys[MAX_ENTRIES]),
            Some(decision(&format!("n{MAX_ENTRIES}")))
        );
    }

    #[test]
    fn each_key_field_is_named_when_it_changes() {
        let (_dir, cache) = stored();
        type Change = (KeyField, fn(&mut CacheKey));
        let changes: [Change; 13] = [
            (KeyField::Device, |k| k.device.push_str("-rev2")),
            (KeyField::PowerMode, |k| k.power_mode = None),
            (KeyField::Clocks, |k| k.clocks = Some("performance".into())),
            (KeyField::Engine, |k| {
                k.engine = "ort 1.31.1 cuda tensorrt 10.3".into()
            }),
            (KeyField::Tailor, |k| k.tailor = "0.2.0".into()),
            (KeyField::Bundle, |k| k.bundle.0[31] ^= 1),
            (KeyField::LatencyLimit, |k| k.limits.latency_ms = 30.0),
            (KeyField::Percentile, |k| {
                k.limits.percentile = Percentile::P99
            }),
            (KeyField::Batch, |k| k.limits.batch = 8),
            (KeyField::MemoryLimit, |k| {
                k.limits = k.limits.memory_mb(901)
            }),
            (KeyField::MinQuality, |k| k.limits.min_quality = None),
            (KeyField::Threads, |k| k.threads = 2),
            (KeyField::Measuring, |k| k.measuring.min_runs += 1),
        ];
        for (field, change) in changes {
            match cache.load::<Decision>(&key_with(change)) {
                Lookup::Miss(miss @ Miss::KeyChanged(f)) => {
                    assert_eq!(f, field);
                    assert!(miss.to_string().contains(&field.to_string()), "{miss}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_change_is_named_against_the_nearest_entry() {
        let (_dir, cache) = stored();
        // An older entry of another device, a newer one of this device with
        // another limit: a new thread count on this device is the news.
        let elsewhere = key_with(|k| {
            k.device = "raspberry-pi-5".into();
            k.threads = 2;
        });
        cache.store(&elsewhere, &decision("w192-d6")).unwrap();
        let wanted = key_with(|k| k.threads = 2);
        assert!(matches!(
            cache.load::<Decision>(&wanted),
            Lookup::Miss(Miss::KeyChanged(KeyField::Threads))
        ));
    }

    #[test]
    fn a_memory_fraction_keys_as_written() {
        // The default limit is half of what is available whenever it is
        // resolved: two boots write the same key.
        let boot = |limits: Limits| key_with(|k| k.limits = limits);
        let (_dir, cache) = stored();
        let first = boot(Limits::latency_ms(5.0));
        cache.store(&first, &decision("w64-d4")).unwrap();
        assert_eq!(boot(Limits::latency_ms(5.0)), first);
        assert_eq!(
            hit(&cache, &boot(Limits::latency_ms(5.0))),
            Some(decision("w64-d4"))
        );
        // Another fraction, or bytes whose bits equal the fraction's, is
        // another memory limit.
        for memory in [
            MemoryLimit::FractionOfAvailable(0.25),
            MemoryLimit::Bytes(0.5f64.to_bits()),
        ] {
            let mut limits = Limits::latency_ms(5.0);
            limits.memory = memory;
            assert_eq!(
                boot(limits).differences(&first).collect::<Vec<_>>(),
                [KeyField::MemoryLimit],
                "{memory:?}"
            );
        }
    }

    #[test]
    fn missing_or_empty_files_are_absent() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(&dir);
        assert!(matches!(
            cache.load::<Decision>(&key()),
            Lookup::Miss(Miss::Absent)
        ));
        // Only stamps recorded, no decision yet.
        let file = dir.path().join("graph.onnx");
        fs::write(&file, b"graph").unwrap();
        cache
            .record_verified(&[FileStamp::of(&file, Sha256([1; 32])).unwrap()])
            .unwrap();
        assert!(matches!(
            cache.load::<Decision>(&key()),
            Lookup::Miss(Miss::Absent)
        ));
    }

    #[test]
    fn truncated_garbled_or_longer_files_are_corrupt() {
        let (_dir, cache) = stored();
        let bytes = fs::read(cache.path()).unwrap();
        for len in 0..bytes.len() {
            fs::write(cache.path(), &bytes[..len]).unwrap();
            let lookup = cache.load::<Decision>(&key());
            assert!(
                matches!(lookup, Lookup::Miss(Miss::Corrupt(_))),
                "{len}: {lookup:?}"
            );
        }
        fs::write(cache.path(), [FORMAT_VERSION as u8, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(
            cache.load::<Decision>(&key()),
            Lookup::Miss(Miss::Corrupt(_))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        fs::write(cache.path(), &trailing).unwrap();
        assert!(matches!(
            cache.load::<Decision>(&key()),
            Lookup::Miss(Miss::Corrupt(_))
        ));
    }

    #[test]
    fn a_decision_of_another_type_is_corrupt() {
        let (_dir, cache) = stored();
        assert!(matches!(
            cache.load::<(u64, u64, u64)>(&key()),
            Lookup::Miss(Miss::Corrupt(_))
        ));
        // A shorter type that decodes from a prefix leaves bytes over.
        assert!(matches!(
            cache.load::<String>(&key()),
            Lookup::Miss(Miss::Corrupt(_))
        ));
    }

    #[test]
    fn other_formats_are_named() {
        let (_dir, cache) = stored();
        // Format 1: one (version, key, decision).
        let bytes = postcard::to_stdvec(&(1u32, "device", decision("w64-d4"))).unwrap();
        fs::write(cache.path(), bytes).unwrap();
        let lookup = cache.load::<Decision>(&key());
        assert!(
            matches!(lookup, Lookup::Miss(Miss::OtherFormat { version: 1 })),
            "{lookup:?}"
        );
    }

    #[test]
    fn a_directory_in_the_way_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        assert!(matches!(
            cache.load::<Decision>(&key()),
            Lookup::Miss(Miss::Unreadable(_))
        ));
    }

    #[test]
    fn a_store_over_a_corrupt_file_replaces_it() {
        let (_dir, cache) = stored();
        fs::write(cache.path(), b"garbage").unwrap();
        cache.store(&key(), &decision("w64-d4")).unwrap();
        assert_eq!(hit(&cache, &key()), Some(decision("w64-d4")));
    }

    #[test]
    fn unwritable_locations_are_errors_naming_the_path() {
        // Permission bits do not stop root: a file where the directory should
        // be stops everyone.
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let cache = Cache::at(blocker.join(FILE_NAME));
        let err = cache.store(&key(), &decision("w64-d4")).unwrap_err();
        assert!(matches!(err, CacheError::Write { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
        let err = cache.record_verified(&[]).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
        let err = cache.lock().unwrap_err();
        assert!(matches!(err, CacheError::Lock { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary_file() {
        // The temporary file is written, the rename onto a non-empty
        // directory fails (for root too).
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(&dir);
        fs::create_dir(cache.path()).unwrap();
        fs::write(cache.path().join("occupant"), b"").unwrap();
        let err = cache.store(&key(), &decision("w64-d4")).unwrap_err();
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        assert_eq!(files_in(dir.path()), [FILE_NAME]);
    }

    #[test]
    fn default_path_precedence() {
        let path = |vars: &[(&str, &str)]| {
            default_path_from(|name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| OsString::from(v))
            })
        };
        let file = |dir: &str| Some(Path::new(dir).join(FILE_NAME));
        let all = [
            ("TAILOR_CACHE_DIR", "/t"),
            ("CACHE_DIRECTORY", "/var/cache/svc:/var/cache/other"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(path(&all), file("/t"));
        assert_eq!(path(&all[1..]), file("/var/cache/svc"));
        assert_eq!(path(&all[2..]), file("/x/tailor"));
        assert_eq!(path(&all[3..]), file("/home/u/.cache/tailor"));
        assert_eq!(path(&[]), None);
        // Empty values count as unset, so does a relative XDG_CACHE_HOME.
        let empty = [
            ("TAILOR_CACHE_DIR", ""),
            ("CACHE_DIRECTORY", ""),
            ("XDG_CACHE_HOME", "relative"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(path(&empty), file("/home/u/.cache/tailor"));
        assert_eq!(path(&empty[..3]), None);
    }

    #[test]
    fn a_second_lock_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        // The directory does not exist yet: lock() creates it.
        let cache = Cache::at(dir.path().join("new/decisions.postcard"));
        let first = cache.lock().unwrap();
        let (acquired, second) = mpsc::channel();
        let waiter = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let guard = cache.lock().unwrap();
                acquired.send(()).unwrap();
                drop(guard);
            })
        };
        assert_eq!(
            second.recv_timeout(Duration::from_millis(300)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "the second lock was taken while the first was held"
        );
        drop(first);
        second
            .recv_timeout(Duration::from_secs(60))
            .expect("the second lock is taken once the first is dropped");
        waiter.join().unwrap();
    }

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

    #[test]
    fn stamps_merge_by_path_and_share_the_file_with_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(&dir);
        let file = |name: &str| {
            let path = dir.path().join(name);
            fs::write(&path, name).unwrap();
            path
        };
        let (a, b, c) = (file("a.onnx"), file("b.onnx"), file("c.onnx"));
        let stamp = |path: &Path, byte| FileStamp::of(path, Sha256([byte; 32])).unwrap();

        cache
            .record_verified(&[stamp(&a, 1), stamp(&b, 2)])
            .unwrap();
        cache.store(&key(), &decision("w64-d4")).unwrap();
        cache.record_verified(&[stamp(&a, 3)]).unwrap();
        assert_eq!(cache.verified(), [stamp(&b, 2), stamp(&a, 3)]);
        assert_eq!(hit(&cache, &key()), Some(decision("w64-d4")));
        // A later decision keeps the stamps.
        let other = key_with(|k| k.threads = 1);
        cache.store(&other, &decision("w32-d2")).unwrap();
        assert_eq!(decoded(&cache).2, [stamp(&b, 2), stamp(&a, 3)]);

        // Stamps of files gone since are dropped on the next record.
        fs::remove_file(&b).unwrap();
        cache.record_verified(&[stamp(&c, 4)]).unwrap();
        assert_eq!(cache.verified(), [stamp(&a, 3), stamp(&c, 4)]);
        assert_eq!(hit(&cache, &other), Some(decision("w32-d2")));
    }

    #[test]
    fn verified_is_empty_for_unusable_files() {
        let (_dir, cache) = stored();
        fs::write(cache.path(), b"garbage").unwrap();
        assert_eq!(cache.verified(), []);
    }
}
