//! Reusing a decision: the cache key of a selection, the cached decision
//! verified and loaded again, and a fresh decision stored.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    available_cpus, Chosen, EngineChoice, Limits, MemoryLimit, Reuse, Runtime, SelectError, Setup,
    Verify, MB,
};
use crate::bundle::BundleError;
use crate::cache::{self, Cache, Lookup};
use crate::engine::{EngineInfo, EngineKind, Session};
use crate::manifest::{PrecisionKind, Sha256, Subnet};
use crate::policy;
use crate::probe::{Load, LoadReading};
use crate::profile::{MeasureOptions, Measurement};

/// What became of the decision cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheOutcome {
    /// The decision came from the cache.
    Hit,
    /// Selected afresh and cached.
    Miss,
    /// No cache was used.
    Disabled,
    /// Selected afresh; the cache could not be written (see the notes).
    Unwritable,
    /// A decision shipped in the pack, its winner measured alone, and cached.
    Shipped,
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
    /// The thread counts the selection chose among: the one `--threads`
    /// fixed, or every count it tried (largest first), so a decision made
    /// choosing is not reused when the user fixes the count, nor the
    /// reverse, nor on a device whose usable CPUs changed.
    pub threads: Vec<u32>,
    /// The number formats the selection chose among, of those the bundle
    /// has: a decision among fp32 only is not reused when int8 may compete.
    pub precisions: Vec<PrecisionKind>,
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
    Precisions,
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
            KeyField::Precisions => "precisions (--precision)",
            KeyField::Measuring => "measuring options",
        })
    }
}

impl CacheKey {
    /// The nearest of `stored` (oldest first) to `self`: same device and
    /// bundle first, then fewest differences, then newest; with the fields
    /// in which it differs.
    pub(super) fn nearest<'a>(
        &self,
        stored: impl DoubleEndedIterator<Item = &'a CacheKey>,
    ) -> Option<(&'a CacheKey, Vec<KeyField>)> {
        stored
            .rev()
            .map(|other| {
                let changed: Vec<KeyField> = self.differences(other).collect();
                let elsewhere = changed
                    .iter()
                    .any(|f| matches!(f, KeyField::Device | KeyField::Bundle));
                ((elsewhere, changed.len()), (other, changed))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, nearest)| nearest)
    }

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
            (self.precisions == other.precisions, KeyField::Precisions),
            (self.measuring == other.measuring, KeyField::Measuring),
        ]
        .into_iter()
        .filter_map(|(same, field)| (!same).then_some(field))
    }
}

impl cache::Key for CacheKey {
    type Field = KeyField;

    /// The first changed field of the [nearest](CacheKey::nearest) key.
    fn nearest_change<'a>(
        &self,
        stored: impl DoubleEndedIterator<Item = &'a CacheKey>,
    ) -> Option<KeyField> {
        self.nearest(stored)
            .and_then(|(_, changed)| changed.first().copied())
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &CacheKey) -> bool {
        self.differences(other).next().is_none()
    }
}

impl Eq for CacheKey {}

/// The decision that is cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Decision {
    pub(super) id: String,
    /// The engine that measured it, and serves it.
    pub(super) engine: EngineKind,
    /// The engine's intra-op threads it was measured with, and serves with.
    pub(super) threads: usize,
    /// The confirmation's measurement, without its samples.
    measured: Measurement,
    candidates_measured: u32,
    noisy: bool,
    /// The load it was measured beside.
    load: Load,
}

impl Decision {
    /// The engine of `engines` it was measured with, or why it cannot serve.
    pub(super) fn engine_in<'e>(
        &self,
        engines: &'e [EngineInfo],
    ) -> Result<&'e EngineInfo, String> {
        engines
            .iter()
            .find(|e| e.kind == self.engine)
            .ok_or_else(|| format!("its engine, {}, is not in use", self.engine))
    }
}

