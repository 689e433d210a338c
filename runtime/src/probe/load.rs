//! What else the device is running: the load a selection measured beside.
//! A board at boot is busy (every unit starts at once), and a pick made
//! then holds less; the decision records what was seen so the user, and
//! the service's re-selection timer, can tell.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::sysroot::Sysroot;

/// A busy device: the 1-minute load average per usable CPU at least this.
const BUSY_LOAD_PER_CPU: f64 = 0.5;
/// A busy device: some task waited for a CPU this share (%) of the last 10 s.
const BUSY_CPU_PRESSURE: f64 = 10.0;
/// A busy host: the hypervisor took at least this share of the CPU time.
const BUSY_STEAL: f64 = 0.05;

/// The load seen around a selection.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Load {
    /// The 1-minute load average (`/proc/loadavg`) before measuring.
    pub load_avg_1m: Option<f64>,
    /// `some avg10` of `/proc/pressure/cpu` before measuring: the share (%)
    /// of the last 10 s in which some runnable task waited for a CPU.
    pub cpu_pressure_avg10: Option<f64>,
    /// The share (0 to 1) of CPU time the hypervisor gave to others while
    /// measuring (`steal` of `/proc/stat`).
    pub steal: Option<f64>,
}

impl Load {
    /// Whether another workload was competing for `cpus` CPUs.
    pub fn is_busy(&self, cpus: usize) -> bool {
        self.load_avg_1m
            .is_some_and(|l| l >= BUSY_LOAD_PER_CPU * cpus.max(1) as f64)
            || self
                .cpu_pressure_avg10
                .is_some_and(|p| p >= BUSY_CPU_PRESSURE)
            || self.steal.is_some_and(|s| s >= BUSY_STEAL)
    }
}

/// `load average 1.52, CPU pressure 12.5% (avg10), steal 0.0%`, what is known.
impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            self.load_avg_1m.map(|l| format!("load average {l:.2}")),
            self.cpu_pressure_avg10
                .map(|p| format!("CPU pressure {p:.1}% (avg10)")),
            self.steal.map(|s| format!("steal {:.1}%", 100.0 * s)),
        ];
        let known: Vec<String> = parts.into_iter().flatten().collect();
        if known.is_empty() {
            f.write_str("load unknown")
        } else {
            f.write_str(&known.join(", "))
        }
    }
}

/// One reading of the load files; two make a [`Load`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadReading {
    load_avg_1m: Option<f64>,
    cpu_pressure_avg10: Option<f64>,
    cpu_times: Option<CpuTimes>,
}

impl LoadReading {
    /// Reads the load files under `root` (`/` on a device); what is absent
    /// (no PSI before Linux 4.20 or when disabled) is `None`.
    pub fn now(root: &Path) -> LoadReading {
        let mut files = Sysroot::new(root);
        LoadReading {
            load_avg_1m: files.optional("proc/loadavg").and_then(|t| load_avg_1m(&t)),
            cpu_pressure_avg10: files
                .optional("proc/pressure/cpu")
                .and_then(|t| some_avg10(&t)),
            cpu_times: files.optional("proc/stat").and_then(|t| cpu_times(&t)),
        }
    }

    /// The load from this reading (before measuring) to `end` (after).
    pub fn until(&self, end: &LoadReading) -> Load {
        let steal = match (self.cpu_times, end.cpu_times) {
            (Some(a), Some(b)) if b.total > a.total => {
                Some(b.steal.saturating_sub(a.steal) as f64 / (b.total - a.total) as f64)
            }
            _ => None,
        };
        Load {
            load_avg_1m: self.load_avg_1m,
            cpu_pressure_avg10: self.cpu_pressure_avg10,
            steal,
        }
    }
}

/// Cumulative CPU time of all CPUs, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    steal: u64,
    total: u64,
}

