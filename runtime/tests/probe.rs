//! The probe on fixture trees of real boards' files, on broken trees, and
//! on this machine.
//!
//! Device nodes in the fixtures are empty regular files (tests cannot
//! `mknod`); the probe only checks that they exist.

mod common;

use common::copy_dir;

use std::fs;
use std::path::{Path, PathBuf};

use tailor_runtime::probe::{probe, DeviceInfo};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

fn tree(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/probe")
        .join(name)
}

/// A fixture tree copied into a temporary directory, to be changed.
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(name);
    copy_dir(&tree(name), &root);
    (dir, root)
}

/// Writes `text` to `path` under `root`, creating its directories.
fn write(root: &Path, path: &str, text: impl AsRef<[u8]>) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn features(info: &DeviceInfo) -> Vec<&str> {
    info.cpu.features.iter().map(|f| f.name()).collect()
}

/// Each cluster as (CPUs, core type, max MHz).
fn clusters(info: &DeviceInfo) -> Vec<(Vec<u32>, Option<&str>, Option<u32>)> {
    info.cpu
        .clusters
        .iter()
        .map(|c| (c.cpus.clone(), c.core_type.as_deref(), c.max_mhz))
        .collect()
}

fn thermal(info: &DeviceInfo) -> Vec<(&str, Option<f64>)> {
    info.thermal
        .iter()
        .map(|t| (t.name.as_str(), t.celsius))
        .collect()
}

