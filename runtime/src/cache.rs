//! Decision cache: the last selection for this device, bundle and limits,
//! so the next boot skips the measurements.
//!
//! One postcard file holds `(format, key, decision)`. Any change of the key
//! (device, power mode, engine, bundle, limits, threads) makes the cached
//! decision stale; an unreadable or corrupt file is a miss too, never an
//! error that stops a boot. Writes go to a temporary file in the same
//! directory, then rename over the old one, so a crash never leaves half a
//! file.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::manifest::Sha256;
use crate::policy::Limits;

/// The layout of the cache file this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Where a bundle keeps its own decision, relative to the bundle directory.
pub const IN_BUNDLE: &str = ".tailor-cache/decision.postcard";

/// Everything a selection depends on: a decision is reused only for an
/// identical key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    /// Identifies the device (model, SoC, memory).
    pub device: String,
    /// The power mode the device ran in (e.g. `nvpmodel` mode), if it has any.
    pub power_mode: Option<String>,
    /// The engine and execution provider, e.g. `tract` or
    /// `ort:CUDAExecutionProvider`.
    pub engine: String,
    /// sha256 of the bundle's `manifest.json`.
    pub bundle: Sha256,
    /// The limits the selection met.
    pub limits: Limits,
    /// The latency percentile the limit applies to, e.g. 90.
    pub percentile: f32,
    /// Threads the engine ran with.
    pub threads: u32,
}

/// A part of the [`CacheKey`], to say which one changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    Device,
    PowerMode,
    Engine,
    Bundle,
    LatencyLimit,
    Percentile,
    Batch,
    MemoryLimit,
    MinQuality,
    Threads,
}

impl fmt::Display for KeyField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyField::Device => "device fingerprint",
            KeyField::PowerMode => "power mode",
            KeyField::Engine => "engine",
            KeyField::Bundle => "bundle (manifest.json sha256)",
            KeyField::LatencyLimit => "latency limit",
            KeyField::Percentile => "latency percentile",
            KeyField::Batch => "batch size",
            KeyField::MemoryLimit => "memory limit",
            KeyField::MinQuality => "minimum quality",
            KeyField::Threads => "thread count",
        })
    }
}

impl CacheKey {
    /// The first field in which `self` differs from `stored`.
    fn changed_field(&self, stored: &CacheKey) -> Option<KeyField> {
        let (now, then) = (&self.limits, &stored.limits);
        let same_f32 = |a: f32, b: f32| a.to_bits() == b.to_bits();
        [
            (self.device == stored.device, KeyField::Device),
            (self.power_mode == stored.power_mode, KeyField::PowerMode),
            (self.engine == stored.engine, KeyField::Engine),
            (self.bundle == stored.bundle, KeyField::Bundle),
            (
                same_f32(now.latency_ms, then.latency_ms),
                KeyField::LatencyLimit,
            ),
            (
                same_f32(self.percentile, stored.percentile),
                KeyField::Percentile,
            ),
            (now.batch == then.batch, KeyField::Batch),
            (now.memory_bytes == then.memory_bytes, KeyField::MemoryLimit),
            (
                now.min_quality.map(f32::to_bits) == then.min_quality.map(f32::to_bits),
                KeyField::MinQuality,
            ),
            (self.threads == stored.threads, KeyField::Threads),
        ]
        .into_iter()
        .find_map(|(same, field)| (!same).then_some(field))
    }
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
    /// A decision was cached for a different key.
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

/// Why a decision could not be cached.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot write the decision cache {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot encode the decision for the cache: {0}")]
    Encode(postcard::Error),
}

/// The decision cache file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    path: PathBuf,
}

