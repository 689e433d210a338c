//! The probe on fixture trees of real boards' files, on broken trees, and
//! on this machine.

mod common;

use common::copy_dir;

use std::path::{Path, PathBuf};

use tailor_runtime::probe::{probe, DeviceInfo};

fn tree(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/probe")
        .join(name)
}

fn names(info: &DeviceInfo) -> Vec<&str> {
    info.cpu.features.iter().map(|f| f.name()).collect()
}

const MIB: u64 = 1024 * 1024;

#[test]
fn jetson_orin_nano() {
    let info = probe(&tree("jetson-orin-nano"));
    assert_eq!(info.profile, "jetson-orin");
    assert_eq!(
        info.board.model.as_deref(),
        Some("NVIDIA Jetson Orin Nano Developer Kit")
    );
    assert_eq!(
        info.board.compatible.last().map(String::as_str),
        Some("nvidia,tegra234")
    );
    assert_eq!(info.board.l4t_release.as_deref(), Some("36.3.0"));
    assert_eq!(info.power_mode(), Some("1"));
    assert_eq!(info.cpu.arch.as_deref(), Some("aarch64"));
    assert_eq!(info.cpu.logical_cores, Some(6));
    assert_eq!(info.cpu.clusters.len(), 2);
    assert_eq!(
        info.cpu.clusters[0].core_type.as_deref(),
        Some("Cortex-A78AE")
    );
    assert_eq!(info.cpu.clusters[0].max_mhz, Some(1510));
    assert!(
        info.cpu.clocks.as_ref().unwrap().locked,
        "jetson_clocks pins min = max"
    );
    for f in ["neon", "dotprod", "fp16"] {
        assert!(names(&info).contains(&f), "{f} in {:?}", names(&info));
    }
    assert!(!names(&info).contains(&"i8mm"));
    // The container's cgroup limit caps what is usable: 4 GiB - 512 MiB in use.
    assert_eq!(info.memory.total_bytes, Some(7_802_040 * 1024));
    assert_eq!(info.memory.cgroup_limit_bytes, Some(4096 * MIB));
    assert_eq!(info.usable_memory_bytes(), Some(3584 * MIB));
    assert!(
        info.accelerators.iter().any(|a| a == "/dev/nvhost-gpu"),
        "{:?}",
        info.accelerators
    );
    assert!(
        info.accelerators
            .iter()
            .any(|a| a.starts_with("/dev/nvgpu/")),
        "{:?}",
        info.accelerators
    );
    assert_eq!(info.thermal.len(), 3);
    assert_eq!(
        (info.thermal[0].name.as_str(), info.thermal[0].celsius),
        ("cpu-thermal", Some(48.5))
    );
    assert!(info.notes.is_empty(), "{:?}", info.notes);
}

#[test]
fn raspberry_pi_5() {
    let info = probe(&tree("rpi5"));
    assert_eq!(info.profile, "rpi5");
    assert_eq!(info.cpu.logical_cores, Some(4));
    assert_eq!(info.cpu.clusters.len(), 1);
    assert_eq!(
        info.cpu.clusters[0].core_type.as_deref(),
        Some("Cortex-A76")
    );
    assert!(!info.cpu.clocks.as_ref().unwrap().locked);
    assert_eq!(info.cpu.clocks.as_ref().unwrap().governors, ["ondemand"]);
    assert_eq!(info.memory.cgroup_limit_bytes, None, "\"max\" is no limit");
    assert_eq!(info.usable_memory_bytes(), Some(7_400_000 * 1024));
    assert_eq!(info.accelerators, ["/dev/vchiq"]);
    assert_eq!(
        (info.board.l4t_release.clone(), info.power_mode()),
        (None, None)
    );
}