#[test]
fn jetson_orin_nano_in_a_container_after_jetson_clocks() {
    let info = probe(&tree("jetson-orin-nano"));
    assert!(info.notes.is_empty(), "{:?}", info.notes);
    assert_eq!(info.profile, "jetson-orin");

    assert_eq!(
        info.board.model.as_deref(),
        Some("NVIDIA Jetson Orin Nano Developer Kit")
    );
    assert_eq!(
        info.board.compatible,
        [
            "nvidia,p3768-0000+p3767-0005",
            "nvidia,p3767-0005",
            "nvidia,tegra234"
        ]
    );
    assert_eq!(info.board.l4t_release.as_deref(), Some("36.3.0"));
    assert_eq!(info.power_mode(), Some("0"));

    assert_eq!(info.cpu.arch.as_deref(), Some("aarch64"));
    assert_eq!(info.cpu.model.as_deref(), Some("Cortex-A78AE"));
    assert_eq!(info.cpu.logical_cores, Some(6));
    assert_eq!(
        clusters(&info),
        [
            (vec![0, 1, 2, 3], Some("Cortex-A78AE"), Some(1510)),
            (vec![4, 5], Some("Cortex-A78AE"), Some(1510)),
        ]
    );
    assert_eq!(features(&info), ["neon", "dotprod", "fp16"]);
    let clocks = info.cpu.clocks.as_ref().unwrap();
    assert!(
        clocks.locked,
        "jetson_clocks pins min = max on every policy"
    );
    assert_eq!(clocks.governors, ["schedutil"]);

    assert_eq!(info.memory.total_bytes, Some(7_802_040 * KIB));
    assert_eq!(info.memory.available_bytes, Some(5_120_000 * KIB));
    assert_eq!(info.memory.cgroup_limit_bytes, Some(4 * GIB));
    assert_eq!(info.memory.cgroup_usage_bytes, Some(512 * MIB));
    // The container's limit binds before MemAvailable: 4 GiB - 512 MiB in use.
    assert_eq!(info.usable_memory_bytes(), Some(3584 * MIB));

    assert_eq!(
        info.accelerators,
        [
            "/dev/nvhost-as-gpu",
            "/dev/nvhost-ctrl-gpu",
            "/dev/nvhost-gpu",
            "/dev/nvgpu/igpu0"
        ]
    );
    assert_eq!(
        thermal(&info),
        [
            ("cpu-thermal", Some(48.5)),
            ("gpu-thermal", Some(47.0)),
            ("tj-thermal", Some(49.25))
        ]
    );

    assert_eq!(
        info.summary(),
        "NVIDIA Jetson Orin Nano Developer Kit (6 cores, 3584 MiB usable, profile jetson-orin)"
    );
    let text = info.to_string();
    for line in [
        "L4T:          36.3.0",
        "power mode:   0",
        "clocks:       locked (schedutil)",
        "cgroup limit: 4096 MiB",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
}

#[test]
fn raspberry_pi_5() {
    let info = probe(&tree("rpi5"));
    assert!(info.notes.is_empty(), "{:?}", info.notes);
    assert_eq!(info.profile, "rpi5");
    assert_eq!(
        info.board.model.as_deref(),
        Some("Raspberry Pi 5 Model B Rev 1.0")
    );
    assert_eq!(
        info.board.compatible,
        ["raspberrypi,5-model-b", "brcm,bcm2712"]
    );
    assert_eq!(
        (info.board.l4t_release.as_deref(), info.power_mode()),
        (None, None)
    );

    assert_eq!(info.cpu.arch.as_deref(), Some("aarch64"));
    assert_eq!(info.cpu.model.as_deref(), Some("Cortex-A76"));
    assert_eq!(info.cpu.logical_cores, Some(4));
    assert_eq!(
        clusters(&info),
        [(vec![0, 1, 2, 3], Some("Cortex-A76"), Some(2400))]
    );
    assert_eq!(features(&info), ["neon", "dotprod", "fp16"]);
    let clocks = info.cpu.clocks.as_ref().unwrap();
    assert!(!clocks.locked, "ondemand scales between 1.5 and 2.4 GHz");
    assert_eq!(clocks.governors, ["ondemand"]);

    assert_eq!(info.memory.total_bytes, Some(8_245_000 * KIB));
    assert_eq!(info.memory.available_bytes, Some(7_400_000 * KIB));
    assert_eq!(
        info.memory.cgroup_limit_bytes, None,
        "\"max\" at every level is no limit"
    );
    assert_eq!(info.usable_memory_bytes(), Some(7_400_000 * KIB));

    assert_eq!(info.accelerators, ["/dev/vchiq"]);
    assert_eq!(thermal(&info), [("cpu-thermal", Some(52.3))]);
}

#[test]
fn a_limit_on_an_ancestor_cgroup_binds() {
    // tailor.service has no MemoryMax, but its slice does.
    let (_dir, root) = copy_of("rpi5");
    write(
        &root,
        "sys/fs/cgroup/system.slice/memory.max",
        "1073741824\n",
    );
    let info = probe(&root);
    assert!(info.notes.is_empty(), "{:?}", info.notes);
    assert_eq!(info.memory.cgroup_limit_bytes, Some(GIB));
    assert_eq!(info.memory.cgroup_usage_bytes, Some(384 * MIB));
    assert_eq!(info.usable_memory_bytes(), Some(640 * MIB));

    // A tighter one on the service itself wins.
    write(
        &root,
        "sys/fs/cgroup/system.slice/tailor.service/memory.max",
        "268435456\n",
    );
    let info = probe(&root);
    assert_eq!(info.memory.cgroup_limit_bytes, Some(256 * MIB));
    assert_eq!(info.usable_memory_bytes(), Some(216 * MIB));
}

#[test]
fn rk3588_has_little_and_big_clusters_and_an_npu() {
    let info = probe(&tree("rk3588"));
    assert!(info.notes.is_empty(), "{:?}", info.notes);
    assert_eq!(info.profile, "rk3588");
    assert_eq!(info.board.model.as_deref(), Some("Radxa ROCK 5B"));
    assert_eq!(info.board.compatible, ["radxa,rock-5b", "rockchip,rk3588"]);

    assert_eq!(info.cpu.model.as_deref(), Some("Cortex-A55 + Cortex-A76"));
    assert_eq!(info.cpu.logical_cores, Some(8));
    // The device tree's cpu-map has the four A76s as two clusters of two,
    // each with its own clock (cpufreq policy4 and policy6).
    assert_eq!(
        clusters(&info),
        [
            (vec![0, 1, 2, 3], Some("Cortex-A55"), Some(1800)),
            (vec![4, 5], Some("Cortex-A76"), Some(2400)),
            (vec![6, 7], Some("Cortex-A76"), Some(2400)),
        ]
    );
    assert_eq!(features(&info), ["neon", "dotprod", "fp16"]);
    let clocks = info.cpu.clocks.as_ref().unwrap();
    assert!(!clocks.locked);
    assert_eq!(clocks.governors, ["schedutil"]);

    assert_eq!(info.memory.cgroup_limit_bytes, None);
    assert_eq!(info.usable_memory_bytes(), Some(14_900_000 * KIB));

    // Rockchip's NPU driver built as DRM GEM (the vendor default) has no
    // /dev/rknpu, only a render node; the Mali GPU's render node is no NPU.
    assert_eq!(info.accelerators, ["/dev/dri/renderD129"]);
    let zones: Vec<_> = thermal(&info).into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        zones,
        [
            "soc-thermal",
            "bigcore0-thermal",
            "bigcore1-thermal",
            "littlecore-thermal",
            "center-thermal",
            "gpu-thermal",
            "npu-thermal"
        ]
    );
}

