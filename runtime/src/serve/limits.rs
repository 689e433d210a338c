//! Every bound `runtime serve` keeps on its clients, with its default: the
//! `[serve]` table of the runtime's config file. What clients can make the
//! server hold is at most `max_connections` × [`READ_BUFFER`] and
//! `max_in_flight` × (`max_body_mb` + a decoded image of `max_pixels`).

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::image;

/// The server's bounds; any key left out keeps its default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open connections; one more is answered 503 and closed. 512 fits
    /// systemd's default of 1024 file descriptors with room to spare.
    pub max_connections: NonZeroUsize,
    /// Embed requests between their head and their answer (reading the body,
    /// decoding, waiting for and running the engine); one more gets 503.
    pub max_in_flight: NonZeroUsize,
    /// Largest request body, in MiB (413 beyond; `--max-body-mb`).
    pub max_body_mb: u64,
    /// Largest decoded image, in pixels, refused from its header (413).
    pub max_pixels: u64,
    /// A request head must arrive within this, and a kept-alive connection
    /// idle this long is closed.
    #[serde(rename = "header_timeout_s", deserialize_with = "seconds")]
    pub header_timeout: Duration,
    /// A body must arrive within this of its head (408 beyond): a client
    /// trickling it cannot hold its slot for ever.
    #[serde(rename = "body_timeout_s", deserialize_with = "seconds")]
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: NonZeroUsize::new(512).expect("non-zero"),
            max_in_flight: NonZeroUsize::new(4).expect("non-zero"),
            max_body_mb: 32,
            max_pixels: image::MAX_PIXELS,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
        }
    }
}

impl Limits {
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_mb.saturating_mul(1024 * 1024)
    }
}

/// A connection's read buffer, so also its largest request head (hyper's
/// default, 408 KiB, would let 512 slow heads hold 204 MiB).
pub(super) const READ_BUFFER: usize = 64 << 10;
/// Connections answered 503 at once beyond `max_connections`; more are
/// closed unanswered, so a flood cannot grow the shedding itself.
pub(super) const MAX_SHEDDING: usize = 64;
/// How long a shed connection may take to send its request head.
pub(super) const SHED_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The `Retry-After` of a 503, in seconds.
pub(super) const RETRY_AFTER_S: u32 = 1;
/// How long a refused body is read on, so its client gets the refusal.
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A positive number of seconds that makes a [`Duration`].
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = f64::deserialize(d)?;
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| serde::de::Error::custom(format!("{s} is not a positive number of seconds")))
}
