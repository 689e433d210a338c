//! The bench-owned bursty load: processes of this program that alternate
//! busy and idle spans of random length, as units starting on a booting
//! board do.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The hidden first argument that makes this program a burst of load.
pub const BURST_COMMAND: &str = "__bench-burst";
/// Busy and idle spans of the bursty load, in ms.
const BURST_MS: (u64, u64) = (50, 400);
/// Bursts end on their own after this long, whatever becomes of the bench.
const BURST_BOUND: Duration = Duration::from_secs(40 * 60);

/// Two processes of bursty load, killed when dropped.
pub struct Bursts(Vec<Child>);

impl Bursts {
    pub fn start() -> Bursts {
        let exe = std::env::current_exe().unwrap();
        Bursts(
            (0..2)
                .map(|_| Command::new(&exe).arg(BURST_COMMAND).spawn().unwrap())
                .collect(),
        )
    }
}

impl Drop for Bursts {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Alternates busy and idle spans of random length until [`BURST_BOUND`].
pub fn burst() {
    let start = Instant::now();
    let mut x = std::process::id() ^ 0x9e37_79b9;
    let mut span = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        Duration::from_millis(BURST_MS.0 + u64::from(x) % (BURST_MS.1 - BURST_MS.0 + 1))
    };
    while start.elapsed() < BURST_BOUND {
        let busy = Instant::now();
        let until = span();
        let mut spin = 0u64;
        while busy.elapsed() < until {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        std::thread::sleep(span());
    }
}