#[test]
fn the_rknpu_is_found_by_either_node_and_only_when_the_node_is_there() {
    // Built with the DMA heap, the driver registers /dev/rknpu instead.
    let (_dir, root) = copy_of("rk3588");
    fs::remove_file(root.join("dev/dri/renderD129")).unwrap();
    assert_eq!(
        probe(&root).accelerators,
        Vec::<String>::new(),
        "a container given sysfs but not the node cannot use the NPU"
    );
    write(&root, "dev/rknpu", "");
    assert_eq!(probe(&root).accelerators, ["/dev/rknpu"]);
}

#[test]
fn x86_from_this_machine() {
    let info = probe(&tree("x86"));
    assert!(info.notes.is_empty(), "{:?}", info.notes);
    assert_eq!(info.profile, "generic-x86_64");
    assert_eq!(info.board.model, None);
    assert_eq!(info.cpu.arch.as_deref(), Some("x86_64"));
    let model = "Intel(R) Xeon(R) Processor @ 2.80GHz";
    assert_eq!(info.cpu.model.as_deref(), Some(model));
    assert_eq!(info.cpu.logical_cores, Some(2));
    // Each vCPU has its own L2, so its own topology cluster_id; two identical
    // cores are still one cluster.
    assert_eq!(clusters(&info), [(vec![0, 1], Some(model), None)]);
    assert_eq!(features(&info), ["fma", "avx2", "avx512f"]);
    assert_eq!(info.cpu.clocks, None, "the VM exposes no cpufreq policy");

    assert_eq!(info.memory.total_bytes, Some(24_684_092 * KIB));
    assert_eq!(info.memory.available_bytes, Some(24_087_276 * KIB));
    assert_eq!(
        info.memory.cgroup_limit_bytes, None,
        "cgroup v1's 9223372036854771712 is no limit"
    );
    assert_eq!(info.usable_memory_bytes(), Some(24_087_276 * KIB));
    assert!(info.accelerators.is_empty(), "{:?}", info.accelerators);
    assert!(info.thermal.is_empty());
}

#[test]
fn a_cgroup_v1_limit_binds() {
    let (_dir, root) = copy_of("x86");
    let group = "sys/fs/cgroup/memory/process_api/d10dab30b6a375c24b17f818f39d7b05";
    write(
        &root,
        &format!("{group}/memory.limit_in_bytes"),
        "2147483648\n",
    );
    write(
        &root,
        &format!("{group}/memory.usage_in_bytes"),
        "104857600\n",
    );
    let info = probe(&root);
    assert!(info.notes.is_empty(), "{:?}", info.notes);
    assert_eq!(info.memory.cgroup_limit_bytes, Some(2 * GIB));
    assert_eq!(info.usable_memory_bytes(), Some(2 * GIB - 100 * MIB));
}

#[test]
fn hybrid_x86_cores_are_two_clusters() {
    // Alder Lake and later list P- and E-cores under two core PMUs.
    let (_dir, root) = copy_of("x86");
    write(&root, "sys/devices/cpu_core/cpus", "0\n");
    write(&root, "sys/devices/cpu_atom/cpus", "1\n");
    let info = probe(&root);
    let cpus: Vec<_> = info.cpu.clusters.iter().map(|c| c.cpus.clone()).collect();
    assert_eq!(cpus, [[0], [1]]);
}

#[test]
fn the_power_mode_is_nvpmodels_number_or_nothing() {
    let (_dir, root) = copy_of("jetson-orin-nano");
    write(&root, "var/lib/nvpmodel/status", "pmode:0002 fmode:quiet\n");
    assert_eq!(probe(&root).power_mode(), Some("2"));

    write(&root, "var/lib/nvpmodel/status", "pmode:fast\n");
    let info = probe(&root);
    assert_eq!(info.power_mode(), None, "garbage is not mode 0");
    assert!(
        info.notes
            .iter()
            .any(|n| n.starts_with("/var/lib/nvpmodel/status")),
        "{:?}",
        info.notes
    );
}

