//! What this device is, read from files under a sysroot (`/` on a device, a
//! fixture tree in tests), so it works on a bare board: CPU, memory and its
//! cgroup limit, board and L4T release, power mode, accelerators, thermals.
//! Nothing here fails: what cannot be read is `None` and a note says why.

mod cpu;
mod load;
mod sysroot;

use std::fmt;
use std::path::Path;

use serde::Serialize;

pub use cpu::{Clocks, Cluster, Cpu, Feature};
pub use load::{Load, LoadReading};
use sysroot::{clip, Sysroot};

/// Where Jetson's nvpmodel writes `pmode:0001 fmode:...`, relative to the root.
pub const NVPMODEL_STATUS: &str = "var/lib/nvpmodel/status";

/// Everything the probe learned (`runtime probe --json` prints this).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    pub cpu: Cpu,
    pub memory: Memory,
    pub board: Board,
    /// Accelerator device nodes present, e.g. `/dev/nvhost-gpu`, `/dev/rknpu`.
    pub accelerators: Vec<String>,
    pub thermal: Vec<ThermalZone>,
    /// The tailor device profile this matches (targets crate).
    pub profile: &'static str,
    /// What could not be read, and why.
    pub notes: Vec<String>,
}

/// Memory as the kernel and the cgroup see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub total_bytes: Option<u64>,
    /// `MemAvailable`: what can be allocated without swapping.
    pub available_bytes: Option<u64>,
    /// The binding cgroup memory limit (v2 `memory.max`, v1
    /// `memory.limit_in_bytes`) of this process's group or an ancestor's;
    /// `None` when unlimited or absent.
    pub cgroup_limit_bytes: Option<u64>,
    /// What the group holding that limit uses (`memory.current`,
    /// `memory.usage_in_bytes`).
    pub cgroup_usage_bytes: Option<u64>,
}

/// The board, from the device tree and Jetson's release files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Board {
    pub model: Option<String>,
    pub compatible: Vec<String>,
    /// Jetson Linux (L4T) release, e.g. `36.3.0`.
    pub l4t_release: Option<String>,
    /// Jetson nvpmodel power mode, e.g. `0`.
    pub power_mode: Option<String>,
}

/// A thermal zone and its temperature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThermalZone {
    pub name: String,
    pub celsius: Option<f64>,
}

/// Device nodes that mean an accelerator is there.
const ACCELERATOR_NODES: &[&str] = &[
    "nvhost-", "nvidia", "rknpu", "hailo", "vchiq", "apex_", "davinci",
];
/// Directories of device nodes that mean an accelerator is there.
const ACCELERATOR_DIRS: &[&str] = &["dev/nvgpu", "dev/accel"];
/// Drivers of accelerators seen only as a DRM render node, by their
/// platform driver name (Rockchip's vendor NPU driver, built as DRM GEM,
/// has no `/dev/rknpu`: its node is `/dev/dri/renderD129`).
const DRM_ACCELERATOR_DRIVERS: &[&str] = &["rknpu"];
/// cgroup v1 reports "no limit" as the largest page-aligned `i64`, which
/// depends on the page size; anything this large is no limit.
const CGROUP_V1_UNLIMITED: u64 = 1 << 62;

/// Probes the device whose root filesystem is at `sysroot`.
pub fn probe(sysroot: &Path) -> DeviceInfo {
    let mut sys = Sysroot::new(sysroot);
    let board = board(&mut sys);
    let soc = board.compatible.last().map(String::as_str);
    let cpu = cpu::read(&mut sys, soc);
    let memory = memory(&mut sys);
    let accelerators = accelerators(&mut sys);
    let thermal = thermal(&mut sys);
    let arch = cpu.arch.clone().unwrap_or_default();
    let profile =
        tailor_targets::match_profile(board.model.as_deref(), &board.compatible, &arch).name;
    DeviceInfo {
        cpu,
        memory,
        board,
        accelerators,
        thermal,
        profile,
        notes: sys.into_notes(),
    }
}

impl DeviceInfo {
    /// Memory a new process can use: `MemAvailable`, capped by what the
    /// cgroup still allows.
    pub fn usable_memory_bytes(&self) -> Option<u64> {
        let m = &self.memory;
        let cgroup = m
            .cgroup_limit_bytes
            .map(|l| l.saturating_sub(m.cgroup_usage_bytes.unwrap_or(0)));
        match (m.available_bytes, cgroup) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }

    /// The power mode, its own part of the cache key.
    pub fn power_mode(&self) -> Option<&str> {
        self.board.power_mode.as_deref()
    }

    /// The CPU clock policy (`"locked performance"`, `"scaling schedutil"`),
    /// its own part of the cache key: latencies measured under one policy
    /// do not hold under another.
    pub fn clock_state(&self) -> Option<String> {
        self.cpu.clocks.as_ref().map(|c| {
            let pinned = if c.locked { "locked" } else { "scaling" };
            format!("{pinned} {}", c.governors.join(","))
        })
    }