impl Cache {
    /// A cache kept in the file at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Cache { path: path.into() }
    }

    /// The cache kept inside a bundle directory, at [`IN_BUNDLE`].
    pub fn in_bundle(bundle_dir: &Path) -> Self {
        Cache::at(bundle_dir.join(IN_BUNDLE))
    }

    /// The file the cache lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decision cached for `key`, or why there is none.
    pub fn load<T: DeserializeOwned>(&self, key: &CacheKey) -> Lookup<T> {
        match self.read(key) {
            Ok(value) => Lookup::Hit(value),
            Err(miss) => Lookup::Miss(miss),
        }
    }

    fn read<T: DeserializeOwned>(&self, key: &CacheKey) -> Result<T, Miss> {
        let bytes = fs::read(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Miss::Absent,
            _ => Miss::Unreadable(e),
        })?;
        let (version, _) = postcard::take_from_bytes::<u32>(&bytes).map_err(Miss::Corrupt)?;
        if version != FORMAT_VERSION {
            return Err(Miss::OtherFormat { version });
        }
        let ((_, stored, value), rest): ((u32, CacheKey, T), _) =
            postcard::take_from_bytes(&bytes).map_err(Miss::Corrupt)?;
        if !rest.is_empty() {
            return Err(Miss::Corrupt(postcard::Error::DeserializeBadEncoding));
        }
        match key.changed_field(&stored) {
            Some(field) => Err(Miss::KeyChanged(field)),
            None => Ok(value),
        }
    }

    /// Caches `value` as the decision for `key`, replacing any other.
    pub fn store<T: Serialize>(&self, key: &CacheKey, value: &T) -> Result<(), CacheError> {
        let bytes =
            postcard::to_stdvec(&(FORMAT_VERSION, key, value)).map_err(CacheError::Encode)?;
        self.replace_with(&bytes)
            .map_err(|source| CacheError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Writes a sibling temporary file, then renames it over the cache.
    fn replace_with(&self, bytes: &[u8]) -> io::Result<()> {
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(
            ".{}-{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = dir.join(name);
        let written = fs::File::create(&temp).and_then(|mut file| {
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
    use super::*;
    use crate::policy::Measurement;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Decision {
        subnet: String,
        measurement: Measurement,
    }

    fn key() -> CacheKey {
        CacheKey {
            device: "jetson-orin-nano-8gb".into(),
            power_mode: Some("15W".into()),
            engine: "ort:CUDAExecutionProvider".into(),
            bundle: Sha256([3; 32]),
            limits: Limits {
                latency_ms: 25.0,
                memory_bytes: 1 << 30,
                min_quality: Some(80.0),
                batch: 1,
            },
            percentile: 90.0,
            threads: 4,
        }
    }

    fn decision() -> Decision {
        Decision {
            subnet: "w640-d18".into(),
            measurement: Measurement {
                latency_ms: 21.5,
                memory_bytes: 700 << 20,
                spread: 0.0,
            },
        }
    }

    fn stored() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::in_bundle(dir.path());
        cache.store(&key(), &decision()).unwrap();
        (dir, cache)
    }

    #[test]
    fn stored_decision_is_a_hit() {
        let (dir, cache) = stored();
        assert_eq!(
            cache.path(),
            dir.path().join(".tailor-cache/decision.postcard")
        );
        assert!(matches!(cache.load::<Decision>(&key()), Lookup::Hit(d) if d == decision()));
    }

    #[test]
    fn missing_file_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("decision.postcard"));
        assert!(matches!(
            cache.load::<Decision>(&key()),
            Lookup::Miss(Miss::Absent)
        ));
    }

    #[test]
    fn each_key_field_invalidates() {
        let (_dir, cache) = stored();
        type Change = (KeyField, fn(&mut CacheKey));
        let changes: [Change; 10] = [
            (KeyField::Device, |k| k.device.push_str("-rev2")),
            (KeyField::PowerMode, |k| k.power_mode = None),
            (KeyField::Engine, |k| k.engine = "tract".into()),
            (KeyField::Bundle, |k| k.bundle.0[31] ^= 1),
            (KeyField::LatencyLimit, |k| k.limits.latency_ms = 30.0),
            (KeyField::Percentile, |k| k.percentile = 99.0),
            (KeyField::Batch, |k| k.limits.batch = 8),
            (KeyField::MemoryLimit, |k| k.limits.memory_bytes -= 1),
            (KeyField::MinQuality, |k| k.limits.min_quality = None),
            (KeyField::Threads, |k| k.threads = 2),
        ];
        for (field, change) in changes {
            let mut changed = key();
            change(&mut changed);
            match cache.load::<Decision>(&changed) {
                Lookup::Miss(miss @ Miss::KeyChanged(f)) => {
                    assert_eq!(f, field);
                    assert!(miss.to_string().contains(&field.to_string()), "{miss}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_or_garbled_files_are_misses() {
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
    }

    #[test]
    fn other_formats_are_named() {
        let (_dir, cache) = stored();
        let bytes = postcard::to_stdvec(&(FORMAT_VERSION + 1, key(), decision())).unwrap();
        fs::write(cache.path(), bytes).unwrap();
        let lookup = cache.load::<Decision>(&key());
        assert!(
            matches!(lookup, Lookup::Miss(Miss::OtherFormat { version }) if version == FORMAT_VERSION + 1),
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
    fn store_replaces_the_decision_and_leaves_no_temporary_files() {
        let (_dir, cache) = stored();
        let mut other = key();
        other.threads = 8;
        let newer = Decision {
            subnet: "w384-d12".into(),
            ..decision()
        };
        cache.store(&other, &newer).unwrap();
        assert!(matches!(cache.load::<Decision>(&other), Lookup::Hit(d) if d == newer));
        assert!(matches!(
            cache.load::<Decision>(&key()),
            Lookup::Miss(Miss::KeyChanged(KeyField::Threads))
        ));
        let files: Vec<_> = fs::read_dir(cache.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["decision.postcard"]);
    }

    #[test]
    fn unwritable_location_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let cache = Cache::at(blocker.join("decision.postcard"));
        let err = cache.store(&key(), &decision()).unwrap_err();
        assert!(matches!(err, CacheError::Write { .. }));
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