#[test]
fn broken_trees_become_notes_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "proc/cpuinfo", [0xff, 0x00, 0xfe, 0x12, b'\n', 0x80]);
    write(
        root,
        "proc/meminfo",
        "MemTotal: lots\nMemAvailable:\n\0\0\0",
    );
    write(root, "sys/devices/system/cpu/online", "zero-three");
    write(root, "sys/fs/cgroup/memory.max", "a lot\n");
    write(root, "sys/class/thermal/thermal_zone0/temp", "hot\n");
    write(root, "var/lib/nvpmodel/status", [0xc3, 0x28]);
    write(root, "proc/device-tree/compatible", "\0\0\0");
    let info = probe(root);

    assert_eq!(info.cpu.model, None);
    assert_eq!(info.cpu.arch, None);
    assert_eq!(info.cpu.logical_cores, None);
    assert!(info.cpu.features.is_empty());
    assert_eq!(info.memory.total_bytes, None);
    assert_eq!(info.memory.available_bytes, None);
    assert_eq!(info.memory.cgroup_limit_bytes, None);
    assert_eq!(info.usable_memory_bytes(), None);
    assert!(info.board.compatible.is_empty());
    assert_eq!(info.power_mode(), None);
    assert_eq!(thermal(&info), [("thermal_zone0", None)]);
    for file in [
        "/sys/devices/system/cpu/online",
        "/sys/fs/cgroup/memory.max",
        "/sys/class/thermal/thermal_zone0/temp",
        "/var/lib/nvpmodel/status",
    ] {
        assert!(
            info.notes.iter().any(|n| n.starts_with(file)),
            "{file} in {:?}",
            info.notes
        );
    }
    assert_eq!(info.profile, "generic-aarch64", "nothing known, no match");
    assert!(info.to_string().contains("note:"));

    // An empty tree: everything unknown, each missing required file noted.
    let empty = tempfile::tempdir().unwrap();
    let info = probe(empty.path());
    for file in ["/proc/cpuinfo", "/proc/meminfo"] {
        assert!(
            info.notes.iter().any(|n| n.starts_with(file)),
            "{file} in {:?}",
            info.notes
        );
    }
    assert_eq!(
        info.summary(),
        "unknown device (? cores, memory unknown, profile generic-aarch64)"
    );
}

#[test]
fn the_fingerprint_ignores_what_changes_between_boots() {
    let (_dir, root) = copy_of("jetson-orin-nano");
    let before = probe(&root).fingerprint();
    assert_eq!(before, probe(&tree("jetson-orin-nano")).fingerprint());
    assert_eq!(before, probe(&root).fingerprint());

    let meminfo = fs::read_to_string(root.join("proc/meminfo")).unwrap();
    let changed = meminfo.replace("MemAvailable:   5120000", "MemAvailable:   1000000");
    assert_ne!(changed, meminfo);
    write(&root, "proc/meminfo", changed);
    write(&root, "sys/class/thermal/thermal_zone0/temp", "71000\n");
    write(&root, "sys/fs/cgroup/memory.current", "999999999\n");
    let after = probe(&root);
    assert_eq!(after.memory.available_bytes, Some(1_000_000 * KIB));
    assert_eq!(
        after.fingerprint(),
        before,
        "free memory and temperatures are not identity"
    );

    let cpuinfo = fs::read_to_string(root.join("proc/cpuinfo")).unwrap();
    write(&root, "proc/cpuinfo", cpuinfo.replace("0xd42", "0xd41"));
    let other = probe(&root);
    assert_eq!(other.cpu.model.as_deref(), Some("Cortex-A78"));
    assert_ne!(other.fingerprint(), before, "another CPU is another device");

    assert_ne!(before, probe(&tree("rpi5")).fingerprint());
}

#[test]
fn this_machine() {
    let info = probe(Path::new("/"));
    assert!(info.cpu.logical_cores.unwrap() >= 1, "{info}");
    assert!(info.memory.total_bytes.unwrap() > 0, "{info}");
    assert_eq!(info.fingerprint(), probe(Path::new("/")).fingerprint());
}