    /// A stable digest of what identifies the hardware and software stack,
    /// leaving out what changes between boots (free memory, temperatures).
    pub fn fingerprint(&self) -> String {
        let c = &self.cpu;
        let identity = serde_json::json!({
            "arch": c.arch, "model": c.model, "cores": c.logical_cores, "clusters": c.clusters,
            "features": c.features, "mem_total": self.memory.total_bytes, "cgroup_limit": self.memory.cgroup_limit_bytes,
            "board": self.board.model, "compatible": self.board.compatible, "l4t": self.board.l4t_release,
            "accelerators": self.accelerators,
        });
        // Its first eight bytes, in hex.
        crate::fs::sha256(identity.to_string().as_bytes()).to_string()[..16].to_owned()
    }

    /// One line: board or CPU, cores, memory.
    pub fn summary(&self) -> String {
        let what = self
            .board
            .model
            .clone()
            .or_else(|| self.cpu.model.clone())
            .unwrap_or_else(|| "unknown device".into());
        let cores = self
            .cpu
            .logical_cores
            .map_or("? cores".into(), |n| format!("{n} cores"));
        let mem = self
            .usable_memory_bytes()
            .map_or("memory unknown".into(), |b| {
                format!("{} MiB usable", b >> 20)
            });
        format!("{what} ({cores}, {mem}, profile {})", self.profile)
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        let mib = |v: Option<u64>| v.map_or("unknown".into(), |b| format!("{} MiB", b >> 20));
        writeln!(f, "profile:      {}", self.profile)?;
        writeln!(f, "board:        {}", or(&self.board.model))?;
        if let Some(l4t) = &self.board.l4t_release {
            writeln!(f, "L4T:          {l4t}")?;
        }
        if let Some(mode) = &self.board.power_mode {
            writeln!(f, "power mode:   {mode}")?;
        }
        writeln!(
            f,
            "cpu:          {} ({})",
            or(&self.cpu.model),
            or(&self.cpu.arch)
        )?;
        writeln!(
            f,
            "cores:        {}",
            self.cpu
                .logical_cores
                .map_or("unknown".into(), |n| n.to_string())
        )?;
        for cl in &self.cpu.clusters {
            let mhz = cl.max_mhz.map_or(String::new(), |m| format!(" @ {m} MHz"));
            writeln!(
                f,
                "  cluster:    cpus {:?} {}{mhz}",
                cl.cpus,
                cl.core_type.as_deref().unwrap_or("?")
            )?;
        }
        let features: Vec<_> = self.cpu.features.iter().map(|x| x.name()).collect();
        writeln!(f, "features:     {}", features.join(" "))?;
        if let Some(c) = &self.cpu.clocks {
            writeln!(
                f,
                "clocks:       {} ({})",
                if c.locked { "locked" } else { "scaling" },
                c.governors.join(", ")
            )?;
        }
        writeln!(
            f,
            "memory:       {} total, {} available",
            mib(self.memory.total_bytes),
            mib(self.memory.available_bytes)
        )?;
        if self.memory.cgroup_limit_bytes.is_some() {
            writeln!(f, "cgroup limit: {}", mib(self.memory.cgroup_limit_bytes))?;
        }
        writeln!(
            f,
            "accelerators: {}",
            if self.accelerators.is_empty() {
                "none".into()
            } else {
                self.accelerators.join(" ")
            }
        )?;
        for t in &self.thermal {
            writeln!(
                f,
                "thermal:      {} {}",
                t.name,
                t.celsius.map_or("?".into(), |c| format!("{c:.1} °C"))
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note:         {n}")?;
        }
        Ok(())
    }
}

fn memory(sys: &mut Sysroot<'_>) -> Memory {
    let meminfo = sys.required("proc/meminfo").unwrap_or_default();
    let field = |key: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
                .map(|kb| kb * 1024)
        })
    };
    let (cgroup_limit_bytes, cgroup_usage_bytes) = cgroup_memory(sys);
    Memory {
        total_bytes: field("MemTotal"),
        available_bytes: field("MemAvailable"),
        cgroup_limit_bytes,
        cgroup_usage_bytes,
    }
}

/// One cgroup hierarchy's memory files.
struct CgroupFiles {
    /// Where the hierarchy is mounted, under the sysroot.
    mount: &'static str,
    limit: &'static str,
    usage: &'static str,
}

const CGROUP_V2: CgroupFiles = CgroupFiles {
    mount: "sys/fs/cgroup",
    limit: "memory.max",
    usage: "memory.current",
};
const CGROUP_V1: CgroupFiles = CgroupFiles {
    mount: "sys/fs/cgroup/memory",
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
};