impl Runtime {
    /// The decision cached for this device, engines, bundle and `limits`,
    /// if it still holds; else a shipped decision's winner confirmed, or a
    /// fresh search's, cached. `bounds` are
    /// `limits` resolved here; `selection_ms` is left for the caller.
    pub(super) fn select_through_cache(
        &self,
        limits: &Limits,
        bounds: &policy::Bounds,
        engines: &[EngineInfo],
        reuse: Reuse,
        before: &LoadReading,
    ) -> Result<Chosen, SelectError> {
        let threads = self.thread_counts();
        let precisions = self.precisions();
        let key = self.cache_key(limits, engines, &threads);
        let mut notes = Vec::new();
        let cache = self.options.cache.as_ref().map(Cache::at);
        // Held until the decision is stored: a second runtime starting at
        // once waits, then finds this one's decision.
        let lock = cache.as_ref().map(Cache::lock);
        if let Some(Err(e)) = &lock {
            notes.push(format!("{e}: selecting without the cache's lock"));
        }
        if let Some(cache) = &cache {
            if self.options.verify != Verify::Always {
                self.bundle.trust(&cache.verified());
            }
            let cached = match reuse {
                Reuse::Cached => cache.load::<Decision>(&key),
                Reuse::Never => Lookup::Miss(cache::Miss::Absent),
            };
            match cached {
                Lookup::Hit(decision) => match self.reuse(&decision, bounds, engines) {
                    Ok((subnet, setup, session)) => {
                        return Ok(Chosen {
                            id: decision.id,
                            width: subnet.width,
                            depth: subnet.depth,
                            precision: subnet.precision.kind(),
                            measured: decision.measured,
                            limits: *bounds,
                            percentile: limits.percentile,
                            cache: CacheOutcome::Hit,
                            engine: setup.engine.to_string(),
                            threads: setup.threads,
                            engine_trials: Vec::new(),
                            trials: Vec::new(),
                            confirmed: None,
                            noisy: decision.noisy,
                            load: decision.load,
                            notes,
                            selection_ms: 0.0,
                            session,
                        })
                    }
                    Err(why) => notes.push(format!(
                        "the cached choice {} cannot be used ({why}): selecting afresh",
                        decision.id
                    )),
                },
                Lookup::Miss(_) => {}
            }
        }

        // A decision shipped in the pack for this very key is confirmed
        // first; the cache disabled, the search decides afresh.
        let shipped = cache.as_ref().and_then(|_| {
            self.confirm_shipped(&key, bounds, limits.percentile, engines, &mut notes)
        });
        let from_pack = shipped.is_some();
        let mut decided = match shipped {
            Some(decided) => decided,
            None => self.search(bounds, limits.percentile, engines, &threads, &precisions)?,
        };
        let manifest = self.bundle.manifest();
        if let Err(e) = self.verify_chosen(&manifest.subnets[decided.index]) {
            // A stamp hid damage to the winner's files: known now, they are
            // hashed again as a candidate's, which fails there.
            notes.push(format!("{e}: selecting again"));
            decided = self.search(bounds, limits.percentile, engines, &threads, &precisions)?;
            self.verify_chosen(&manifest.subnets[decided.index])?;
        }
        let load = before.until(&LoadReading::now(&self.options.sysroot));
        notes.append(&mut decided.notes);
        let subnet = &manifest.subnets[decided.index];
        let session = self
            .load(
                &self.bundle.graph_path(subnet),
                bounds.batch,
                &decided.setup,
            )
            .map_err(|source| SelectError::Load {
                id: subnet.id.to_owned(),
                source,
            })?;
        if decided.noisy {
            notes.push(format!(
                "{} measured noisy (cv {:.2}) even after repeating: the device was busy or throttling; \
                 the decision is cached marked noisy, select again on a quiet device with --no-cache",
                subnet.id, decided.measured.cv
            ));
        }
        if load.is_busy(available_cpus()) {
            notes.push(format!(
                "the device was busy while selecting ({load}): the pick may be smaller than a quiet \
                 device allows; the service selects again after `reselect_after_boot_s` if set"
            ));
        }
        let outcome = match &cache {
            None => CacheOutcome::Disabled,
            Some(cache) => {
                let decision = Decision {
                    id: subnet.id.to_owned(),
                    engine: decided.setup.engine.kind,
                    threads: decided.setup.threads,
                    measured: Measurement {
                        samples_ms: Vec::new(),
                        ..decided.measured.clone()
                    },
                    candidates_measured: decided.trials.len() as u32,
                    noisy: decided.noisy,
                    load,
                };
                match cache.store(&key, &decision, &self.bundle.stamps()) {
                    Ok(()) if from_pack => CacheOutcome::Shipped,
                    Ok(()) => CacheOutcome::Miss,
                    Err(e) => {
                        notes.push(format!("decision not cached: {e}"));
                        CacheOutcome::Unwritable
                    }
                }
            }
        };
        drop(lock);
        Ok(Chosen {
            id: subnet.id.to_owned(),
            width: subnet.width,
            depth: subnet.depth,
            precision: subnet.precision.kind(),
            measured: decided.measured,
            limits: *bounds,
            percentile: limits.percentile,
            cache: outcome,
            engine: decided.setup.engine.to_string(),
            threads: decided.setup.threads,
            engine_trials: decided.engine_trials,
            trials: decided.trials,
            confirmed: Some(decided.confirmed),
            noisy: decided.noisy,
            load,
            notes,
            selection_ms: 0.0,
            session,
        })
    }

