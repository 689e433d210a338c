//! The CPU: model, cores grouped into clusters, ISA features and clock policy.

use std::collections::BTreeSet;

use serde::Serialize;

use super::sysroot::{clip, Sysroot};

/// What the probe learned about the CPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpu {
    /// `uname -m` spelling (`"aarch64"`, `"x86_64"`), from
    /// `/proc/sys/kernel/arch` or inferred from `/proc/cpuinfo`.
    pub arch: Option<String>,
    /// x86 `model name`; on Arm the core names (`"Cortex-A55 + Cortex-A76"`),
    /// else the SoC's device-tree `compatible` entry.
    pub model: Option<String>,
    /// Online logical CPUs.
    pub logical_cores: Option<usize>,
    /// Every online CPU is in exactly one cluster, ordered by first CPU.
    pub clusters: Vec<Cluster>,
    /// ISA features every online CPU has, sorted.
    pub features: Vec<Feature>,
    /// cpufreq policies; `None` when the kernel exposes none (e.g. VMs).
    pub clocks: Option<Clocks>,
}

/// CPUs of one kind that are scheduled and clocked together.
///
/// On Arm that is the kernel's topology `cluster_id` (the device tree's
/// `cpu-map`) or, on kernels without one, CPUs of the same capacity, maximum
/// frequency and core type. On x86 `cluster_id` names the CPUs sharing an L2
/// cache, one per core on most parts, so there a cluster is the CPUs of one
/// package and one core kind (hybrid parts' `cpu_core` and `cpu_atom`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// Logical CPU numbers, ascending.
    pub cpus: Vec<u32>,
    /// e.g. `"Cortex-A78AE"`; `None` when unknown or mixed.
    pub core_type: Option<String>,
    /// The highest `cpuinfo_max_freq` of its CPUs.
    pub max_mhz: Option<u32>,
}

/// The CPU frequency policy, which decides whether latencies are repeatable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clocks {
    /// Every policy has `scaling_min_freq == scaling_max_freq`.
    pub locked: bool,
    /// The distinct `scaling_governor`s, sorted.
    pub governors: Vec<String>,
}

/// An ISA feature that changes which kernels an engine can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Arm Advanced SIMD (`asimd`, 32-bit `neon`).
    Neon,
    /// Arm int8 dot product (`asimddp`).
    Dotprod,
    /// Arm half-precision arithmetic (`fphp`, `asimdhp`).
    Fp16,
    /// Arm int8 matrix multiply (`i8mm`).
    I8mm,
    /// Arm Scalable Vector Extension (`sve`).
    Sve,
    /// x86 fused multiply-add (`fma`).
    Fma,
    /// x86 AVX2 (`avx2`).
    Avx2,
    /// x86 AVX-512 Foundation (`avx512f`).
    Avx512f,
}

impl Feature {
    /// The feature a `/proc/cpuinfo` `Features`/`flags` word stands for.
    fn from_flag(flag: &str) -> Option<Self> {
        Some(match flag {
            "asimd" | "neon" => Self::Neon,
            "asimddp" => Self::Dotprod,
            "fphp" | "asimdhp" => Self::Fp16,
            "i8mm" => Self::I8mm,
            "sve" => Self::Sve,
            "fma" => Self::Fma,
            "avx2" => Self::Avx2,
            "avx512f" => Self::Avx512f,
            _ => return None,
        })
    }

    /// The stable name used in JSON and in human output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Neon => "neon",
            Self::Dotprod => "dotprod",
            Self::Fp16 => "fp16",
            Self::I8mm => "i8mm",
            Self::Sve => "sve",
            Self::Fma => "fma",
            Self::Avx2 => "avx2",
            Self::Avx512f => "avx512f",
        }
    }
}