/// The first field of `/proc/loadavg` (`0.52 0.58 0.59 1/467 12345`).
fn load_avg_1m(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `avg10` of the `some` line of a PSI file
/// (`some avg10=1.53 avg60=0.87 avg300=0.22 total=12345`).
fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find_map(|l| l.strip_prefix("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// The aggregate `cpu` line of `/proc/stat`: user nice system idle iowait
/// irq softirq steal [guest guest_nice]; guest time is already in user and
/// nice, so the total is the first eight.
fn cpu_times(text: &str) -> Option<CpuTimes> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu ").map(str::trim))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(CpuTimes {
        steal: *fields.get(7)?,
        total: fields.iter().sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As proc(5) shows them on a 4-CPU guest.
    const STAT: &str = "cpu  10132153 290696 3084719 46828483 16683 0 25195 175628 0 0\n\
                        cpu0 1393280 32966 572056 13343292 6130 0 17875 40000 0 0\n\
                        intr 1462898\n";
    const PRESSURE: &str = "some avg10=12.53 avg60=3.87 avg300=0.22 total=58761459\n\
                            full avg10=1.00 avg60=0.00 avg300=0.00 total=0\n";

    #[test]
    fn the_load_average_is_the_first_field() {
        assert_eq!(load_avg_1m("1.52 0.58 0.59 3/467 12345\n"), Some(1.52));
        assert_eq!(load_avg_1m(""), None);
        assert_eq!(load_avg_1m("x 0.58"), None);
    }

    #[test]
    fn cpu_pressure_is_the_some_lines_avg10() {
        assert_eq!(some_avg10(PRESSURE), Some(12.53));
        // Not the `full` line's, which comes second and differs.
        assert_eq!(some_avg10("full avg10=1.00 avg60=0.00\n"), None);
        assert_eq!(some_avg10("some avg60=3.87\n"), None);
    }

    #[test]
    fn steal_is_the_eighth_field_of_the_aggregate_line() {
        let t = cpu_times(STAT).unwrap();
        assert_eq!(t.steal, 175628);
        // The first eight fields; not cpu0's line, not guest time.
        assert_eq!(
            t.total,
            10132153 + 290696 + 3084719 + 46828483 + 16683 + 25195 + 175628
        );
        assert_eq!(cpu_times("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(cpu_times("cpu  1 2 3\n"), None);
    }

    #[test]
    fn steal_is_a_share_of_the_time_between_two_readings() {
        let at = |steal, total| LoadReading {
            load_avg_1m: Some(1.5),
            cpu_pressure_avg10: Some(12.5),
            cpu_times: Some(CpuTimes { steal, total }),
        };
        let load = at(100, 1_000).until(&at(150, 2_000));
        assert_eq!(load.steal, Some(0.05));
        // The load average and pressure are the first reading's.
        assert_eq!(
            (load.load_avg_1m, load.cpu_pressure_avg10),
            (Some(1.5), Some(12.5))
        );
        assert_eq!(at(0, 1_000).until(&at(0, 1_000)).steal, None);
    }

    #[test]
    fn busy_is_any_of_load_pressure_or_steal() {
        let quiet = Load {
            load_avg_1m: Some(0.9),
            cpu_pressure_avg10: Some(9.9),
            steal: Some(0.049),
        };
        assert!(!quiet.is_busy(2));
        assert!(quiet.is_busy(1), "0.9 on one CPU");
        for busy in [
            Load {
                load_avg_1m: Some(1.0),
                ..quiet
            },
            Load {
                cpu_pressure_avg10: Some(10.0),
                ..quiet
            },
            Load {
                steal: Some(0.05),
                ..quiet
            },
        ] {
            assert!(busy.is_busy(2), "{busy:?}");
        }
        assert!(!Load::default().is_busy(2), "nothing known is not busy");
        assert_eq!(
            Load {
                steal: None,
                ..quiet
            }
            .to_string(),
            "load average 0.90, CPU pressure 9.9% (avg10)"
        );
        assert_eq!(Load::default().to_string(), "load unknown");
    }

    #[test]
    fn readings_come_from_the_sysroot() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc/pressure")).unwrap();
        std::fs::write(root.join("proc/loadavg"), "2.25 1.00 0.50 2/100 42\n").unwrap();
        std::fs::write(root.join("proc/stat"), STAT).unwrap();
        let before = LoadReading::now(root);
        assert_eq!(before.cpu_pressure_avg10, None, "no PSI: absent");
        std::fs::write(root.join("proc/pressure/cpu"), PRESSURE).unwrap();
        let load = LoadReading::now(root).until(&before);
        assert_eq!(load.load_avg_1m, Some(2.25));
        assert_eq!(load.cpu_pressure_avg10, Some(12.53));
    }
}
