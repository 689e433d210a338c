//! Device profiles: which Rust target to build for, which accelerators a board
//! may carry and which inference engine tailor prefers on it.
//!
//! A profile is picked from facts the runtime's probe reads (device-tree model
//! and `compatible` list, CPU architecture) by [`match_profile`].

pub mod board;
pub mod template;

use core::fmt;

use serde::Serialize;

pub use board::{Arch, Board, BOARDS};

/// An inference accelerator a device may expose, as the probe recognises it by
/// its device nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// Integrated NVIDIA GPU of a Jetson (`/dev/nvhost-*`, `/dev/nvgpu/*`).
    TegraGpu,
    /// NVIDIA Deep Learning Accelerator of Xavier and Orin NX/AGX (`/dev/nvhost-*nvdla*`).
    NvDla,
    /// Discrete NVIDIA GPU (`/dev/nvidia0`).
    NvidiaGpu,
    /// Rockchip NPU of the RK3588 (`/dev/rknpu*`, or a DRM render node of the rknpu driver).
    RockchipNpu,
    /// Hailo-8/8L PCIe accelerator (`/dev/hailo*`).
    Hailo,
    /// A device of the kernel's compute-accelerator subsystem (`/dev/accel/accel*`).
    KernelAccel,
    /// Raspberry Pi VideoCore firmware interface (`/dev/vchiq`).
    VideoCore,
}

impl Accelerator {
    /// The stable name used in JSON and in human output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TegraGpu => "tegra_gpu",
            Self::NvDla => "nv_dla",
            Self::NvidiaGpu => "nvidia_gpu",
            Self::RockchipNpu => "rockchip_npu",
            Self::Hailo => "hailo",
            Self::KernelAccel => "kernel_accel",
            Self::VideoCore => "video_core",
        }
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The engine tailor runs a bundle's graphs with on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// tract, pure Rust on the CPU: always available.
    Tract,
    /// ONNX Runtime with these execution providers, most preferred first; ORT
    /// falls back to its CPU provider for what they do not take.
    Ort {
        /// ORT execution-provider names, e.g. `"TensorrtExecutionProvider"`.
        providers: &'static [&'static str],
    },
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tract => f.write_str("tract"),
            Self::Ort { providers } => write!(f, "ort ({})", providers.join(", ")),
        }
    }
}

/// What tailor knows about a family of devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceProfile {
    /// Short stable name, e.g. `"jetson-orin"`.
    pub name: &'static str,
    /// The Rust target triple to cross-build the runtime for.
    pub rust_target: &'static str,
    /// Case-insensitive substrings of the device-tree `model` or of one
    /// `compatible` entry that identify the device; empty for generic profiles.
    pub matches: &'static [&'static str],
    /// Accelerators such a device may carry (not all models have all).
    pub accelerators: &'static [Accelerator],
    /// The preferred engine.
    pub engine: Engine,
    /// What a deployer should know.
    pub notes: &'static str,
}

const AARCH64: &str = Arch::Aarch64.rust_target();
const X86_64: &str = Arch::X86_64.rust_target();
const TENSORRT_THEN_CUDA: Engine = Engine::Ort {
    providers: &["TensorrtExecutionProvider", "CUDAExecutionProvider"],
};

/// Jetson Orin Nano, NX and AGX.
pub const JETSON_ORIN: DeviceProfile = DeviceProfile {
    name: "jetson-orin",
    rust_target: AARCH64,
    matches: &["nvidia,tegra234", "jetson orin", "jetson agx orin"],
    accelerators: &[Accelerator::TegraGpu, Accelerator::NvDla],
    engine: TENSORRT_THEN_CUDA,
    notes: "Orin Nano/NX/AGX (L4T R35/R36); Orin Nano has no DLA; \
            lock clocks (nvpmodel + jetson_clocks) before measuring",
};

/// Jetson Xavier NX and AGX.
pub const JETSON_XAVIER: DeviceProfile = DeviceProfile {
    name: "jetson-xavier",
    rust_target: AARCH64,
    matches: &["nvidia,tegra194", "jetson xavier", "jetson agx xavier"],
    accelerators: &[Accelerator::TegraGpu, Accelerator::NvDla],
    engine: TENSORRT_THEN_CUDA,
    notes: "Xavier NX/AGX; L4T R35 (JetPack 5) is the last release, with CUDA 11.4",
};

/// Raspberry Pi 5.
pub const RPI5: DeviceProfile = DeviceProfile {
    name: "rpi5",
    rust_target: AARCH64,
    matches: &["raspberrypi,5-model-b", "brcm,bcm2712", "raspberry pi 5"],
    accelerators: &[Accelerator::VideoCore, Accelerator::Hailo],
    engine: Engine::Tract,
    notes: "4x Cortex-A76 with dotprod but no i8mm; VideoCore VII and the \
            Hailo AI Kit are not used by tailor's ONNX graphs",
};

/// Boards built on the Rockchip RK3588(S).
pub const RK3588: DeviceProfile = DeviceProfile {
    name: "rk3588",
    rust_target: AARCH64,
    matches: &["rockchip,rk3588", "rk3588"],
    accelerators: &[Accelerator::RockchipNpu],
    engine: Engine::Tract,
    notes: "the RKNPU runs RKNN models, not an ORT execution provider tailor \
            ships: graphs run on the CPU (4x A76 + 4x A55)",
};

