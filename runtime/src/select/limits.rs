//! The user's limits, as written: what `runtime select --latency-ms 25
//! --memory-mb 900` asks for, before this device resolves them to the
//! policy's [`Bounds`](crate::policy::Bounds).

use serde::{Deserialize, Serialize};

use crate::policy;
use crate::probe::DeviceInfo;
use crate::profile::Percentile;

/// A memory limit: absolute, or a share of what the device has available.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MemoryLimit {
    Bytes(u64),
    /// A fraction in (0, 1] of the usable memory the probe reports.
    FractionOfAvailable(f64),
}

/// What the user allows: `Limits::latency_ms(25.0).memory_mb(900)`, as
/// written (a memory fraction stays a fraction, so it can key the cache).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub latency_ms: f64,
    pub percentile: Percentile,
    pub batch: u32,
    pub memory: MemoryLimit,
    pub min_quality: Option<f32>,
}

/// Why the user's limits cannot be resolved on this device.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("invalid limits: {0}")]
    Invalid(String),
    #[error("cannot tell how much memory is available here: give the memory limit in MB")]
    UnknownMemory,
}

impl Limits {
    /// A latency limit at p90 for batch 1, with half the available memory.
    pub fn latency_ms(ms: impl Into<f64>) -> Limits {
        Limits {
            latency_ms: ms.into(),
            percentile: Percentile::P90,
            batch: 1,
            memory: MemoryLimit::FractionOfAvailable(0.5),
            min_quality: None,
        }
    }

    pub fn memory_mb(self, mb: impl Into<f64>) -> Limits {
        Limits {
            memory: MemoryLimit::Bytes((mb.into() * 1024.0 * 1024.0) as u64),
            ..self
        }
    }

    pub fn memory_fraction(self, fraction: f64) -> Limits {
        Limits {
            memory: MemoryLimit::FractionOfAvailable(fraction),
            ..self
        }
    }

    pub fn percentile(self, percentile: Percentile) -> Limits {
        Limits { percentile, ..self }
    }

    pub fn batch(self, batch: u32) -> Limits {
        Limits { batch, ..self }
    }

    pub fn min_quality(self, q: f32) -> Limits {
        Limits {
            min_quality: Some(q),
            ..self
        }
    }

    /// The policy's bounds on this device.
    pub fn resolve(&self, device: &DeviceInfo) -> Result<policy::Bounds, LimitsError> {
        let memory_bytes = match self.memory {
            MemoryLimit::Bytes(b) => b,
            MemoryLimit::FractionOfAvailable(f) if f > 0.0 && f <= 1.0 => {
                let usable = device
                    .usable_memory_bytes()
                    .ok_or(LimitsError::UnknownMemory)?;
                (usable as f64 * f) as u64
            }
            MemoryLimit::FractionOfAvailable(f) => {
                return Err(LimitsError::Invalid(format!(
                    "memory fraction {f} is not in (0, 1]"
                )))
            }
        };
        let bounds = policy::Bounds {
            latency_ms: self.latency_ms as f32,
            memory_bytes,
            min_quality: self.min_quality,
            batch: self.batch,
        };
        // The policy validates too; checking here names the user's words.
        if !(bounds.latency_ms.is_finite() && self.latency_ms > 0.0) {
            return Err(LimitsError::Invalid(format!(
                "latency limit {:?} ms is not a latency: give a positive number of ms (at most 3.4e38)",
                self.latency_ms
            )));
        }
        if memory_bytes == 0 {
            return Err(LimitsError::Invalid("memory limit must be positive".into()));
        }
        if self.batch == 0 {
            return Err(LimitsError::Invalid("batch must be at least 1".into()));
        }
        Ok(bounds)
    }
}
