//! Decisions shipped in a pack, so a fleet of identical boards boots warm: a
//! reference board's cached decisions (`runtime cache export`) travel in the
//! pack (`exporter pack --decisions`), and on a board's first boot a shipped
//! decision made under this board's very key has its winner measured alone,
//! under the normal rules, instead of a whole search. A winner that does not
//! hold here falls back to the search; a board whose key matches none
//! ignores them and says which part of the key differs.
//!
//! The file is postcard of `(MAGIC, FORMAT_VERSION, [(key, decision)])`:
//! postcard, not JSON, because a key compares its floats by their bits and
//! postcard keeps them exactly, and because it is the cache's own encoding
//! of the same types. TensorRT's caches, when shipped, sit beside the file in
//! [`TENSORRT_DIR`] and seed the board's own before the winner is measured.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::reuse::{CacheKey, Decision, KeyField};
use super::search::{Decided, Ended, Search};
use super::{MemoryLimit, Runtime, MB};
use crate::cache::{self, Cache};
use crate::engine::EngineInfo;
use crate::fs::StagedFile;
use crate::manifest::Sha256;
use crate::policy::{self, Candidate, Objective};
use crate::profile::Percentile;

/// The first bytes of a decisions file, so a cache file or anything else
/// handed over by mistake is refused by name.
pub const MAGIC: [u8; 16] = *b"tailor-decisions";

/// The layout of the decisions file this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The directory beside a shipped decisions file that holds TensorRT's
/// engine and timing caches, laid out as the runtime keeps its own.
pub const TENSORRT_DIR: &str = "tensorrt";

/// Decisions exported from a reference board's cache, each with its key.
#[derive(Debug, Clone)]
pub struct ShippedDecisions {
    entries: Vec<(CacheKey, Decision)>,
}