#[test]
fn rk3588_has_big_and_little_clusters_and_an_npu() {
    let info = probe(&tree("rk3588"));
    assert_eq!(info.profile, "rk3588");
    assert_eq!(info.cpu.logical_cores, Some(8));
    let kinds: Vec<_> = info
        .cpu
        .clusters
        .iter()
        .map(|c| (c.cpus.len(), c.core_type.as_deref(), c.max_mhz))
        .collect();
    assert_eq!(
        kinds,
        [
            (4, Some("Cortex-A55"), Some(1800)),
            (2, Some("Cortex-A76"), Some(2400)),
            (2, Some("Cortex-A76"), Some(2400))
        ]
    );
    assert!(
        info.cpu.model.as_deref().unwrap().contains("Cortex-A55")
            && info.cpu.model.as_deref().unwrap().contains("Cortex-A76")
    );
    assert!(
        info.accelerators.iter().any(|a| a == "/dev/rknpu"),
        "{:?}",
        info.accelerators
    );
}

#[test]
fn x86_from_this_machine() {
    let info = probe(&tree("x86"));
    assert_eq!(info.profile, "generic-x86_64");
    assert_eq!(info.cpu.arch.as_deref(), Some("x86_64"));
    assert_eq!(info.cpu.logical_cores, Some(2));
    assert!(names(&info).contains(&"avx2"), "{:?}", names(&info));
    assert!(info.memory.total_bytes.unwrap() > 0);
    assert!(info.accelerators.is_empty());
}

#[test]
fn broken_trees_become_notes_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("proc/device-tree")).unwrap();
    std::fs::write(root.join("proc/cpuinfo"), [0xff, 0x00, 0xfe, 0x12]).unwrap();
    std::fs::write(root.join("proc/meminfo"), "MemTotal: lots\n").unwrap();
    std::fs::create_dir_all(root.join("sys/devices/system/cpu")).unwrap();
    std::fs::write(root.join("sys/devices/system/cpu/online"), "zero-three").unwrap();
    let info = probe(root);
    assert_eq!(info.memory.total_bytes, None);
    assert_eq!(info.usable_memory_bytes(), None);
    assert!(
        info.notes
            .iter()
            .any(|n| n.contains("/sys/devices/system/cpu/online")),
        "{:?}",
        info.notes
    );
    // An empty tree: everything unknown, every missing required file noted.
    let empty = tempfile::tempdir().unwrap();
    let info = probe(empty.path());
    assert!(
        info.notes.iter().any(|n| n.contains("/proc/cpuinfo")),
        "{:?}",
        info.notes
    );
    assert!(
        info.notes.iter().any(|n| n.contains("/proc/meminfo")),
        "{:?}",
        info.notes
    );
    assert!(!info.to_string().is_empty());
}

#[test]
fn the_fingerprint_ignores_what_changes_between_boots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("orin");
    copy_dir(&tree("jetson-orin-nano"), &root);
    let before = probe(&root).fingerprint();
    assert_eq!(before, probe(&tree("jetson-orin-nano")).fingerprint());
    let meminfo = std::fs::read_to_string(root.join("proc/meminfo")).unwrap();
    std::fs::write(
        root.join("proc/meminfo"),
        meminfo.replace("MemAvailable:   5120000", "MemAvailable:   1000000"),
    )
    .unwrap();
    std::fs::write(root.join("sys/class/thermal/thermal_zone0/temp"), "71000\n").unwrap();
    std::fs::write(
        root.join("sys/fs/cgroup/docker/app/memory.current"),
        "999999999\n",
    )
    .unwrap();
    assert_eq!(
        probe(&root).fingerprint(),
        before,
        "free memory and temperatures are not identity"
    );
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap();
    std::fs::write(root.join("proc/cpuinfo"), cpuinfo.replace("0xd42", "0xd41")).unwrap();
    assert_ne!(
        probe(&root).fingerprint(),
        before,
        "another CPU is another device"
    );
    assert_ne!(before, probe(&tree("rpi5")).fingerprint());
}

#[test]
fn this_machine() {
    let info = probe(Path::new("/"));
    assert!(info.cpu.logical_cores.unwrap() >= 1);
    assert!(info.memory.total_bytes.unwrap() > 0);
    assert_eq!(info.fingerprint(), probe(Path::new("/")).fingerprint());
}