/// Arm `(CPU implementer, CPU part)` pairs, as in Linux's `asm/cputype.h`.
const ARM_CORES: &[(u32, u32, &str)] = &[
    (0x41, 0xd03, "Cortex-A53"),
    (0x41, 0xd04, "Cortex-A35"),
    (0x41, 0xd05, "Cortex-A55"),
    (0x41, 0xd07, "Cortex-A57"),
    (0x41, 0xd08, "Cortex-A72"),
    (0x41, 0xd09, "Cortex-A73"),
    (0x41, 0xd0a, "Cortex-A75"),
    (0x41, 0xd0b, "Cortex-A76"),
    (0x41, 0xd0c, "Neoverse-N1"),
    (0x41, 0xd0d, "Cortex-A77"),
    (0x41, 0xd40, "Neoverse-V1"),
    (0x41, 0xd41, "Cortex-A78"),
    (0x41, 0xd42, "Cortex-A78AE"),
    (0x41, 0xd44, "Cortex-X1"),
    (0x41, 0xd46, "Cortex-A510"),
    (0x41, 0xd47, "Cortex-A710"),
    (0x41, 0xd48, "Cortex-X2"),
    (0x41, 0xd49, "Neoverse-N2"),
    (0x41, 0xd4b, "Cortex-A78C"),
    (0x41, 0xd4d, "Cortex-A715"),
    (0x41, 0xd4e, "Cortex-X3"),
    (0x41, 0xd4f, "Neoverse-V2"),
    (0x41, 0xd80, "Cortex-A520"),
    (0x41, 0xd81, "Cortex-A720"),
    (0x41, 0xd82, "Cortex-X4"),
    (0x4e, 0x003, "Denver 2"),
    (0x4e, 0x004, "Carmel"),
];

/// Reads the CPU facts; `soc` names the chip when the cores cannot be named.
pub(super) fn read(sys: &mut Sysroot<'_>, soc: Option<&str>) -> Cpu {
    let text = sys.required("proc/cpuinfo").unwrap_or_default();
    let blocks = processor_blocks(&text);
    let arch = arch(sys, blocks.first());
    let x86 = arch.as_deref().is_some_and(is_x86);
    let hybrid = if x86 { hybrid_kinds(sys) } else { Vec::new() };
    let ids = online_cpus(sys, &blocks);
    let cores: Vec<Core> = ids
        .iter()
        .map(|&id| {
            let mut core = Core::read(sys, id, blocks.iter().find(|b| b.id == id));
            core.kind = hybrid
                .iter()
                .find(|(_, cpus)| cpus.contains(&id))
                .map(|(kind, _)| *kind);
            core
        })
        .collect();
    let clusters = clusters(&cores, x86);
    Cpu {
        arch,
        model: model(&blocks, &clusters).or_else(|| soc.map(str::to_owned)),
        logical_cores: (!ids.is_empty()).then_some(ids.len()),
        clusters,
        features: common_features(&blocks),
        clocks: clocks(sys),
    }
}

/// The `key: value` lines of one `processor` block of `/proc/cpuinfo`.
struct Block<'t> {
    id: u32,
    fields: Vec<(&'t str, &'t str)>,
}

impl<'t> Block<'t> {
    fn get(&self, key: &str) -> Option<&'t str> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The core's name: Arm implementer/part when present, else `model name`.
    fn core_type(&self) -> Option<String> {
        let implementer = self.get("CPU implementer").and_then(parse_hex);
        let part = self.get("CPU part").and_then(parse_hex);
        match (implementer, part) {
            (Some(implementer), Some(part)) => Some(
                ARM_CORES
                    .iter()
                    .find(|(i, p, _)| (*i, *p) == (implementer, part))
                    .map_or_else(
                        || format!("Arm implementer {implementer:#04x} part {part:#05x}"),
                        |(_, _, name)| (*name).to_owned(),
                    ),
            ),
            _ => self.get("model name").map(str::to_owned),
        }
    }

    /// The features this processor's `Features` (Arm) or `flags` (x86) line lists.
    fn features(&self) -> BTreeSet<Feature> {
        let words = self.get("Features").or_else(|| self.get("flags"));
        words
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(Feature::from_flag)
            .collect()
    }
}