/// Why decisions could not be exported, read or written.
#[derive(Debug, thiserror::Error)]
pub enum ShippedError {
    #[error("nothing to export from the decision cache {}: {why}", path.display())]
    NothingCached { path: PathBuf, why: String },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a decisions file written by `runtime cache export`", path.display())]
    NotDecisions { path: PathBuf },
    #[error("{} holds decisions in format {version}; this build reads format {FORMAT_VERSION}", path.display())]
    OtherFormat { path: PathBuf, version: u32 },
    #[error("{} is truncated or garbled: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: postcard::Error,
    },
    #[error("{} holds no decision", path.display())]
    Empty { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

impl ShippedDecisions {
    /// Every decision in the cache file at `path`.
    pub fn from_cache(path: &Path) -> Result<ShippedDecisions, ShippedError> {
        let entries = Cache::<CacheKey>::at(path).decisions().map_err(|miss| {
            ShippedError::NothingCached {
                path: path.to_owned(),
                why: miss.to_string(),
            }
        })?;
        Ok(ShippedDecisions { entries })
    }

    /// Reads a file [`ShippedDecisions::write`] wrote.
    pub fn read(path: &Path) -> Result<ShippedDecisions, ShippedError> {
        let bytes = fs::read(path).map_err(|source| ShippedError::Read {
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |source| ShippedError::Corrupt {
            path: path.to_owned(),
            source,
        };
        match postcard::take_from_bytes::<[u8; 16]>(&bytes) {
            Ok((magic, _)) if magic == MAGIC => {}
            _ => {
                return Err(ShippedError::NotDecisions {
                    path: path.to_owned(),
                })
            }
        }
        let ((_, version), _) =
            postcard::take_from_bytes::<([u8; 16], u32)>(&bytes).map_err(corrupt)?;
        if version != FORMAT_VERSION {
            return Err(ShippedError::OtherFormat {
                path: path.to_owned(),
                version,
            });
        }
        let (_, _, entries): ([u8; 16], u32, Vec<(CacheKey, Decision)>) =
            cache::decode_exact(&bytes).map_err(corrupt)?;
        if entries.is_empty() {
            return Err(ShippedError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(ShippedDecisions { entries })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(&(MAGIC, FORMAT_VERSION, &self.entries))
            .expect("keys and decisions encode")
    }

    /// Writes the file whole or not at all (`crate::fs::write_atomic`).
    pub fn write(&self, path: &Path) -> Result<(), ShippedError> {
        crate::fs::write_atomic(path, &self.to_bytes()).map_err(|source| ShippedError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Each decision's key and winner, oldest first.
    pub fn winners(&self) -> impl Iterator<Item = (&CacheKey, &str)> {
        self.entries.iter().map(|(key, d)| (key, d.id.as_str()))
    }

    /// The decisions made with the bundle of identity `bundle`.
    pub fn for_bundle(&self, bundle: &Sha256) -> ShippedDecisions {
        ShippedDecisions {
            entries: self
                .entries
                .iter()
                .filter(|(key, _)| key.bundle == *bundle)
                .cloned()
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Why no decision serves `key`: the nearest shipped key, what it chose
    /// and each field in which it differs, with both values.
    fn mismatch(&self, key: &CacheKey) -> String {
        let nearest = key.nearest(self.entries.iter().map(|(k, _)| k));
        let Some((nearest, changed)) = nearest else {
            return "the file holds no decision".into();
        };
        let winner = self
            .winners()
            .find(|(k, _)| std::ptr::eq(*k, nearest))
            .map_or("", |(_, id)| id);
        let fields: Vec<String> = changed
            .iter()
            .map(|&field| {
                format!(
                    "the {field} (shipped {}, here {})",
                    value(nearest, field),
                    value(key, field)
                )
            })
            .collect();
        format!(
            "none of the {} was made under this board's key; the nearest, choosing {winner}, differs in {}",
            self.entries.len(),
            fields.join(", ")
        )
    }
}

/// A key's `field`, as a person reads it.
fn value(key: &CacheKey, field: KeyField) -> String {
    let limits = &key.limits;
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    match field {
        KeyField::Device => key.device.clone(),
        KeyField::PowerMode => or_none(&key.power_mode),
        KeyField::Clocks => or_none(&key.clocks),
        KeyField::Engine => key.engine.clone(),
        KeyField::Tailor => key.tailor.clone(),
        KeyField::Bundle => key.bundle.short().to_string(),
        KeyField::LatencyLimit => format!("{} ms", limits.latency_ms),
        KeyField::Percentile => format!("p{}", limits.percentile.value()),
        KeyField::Batch => limits.batch.to_string(),
        KeyField::MemoryLimit => match limits.memory {
            MemoryLimit::Bytes(b) => format!("{} MB", b as f64 / MB),
            MemoryLimit::FractionOfAvailable(f) => format!("{f} of the memory available"),
        },
        KeyField::MinQuality => limits.min_quality.map_or("none".into(), |q| q.to_string()),
        KeyField::Threads => {
            let counts: Vec<String> = key.threads.iter().map(u32::to_string).collect();
            counts.join(", ")
        }
        KeyField::Precisions => {
            let names: Vec<&str> = key.precisions.iter().map(|p| p.name()).collect();
            names.join(", ")
        }
        KeyField::Measuring => format!("{:?}", key.measuring),
    }
}

impl Runtime {
    /// On a cache miss: the shipped decision made under `key`, its winner
    /// measured alone by the normal rules; `None` to search as usual, with
    /// a note saying why.
    pub(super) fn confirm_shipped(
        &self,
        key: &CacheKey,
        bounds: &policy::Bounds,
        percentile: Percentile,
        engines: &[EngineInfo],
        notes: &mut Vec<String>,
    ) -> Option<Decided> {
        let path = self.options.shipped.as_deref()?;
        let shipped = match ShippedDecisions::read(path) {
            Ok(shipped) => shipped,
            Err(e) => {
                notes.push(format!("shipped decisions ignored: {e}"));
                return None;
            }
        };
        let Some((_, decision)) = shipped.entries.iter().find(|(k, _)| k == key) else {
            notes.push(format!(
                "shipped decisions in {} ignored: {}",
                path.display(),
                shipped.mismatch(key)
            ));
            return None;
        };
        if let (Some(dir), Some(cache)) = (path.parent(), &self.options.engine_options.cache_dir) {
            if let Err(e) = seed(&dir.join(TENSORRT_DIR), cache) {
                notes.push(format!(
                    "the shipped TensorRT caches were not copied to {}: {e}",
                    cache.display()
                ));
            }
        }
        match self.confirm_winner(decision, bounds, percentile, engines) {
            Ok(decided) => Some(decided),
            Err(why) => {
                notes.push(format!(
                    "the shipped decision, {}, does not hold here ({why}): searching as usual",
                    decision.id
                ));
                None
            }
        }
    }

    /// The normal search over a pool of the shipped winner alone.
    fn confirm_winner(
        &self,
        decision: &Decision,
        bounds: &policy::Bounds,
        percentile: Percentile,
        engines: &[EngineInfo],
    ) -> Result<Decided, String> {
        let engine = decision.engine_in(engines)?;
        let index = self
            .bundle
            .manifest()
            .subnets
            .iter()
            .position(|s| s.id == decision.id)
            .ok_or_else(|| "the bundle has no such sub-network".to_owned())?;
        let winner = Candidate::from(&self.bundle.manifest().subnets[index]);
        let mut search = Search::new(
            self,
            bounds,
            percentile,
            Objective::of([&winner]),
            std::slice::from_ref(engine),
            decision.threads,
        );
        match search.run(&[index], None) {
            Ok(ended @ Ended::Winner { .. }) => search.end(ended).map_err(|e| e.to_string()),
            Ok(Ended::NothingFits(why)) => Err(why),
            Ok(Ended::Stopped(e)) | Err(e) => Err(format!("{:#}", anyhow::Error::from(e))),
        }
    }
}

/// Copies the files under `from` that `to` lacks, each staged and renamed
/// (another runtime may be filling `to`); a missing `from` copies nothing.
fn seed(from: &Path, to: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            seed(&source, &dest)?;
        } else if kind.is_file() && !dest.exists() {
            fs::create_dir_all(to)?;
            let mut staged = StagedFile::create(&dest)?;
            io::copy(&mut File::open(&source)?, &mut staged)?;
            match staged.commit_new() {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