    /// The cached winner, verified and loaded with its engine, if it still
    /// fits the memory resolved now; else why not.
    fn reuse(
        &self,
        decision: &Decision,
        limits: &policy::Bounds,
        engines: &[EngineInfo],
    ) -> Result<(Subnet<'_>, Setup, Box<dyn Session>), String> {
        let setup = Setup {
            engine: decision.engine_in(engines)?.clone(),
            threads: decision.threads,
        };
        let subnet = self
            .bundle
            .subnet(&decision.id)
            .map_err(|e| e.to_string())?;
        let peak = (decision.measured.peak_mb * MB) as u64;
        if peak > limits.memory_bytes {
            return Err(format!(
                "it peaked at {:.0} MB, over the {:.0} MB allowed now",
                decision.measured.peak_mb,
                limits.memory_bytes as f64 / MB
            ));
        }
        self.verify_chosen(&subnet).map_err(|e| e.to_string())?;
        let session = self
            .load(&self.bundle.graph_path(&subnet), limits.batch, &setup)
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
        Ok((subnet, setup, session))
    }

    /// Checks the files of the sub-network about to be served: hashed in
    /// full unless `--verify changed` trusts unchanged stamps.
    fn verify_chosen(&self, subnet: &Subnet<'_>) -> Result<(), BundleError> {
        match self.options.verify {
            Verify::Changed => self.bundle.verify(subnet),
            Verify::Chosen | Verify::Always => self.bundle.verify_in_full(subnet),
        }
    }

    /// `engines` keyed by name and version: `auto` is keyed by the engines
    /// it could choose from, so installing ONNX Runtime selects again.
    fn cache_key(&self, limits: &Limits, engines: &[EngineInfo], threads: &[usize]) -> CacheKey {
        let names: Vec<String> = engines.iter().map(EngineInfo::to_string).collect();
        let engine = match self.options.engine {
            EngineChoice::Auto => format!("auto: {}", names.join(" | ")),
            EngineChoice::Only(_) => names.join(""),
        };
        CacheKey {
            device: self.device.fingerprint(),
            power_mode: self.device.power_mode().map(str::to_owned),
            clocks: self.device.clock_state(),
            engine,
            tailor: env!("CARGO_PKG_VERSION").to_owned(),
            bundle: self.bundle.identity(),
            limits: *limits,
            threads: threads.iter().map(|&t| t as u32).collect(),
            precisions: self.precisions().present_in(&self.bundle.manifest()),
            measuring: self.options.measure.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Miss;
    use crate::profile::Percentile;

    fn key() -> CacheKey {
        CacheKey {
            device: "jetson-orin-nano-8gb".into(),
            power_mode: Some("15W".into()),
            clocks: Some("schedutil".into()),
            engine: "ort 1.31.1 cuda".into(),
            tailor: "0.1.0".into(),
            bundle: Sha256([3; 32]),
            limits: Limits::latency_ms(25.0).memory_mb(900).min_quality(80.0),
            threads: vec![4],
            precisions: vec![PrecisionKind::Fp32, PrecisionKind::Int8],
            measuring: MeasureOptions::default(),
        }
    }

    fn key_with(change: impl FnOnce(&mut CacheKey)) -> CacheKey {
        let mut k = key();
        change(&mut k);
        k
    }

    /// A decision, as far as the key's tests care: the winner's id.
    fn decision(id: &str) -> String {
        id.to_owned()
    }

    /// A cache in a temporary directory holding one decision under `key()`.
    fn stored() -> (tempfile::TempDir, Cache<CacheKey>) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join(cache::FILE_NAME));
        cache.store(&key(), &decision("w640-d18"), &[]).unwrap();
        (dir, cache)
    }

    fn hit(cache: &Cache<CacheKey>, key: &CacheKey) -> Option<String> {
        match cache.load(key) {
            Lookup::Hit(d) => Some(d),
            Lookup::Miss(_) => None,
        }
    }

    #[test]
    fn each_key_field_is_named_when_it_changes() {
        let (_dir, cache) = stored();
        type Change = (KeyField, fn(&mut CacheKey));
        let changes: [Change; 14] = [
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
            (KeyField::Threads, |k| k.threads = vec![4, 2, 1]),
            (KeyField::Precisions, |k| {
                k.precisions.pop();
            }),
            (KeyField::Measuring, |k| k.measuring.min_runs += 1),
        ];
        for (field, change) in changes {
            match cache.load::<String>(&key_with(change)) {
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
            k.threads = vec![2];
        });
        cache.store(&elsewhere, &decision("w192-d6"), &[]).unwrap();
        let wanted = key_with(|k| k.threads = vec![2]);
        assert!(matches!(
            cache.load::<String>(&wanted),
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
        cache.store(&first, &decision("w64-d4"), &[]).unwrap();
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
}