fn processor_blocks(text: &str) -> Vec<Block<'_>> {
    let mut blocks: Vec<Block<'_>> = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key == "processor" {
            if let Ok(id) = value.parse() {
                blocks.push(Block {
                    id,
                    fields: Vec::new(),
                });
            }
        } else if let Some(block) = blocks.last_mut() {
            block.fields.push((key, value));
        }
    }
    blocks
}

fn parse_hex(text: &str) -> Option<u32> {
    u32::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

/// The online CPUs from sysfs, else the processors `/proc/cpuinfo` lists.
fn online_cpus(sys: &mut Sysroot<'_>, blocks: &[Block<'_>]) -> Vec<u32> {
    const ONLINE: &str = "sys/devices/system/cpu/online";
    if let Some(text) = sys.optional(ONLINE) {
        match parse_cpu_list(text.trim()) {
            Some(ids) => return ids,
            None => sys.note(format!("/{ONLINE}: cannot parse {:?}", clip(text.trim()))),
        }
    }
    blocks.iter().map(|b| b.id).collect()
}

/// A kernel CPU list such as `"0-3,6,8-9"`, ascending and without duplicates.
fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut ids = BTreeSet::new();
    for range in text.split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
        if last < first || last - first > 4096 {
            return None;
        }
        ids.extend(first..=last);
    }
    Some(ids.into_iter().collect())
}

/// `uname -m` spellings of 32- and 64-bit x86.
fn is_x86(arch: &str) -> bool {
    matches!(arch, "x86_64" | "x86" | "i386" | "i486" | "i586" | "i686")
}

/// Hybrid x86 parts (Alder Lake and later) list their performance and
/// efficiency cores under the two core PMUs; other parts have neither.
fn hybrid_kinds(sys: &mut Sysroot<'_>) -> Vec<(&'static str, Vec<u32>)> {
    let mut kinds = Vec::new();
    for kind in ["cpu_core", "cpu_atom"] {
        let path = format!("sys/devices/{kind}/cpus");
        if let Some(text) = sys.optional(&path) {
            match parse_cpu_list(text.trim()) {
                Some(cpus) => kinds.push((kind, cpus)),
                None => sys.note(format!("/{path}: cannot parse {:?}", clip(text.trim()))),
            }
        }
    }
    kinds
}

/// One online CPU's facts from sysfs and its `/proc/cpuinfo` block.
struct Core {
    id: u32,
    core_type: Option<String>,
    package: Option<i64>,
    /// The topology `cluster_id`, when the kernel reports one.
    cluster: Option<i64>,
    /// x86 hybrid core kind (`cpu_core`, `cpu_atom`).
    kind: Option<&'static str>,
    capacity: Option<u32>,
    max_khz: Option<u64>,
}

impl Core {
    fn read(sys: &mut Sysroot<'_>, id: u32, block: Option<&Block<'_>>) -> Self {
        let dir = format!("sys/devices/system/cpu/cpu{id}");
        let cluster_id: Option<i64> = sys.parse(&format!("{dir}/topology/cluster_id"));
        Core {
            id,
            core_type: block.and_then(Block::core_type),
            package: sys.parse(&format!("{dir}/topology/physical_package_id")),
            // -1 is the kernel's "no cluster".
            cluster: cluster_id.filter(|&c| c >= 0),
            kind: None,
            capacity: sys.parse(&format!("{dir}/cpu_capacity")),
            max_khz: sys.parse(&format!("{dir}/cpufreq/cpuinfo_max_freq")),
        }
    }
}