/// The cgroup memory limit that leaves this process the least room, and
/// that group's usage. A limit on any ancestor binds too, so every level
/// from our group (`/proc/self/cgroup`) up to the mount is read. Inside a
/// container the mount is the container's own group, whatever path
/// `/proc/self/cgroup` names, so levels that are not there are skipped.
/// cgroup v1's memory controller is read when mounted (JetPack 5 and other
/// older systems), else v2.
fn cgroup_memory(sys: &mut Sysroot<'_>) -> (Option<u64>, Option<u64>) {
    let membership = sys.optional("proc/self/cgroup").unwrap_or_default();
    let v1 = sys.exists(&format!("{}/{}", CGROUP_V1.mount, CGROUP_V1.limit));
    let (files, group) = if v1 {
        // "4:memory:/docker/<id>": hierarchy ID, controllers, path.
        let group = membership.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let controllers = parts.nth(1)?;
            let path = parts.next()?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then_some(path)
        });
        (CGROUP_V1, group)
    } else {
        // "0::/system.slice/tailor.service"
        let group = membership.lines().find_map(|line| line.strip_prefix("0::"));
        (CGROUP_V2, group)
    };
    // The mount, then each group down to ours.
    let mut levels = vec![files.mount.to_owned()];
    for part in group.unwrap_or("").trim().split('/') {
        if !part.is_empty() {
            let parent = levels.last().expect("starts with the mount");
            levels.push(format!("{parent}/{part}"));
        }
    }
    let mut tightest: Option<(u64, Option<u64>)> = None;
    for dir in levels {
        let limit_path = format!("{dir}/{}", files.limit);
        let Some(text) = sys.optional(&limit_path) else {
            continue;
        };
        let limit = match text.trim() {
            "max" => continue,
            value => match value.parse::<u64>() {
                Ok(v) if v >= CGROUP_V1_UNLIMITED => continue,
                Ok(v) => v,
                Err(_) => {
                    sys.note(format!("/{limit_path}: cannot parse {:?}", clip(value)));
                    continue;
                }
            },
        };
        let usage: Option<u64> = sys.parse(&format!("{dir}/{}", files.usage));
        let room = |(limit, usage): (u64, Option<u64>)| limit.saturating_sub(usage.unwrap_or(0));
        if tightest.is_none_or(|t| room((limit, usage)) < room(t)) {
            tightest = Some((limit, usage));
        }
    }
    tightest.map_or((None, None), |(limit, usage)| (Some(limit), usage))
}

fn board(sys: &mut Sysroot<'_>) -> Board {
    let nul_list = |t: String| -> Vec<String> {
        t.split('\0')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let model = sys
        .optional("proc/device-tree/model")
        .map(nul_list)
        .and_then(|v| v.into_iter().next());
    let compatible = sys
        .optional("proc/device-tree/compatible")
        .map(nul_list)
        .unwrap_or_default();
    // "# R36 (release), REVISION: 3.0, GCID: ..." -> 36.3.0
    let l4t_release = sys.optional("etc/nv_tegra_release").and_then(|t| {
        let major = t.split("# R").nth(1)?.split_whitespace().next()?.to_owned();
        let revision = t
            .split("REVISION:")
            .nth(1)?
            .split(',')
            .next()?
            .trim()
            .to_owned();
        Some(format!("{major}.{revision}"))
    });
    let power_mode = sys.optional(NVPMODEL_STATUS).and_then(|t| {
        let mode = t
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pmode:"))
            .and_then(|m| m.parse::<u32>().ok());
        if mode.is_none() {
            sys.note(format!(
                "/{NVPMODEL_STATUS}: no pmode in {:?}",
                clip(t.trim())
            ));
        }
        mode.map(|m| m.to_string())
    });
    Board {
        model,
        compatible,
        l4t_release,
        power_mode,
    }
}

fn accelerators(sys: &mut Sysroot<'_>) -> Vec<String> {
    let mut found: Vec<String> = sys
        .entries("dev")
        .into_iter()
        .filter(|n| ACCELERATOR_NODES.iter().any(|p| n.starts_with(p)))
        .map(|n| format!("/dev/{n}"))
        .collect();
    for dir in ACCELERATOR_DIRS {
        found.extend(sys.entries(dir).into_iter().map(|n| format!("/{dir}/{n}")));
    }
    // Render nodes whose device's driver is an accelerator's, when the node
    // itself is there (a container may see the sysfs entry but not the node).
    for node in sys.entries("sys/class/drm") {
        if !node.starts_with("renderD") || !sys.exists(&format!("dev/dri/{node}")) {
            continue;
        }
        let uevent = sys
            .optional(&format!("sys/class/drm/{node}/device/uevent"))
            .unwrap_or_default();
        let driver = uevent.lines().find_map(|l| l.strip_prefix("DRIVER="));
        if driver.is_some_and(|d| {
            DRM_ACCELERATOR_DRIVERS
                .iter()
                .any(|a| d.trim().eq_ignore_ascii_case(a))
        }) {
            found.push(format!("/dev/dri/{node}"));
        }
    }
    found
}

fn thermal(sys: &mut Sysroot<'_>) -> Vec<ThermalZone> {
    let base = "sys/class/thermal";
    sys.entries(base)
        .into_iter()
        .filter(|n| n.starts_with("thermal_zone"))
        .map(|zone| {
            let name = sys
                .optional(&format!("{base}/{zone}/type"))
                .map_or(zone.clone(), |t| t.trim().to_owned());
            let celsius = sys
                .parse::<i64>(&format!("{base}/{zone}/temp"))
                .map(|m| m as f64 / 1000.0);
            ThermalZone { name, celsius }
        })
        .collect()
}