/// Every profile; specific ones first, the generic per-architecture fallbacks last.
pub const PROFILES: &[DeviceProfile] = &[
    JETSON_ORIN,
    JETSON_XAVIER,
    RPI5,
    RK3588,
    GENERIC_AARCH64,
    GENERIC_X86_64,
];

/// Any other 64-bit Arm Linux device.
pub const GENERIC_AARCH64: DeviceProfile = DeviceProfile {
    name: "generic-aarch64",
    rust_target: AARCH64,
    matches: &[],
    accelerators: &[],
    engine: Engine::Tract,
    notes: "any other 64-bit Arm Linux device: CPU only",
};

/// Any x86_64 Linux machine.
pub const GENERIC_X86_64: DeviceProfile = DeviceProfile {
    name: "generic-x86_64",
    rust_target: X86_64,
    matches: &[],
    accelerators: &[],
    engine: Engine::Tract,
    notes: "any x86_64 Linux machine: CPU only",
};

/// The profile for a device with this device-tree `model`, `compatible` list
/// and CPU architecture (`uname -m` spelling; `arm64`/`amd64` are accepted).
///
/// A specific profile wins when one of its [`DeviceProfile::matches`] is in
/// the model or in a compatible entry; otherwise the generic profile of the
/// architecture. tailor ships binaries for aarch64 and x86_64 only, so any
/// other architecture gets `generic-aarch64`, whose engine (tract on the CPU)
/// is the one that runs everywhere.
pub fn match_profile(
    model: Option<&str>,
    compatible: &[String],
    arch: &str,
) -> &'static DeviceProfile {
    let facts: Vec<String> = model
        .into_iter()
        .chain(compatible.iter().map(String::as_str))
        .map(str::to_ascii_lowercase)
        .collect();
    let specific = PROFILES.iter().find(|profile| {
        profile
            .matches
            .iter()
            .any(|needle| facts.iter().any(|fact| fact.contains(needle)))
    });
    specific.unwrap_or(match arch {
        "x86_64" | "amd64" => &GENERIC_X86_64,
        _ => &GENERIC_AARCH64,
    })
}

/// The profile called `name`, if any.
pub fn by_name(name: &str) -> Option<&'static DeviceProfile> {
    PROFILES.iter().find(|profile| profile.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn orin_nano_matches_by_compatible() {
        let compatible = strings(&[
            "nvidia,p3768-0000+p3767-0005",
            "nvidia,p3767-0005",
            "nvidia,tegra234",
        ]);
        let profile = match_profile(None, &compatible, "aarch64");
        assert_eq!(profile.name, "jetson-orin");
    }

    #[test]
    fn orin_matches_by_model_alone() {
        let model = Some("NVIDIA Jetson AGX Orin Developer Kit");
        assert_eq!(match_profile(model, &[], "aarch64").name, "jetson-orin");
    }

    #[test]
    fn xavier_is_not_orin() {
        let compatible = strings(&["nvidia,p3668-0001", "nvidia,tegra194"]);
        let model = Some("NVIDIA Jetson Xavier NX Developer Kit");
        assert_eq!(
            match_profile(model, &compatible, "aarch64").name,
            "jetson-xavier"
        );
    }

    #[test]
    fn rpi5_and_rk3588_match_case_insensitively() {
        let model = Some("Raspberry Pi 5 Model B Rev 1.0");
        assert_eq!(match_profile(model, &[], "aarch64").name, "rpi5");
        let compatible = strings(&["radxa,rock-5b", "rockchip,rk3588"]);
        assert_eq!(match_profile(None, &compatible, "aarch64").name, "rk3588");
        let model = Some("Radxa ROCK 5B RK3588S");
        assert_eq!(match_profile(model, &[], "aarch64").name, "rk3588");
    }

    #[test]
    fn unknown_boards_fall_back_by_architecture() {
        let compatible = strings(&["raspberrypi,4-model-b", "brcm,bcm2711"]);
        assert_eq!(
            match_profile(Some("Raspberry Pi 4 Model B"), &compatible, "aarch64").name,
            "generic-aarch64"
        );
        assert_eq!(match_profile(None, &[], "x86_64").name, "generic-x86_64");
        assert_eq!(match_profile(None, &[], "amd64").name, "generic-x86_64");
        assert_eq!(match_profile(None, &[], "arm64").name, "generic-aarch64");
        let fallback = match_profile(None, &[], "x86_64");
        assert_eq!(by_name(fallback.name), Some(fallback));
        assert_eq!(by_name("no-such-board"), None);
    }

    #[test]
    fn profile_invariants_hold() {
        for (i, profile) in PROFILES.iter().enumerate() {
            assert!(
                PROFILES[..i].iter().all(|p| p.name != profile.name),
                "duplicate profile name {}",
                profile.name
            );
            assert!(
                profile.matches.iter().all(|m| *m == m.to_ascii_lowercase()),
                "{}: matches must be lowercase to compare case-insensitively",
                profile.name
            );
            let arch = profile.rust_target.split('-').next().unwrap();
            assert!(matches!(arch, "aarch64" | "x86_64"), "{}", profile.name);
        }
    }
}