/// Groups cores into clusters (see [`Cluster`]): on x86 by package, hybrid
/// kind and model; elsewhere by topology cluster when every core has one,
/// else by alike capacity, maximum frequency and core type.
fn clusters(cores: &[Core], x86: bool) -> Vec<Cluster> {
    let by_topology = cores.iter().all(|core| core.cluster.is_some());
    let same_cluster = |a: &Core, b: &Core| {
        if x86 {
            (a.package, a.kind, &a.core_type) == (b.package, b.kind, &b.core_type)
        } else if by_topology {
            (a.package, a.cluster) == (b.package, b.cluster)
        } else {
            (a.capacity, a.max_khz, &a.core_type) == (b.capacity, b.max_khz, &b.core_type)
        }
    };
    let mut groups: Vec<Vec<&Core>> = Vec::new();
    for core in cores {
        match groups.iter_mut().find(|g| same_cluster(g[0], core)) {
            Some(group) => group.push(core),
            None => groups.push(vec![core]),
        }
    }
    groups
        .into_iter()
        .map(|group| {
            let first_type = &group[0].core_type;
            Cluster {
                cpus: group.iter().map(|core| core.id).collect(),
                core_type: group
                    .iter()
                    .all(|core| &core.core_type == first_type)
                    .then(|| first_type.clone())
                    .flatten(),
                max_mhz: group
                    .iter()
                    .filter_map(|core| core.max_khz)
                    .max()
                    .and_then(|khz| u32::try_from(khz / 1000).ok()),
            }
        })
        .collect()
}

/// The distinct core names in cluster order, or x86's `model name`.
fn model(blocks: &[Block<'_>], clusters: &[Cluster]) -> Option<String> {
    let mut names: Vec<&str> = Vec::new();
    for name in clusters.iter().filter_map(|c| c.core_type.as_deref()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return blocks.first().and_then(Block::core_type);
    }
    Some(names.join(" + "))
}

fn common_features(blocks: &[Block<'_>]) -> Vec<Feature> {
    let mut sets = blocks.iter().map(Block::features);
    let first = sets.next().unwrap_or_default();
    let common = sets.fold(first, |acc, set| &acc & &set);
    common.into_iter().collect()
}

/// `/proc/sys/kernel/arch` (Linux 6.1+), else what `/proc/cpuinfo` implies.
fn arch(sys: &mut Sysroot<'_>, block: Option<&Block<'_>>) -> Option<String> {
    if let Some(arch) = sys.optional("proc/sys/kernel/arch") {
        let arch = arch.trim();
        if !arch.is_empty() {
            return Some(arch.to_owned());
        }
    }
    let block = block?;
    let has = |key, word| {
        block
            .get(key)
            .is_some_and(|words: &str| words.split_whitespace().any(|w| w == word))
    };
    let arch = if block.get("flags").is_some() {
        if has("flags", "lm") {
            "x86_64"
        } else {
            "x86"
        }
    } else if has("Features", "asimd") || has("Features", "fp") {
        "aarch64"
    } else if block.get("CPU implementer").is_some() {
        "arm"
    } else {
        return None;
    };
    Some(arch.to_owned())
}

/// The cpufreq policies' governors and whether their clocks are pinned.
fn clocks(sys: &mut Sysroot<'_>) -> Option<Clocks> {
    const CPUFREQ: &str = "sys/devices/system/cpu/cpufreq";
    let policies: Vec<String> = sys
        .entries(CPUFREQ)
        .into_iter()
        .filter(|name| name.starts_with("policy"))
        .collect();
    if policies.is_empty() {
        return None;
    }
    let mut locked = true;
    let mut governors = BTreeSet::new();
    for policy in &policies {
        let dir = format!("{CPUFREQ}/{policy}");
        let min: Option<u64> = sys.parse(&format!("{dir}/scaling_min_freq"));
        let max: Option<u64> = sys.parse(&format!("{dir}/scaling_max_freq"));
        // An unreadable policy cannot be vouched for.
        locked &= min.is_some() && min == max;
        if let Some(governor) = sys.optional(&format!("{dir}/scaling_governor")) {
            governors.insert(governor.trim().to_owned());
        }
    }
    Some(Clocks {
        locked,
        governors: governors.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_ranges_and_reject_garbage() {
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-x"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
    }

    #[test]
    fn unknown_arm_parts_are_named_by_their_numbers() {
        let block = Block {
            id: 0,
            fields: vec![("CPU implementer", "0x41"), ("CPU part", "0xfff")],
        };
        assert_eq!(
            block.core_type().as_deref(),
            Some("Arm implementer 0x41 part 0xfff")
        );
    }
}
