//! The boards `exporter pack` builds for, one entry each: the device profile
//! it runs, how to build for it, how much memory a model may take there, and
//! what its service needs. Adding a board is adding an entry to [`BOARDS`].

use core::fmt;

use serde::Serialize;

use crate::template::{self, TemplateError};
use crate::{
    DeviceProfile, GENERIC_AARCH64, GENERIC_X86_64, JETSON_ORIN, JETSON_XAVIER, RK3588, RPI5,
};

/// A CPU architecture tailor ships the runtime for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Aarch64,
    X86_64,
}

impl Arch {
    /// The Rust target triple the runtime is built for.
    pub const fn rust_target(self) -> &'static str {
        match self {
            Self::Aarch64 => "aarch64-unknown-linux-gnu",
            Self::X86_64 => "x86_64-unknown-linux-gnu",
        }
    }

    /// `e_machine` of an ELF file for this architecture.
    pub const fn elf_machine(self) -> u16 {
        match self {
            Self::Aarch64 => 183,
            Self::X86_64 => 62,
        }
    }

    /// Debian's name for it (a `.deb`'s `Architecture:`).
    pub const fn debian(self) -> &'static str {
        match self {
            Self::Aarch64 => "arm64",
            Self::X86_64 => "amd64",
        }
    }

    /// The architecture of ELF machine `machine`, if tailor ships for it.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        [Self::Aarch64, Self::X86_64]
            .into_iter()
            .find(|a| a.elf_machine() == machine)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Aarch64 => "aarch64",
            Self::X86_64 => "x86_64",
        })
    }
}

/// How the int8 graphs a board runs encode their activations: the engine
/// decides which run fast, or at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Int8Activations {
    /// Symmetric int8, zero point 0: the only form TensorRT takes.
    S8,
    /// Asymmetric uint8: ONNX Runtime's CPU kernels (uint8 × int8) and
    /// QNN's HTP; tract runs either.
    U8,
}

impl Int8Activations {
    /// The name in manifests and on command lines: `s8` or `u8`.
    pub fn name(self) -> &'static str {
        match self {
            Int8Activations::S8 => "s8",
            Int8Activations::U8 => "u8",
        }
    }
}

/// A board `exporter pack --target` builds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Board {
    /// The `--target` name.
    pub name: &'static str,
    /// The profile the runtime's probe matches on this board.
    pub profile: &'static DeviceProfile,
    pub arch: Arch,
    /// The newest glibc the runtime may need (`targets/cross/build.sh`'s floor).
    pub glibc_floor: &'static str,
    /// RAM of the board's smallest variant, in MiB: what `pack` filters by.
    pub ram_mb: u32,
    /// The share of RAM, in percent, a model may take (the rest is the OS,
    /// the engine and, on a Jetson, the GPU's share of the same memory).
    pub model_percent: u8,
    /// `engine` in runtime.toml (`runtime --engine`).
    pub engine: &'static str,
    /// `provider` in runtime.toml (`runtime --provider`).
    pub provider: &'static str,
    /// The int8 variants `pack` keeps (`exporter quantize --encoding`).
    pub int8_activations: Int8Activations,
    /// Groups the service joins for device access (the Jetson GPU's nodes
    /// belong to `video` and `render`).
    pub groups: &'static [&'static str],
    /// Units the service starts after (nvpmodel sets the power mode the
    /// selection is keyed by).
    pub after: &'static [&'static str],
    /// systemd's `TimeoutStartSec`: selection measures candidates before the
    /// service is ready, and TensorRT builds an engine for each on first boot.
    pub start_timeout_s: u32,
    /// The unit's sandboxing lines particular to the board (after those
    /// every board gets).
    #[serde(skip)]
    pub sandbox: &'static str,
}

/// The glibc of JetPack 5's Ubuntu 20.04, the oldest board image (docs/deploy.md).
const GLIBC_FLOOR: &str = "2.31";
/// TensorRT's first engine builds for a search's candidates take minutes each.
const TENSORRT_START_S: u32 = 1800;
/// A CPU-only search measures at most a dozen candidates.
const CPU_START_S: u32 = 600;
/// A board without an accelerator needs no device node, no system call
/// beyond a service's and no writable code (tract compiles nothing at run
/// time). A Jetson's GPU stack (its device nodes, CUDA's JIT, its ioctls)
/// keeps these open: nothing here can check it there.
const CPU_SANDBOX: &str = "PrivateDevices=yes
ProtectClock=yes
SystemCallFilter=@system-service
MemoryDenyWriteExecute=yes";

/// Every board `pack` knows, by `--target` name.
pub const BOARDS: &[Board] = &[
    // NVIDIA's Orin Nano modules carry 4 GB or 8 GB, shared with the GPU.
    jetson("jetson-orin-nano", &JETSON_ORIN, 4096),
    // Xavier NX: 8 GB (a 16 GB module too); AGX Xavier: 32 or 64 GB.
    jetson("jetson-xavier", &JETSON_XAVIER, 8192),
    // Raspberry Pi 5: 2, 4, 8 or 16 GB.
    cpu_only("rpi5", &RPI5, Arch::Aarch64, 2048),
    // RK3588 boards (Radxa ROCK 5B, Orange Pi 5): 4 to 32 GB.
    cpu_only("rk3588", &RK3588, Arch::Aarch64, 4096),
    // Assumed: a 1 GB board (a Pi 3 or 4 class); --memory-mb for yours.
    cpu_only("generic-aarch64", &GENERIC_AARCH64, Arch::Aarch64, 1024),
    // Assumed: a 4 GB machine (an x86 mini PC); --memory-mb for yours.
    cpu_only("generic-x86_64", &GENERIC_X86_64, Arch::X86_64, 4096),
];

/// A Jetson: TensorRT through ONNX Runtime, the GPU's device groups, after
/// nvpmodel, 40% of the memory the CPU and GPU share.
const fn jetson(name: &'static str, profile: &'static DeviceProfile, ram_mb: u32) -> Board {
    Board {
        name,
        profile,
        arch: Arch::Aarch64,
        glibc_floor: GLIBC_FLOOR,
        ram_mb,
        model_percent: 40,
        engine: "ort",
        provider: "tensorrt",
        int8_activations: Int8Activations::S8,
        groups: &["video", "render"],
        after: &["nvpmodel.service"],
        start_timeout_s: TENSORRT_START_S,
        sandbox: "",
    }
}

/// A board whose graphs run on the CPU with tract: half its memory.
const fn cpu_only(
    name: &'static str,
    profile: &'static DeviceProfile,
    arch: Arch,
    ram_mb: u32,
) -> Board {
    Board {
        name,
        profile,
        arch,
        glibc_floor: GLIBC_FLOOR,
        ram_mb,
        model_percent: 50,
        engine: "tract",
        provider: "cpu",
        int8_activations: Int8Activations::U8,
        groups: &[],
        after: &[],
        start_timeout_s: CPU_START_S,
        sandbox: CPU_SANDBOX,
    }
}

/// The board whose `--target` name is `name`.
pub fn find(name: &str) -> Option<&'static Board> {
    BOARDS.iter().find(|b| b.name == name)
}

/// Where a pack's files live on the device.
pub mod layout {
    /// Everything but the configuration, the unit and the user's entry.
    pub const PREFIX: &str = "/opt/tailor";
    pub const RUNTIME: &str = "/opt/tailor/bin/runtime";
    pub const BUNDLE: &str = "/opt/tailor/bundle";
    /// The installer, kept on the device to uninstall.
    pub const INSTALLER: &str = "/opt/tailor/install.sh";
    pub const README: &str = "/opt/tailor/README.md";
    /// Decisions made on a reference board (`exporter pack --decisions`):
    /// inside the bundle, so an upgrade swaps them with the bundle they
    /// were made with; TensorRT's caches, when shipped, sit beside them.
    pub const SHIPPED_DECISIONS: &str = "/opt/tailor/bundle/shipped/decisions.postcard";
    /// The configuration as packed: install.sh puts it in [`CONFIG`] unless
    /// that was edited on the device (a dpkg conffile would prompt instead).
    pub const PACKED_CONFIG: &str = "/opt/tailor/runtime.toml";
    pub const CONFIG: &str = "/etc/tailor/runtime.toml";
    pub const UNIT: &str = "/etc/systemd/system/tailor.service";
    pub const SYSUSERS: &str = "/usr/lib/sysusers.d/tailor.conf";
}

/// The memory limit written to runtime.toml.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryLimit {
    /// `memory_fraction`: a share of the memory available when selecting,
    /// so a larger variant of the board gets a larger limit.
    Fraction(f64),
    /// `memory_mb`: a fixed limit.
    Mb(f64),
}

/// What the deployer decides for the service on top of the board's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// `latency_ms`: the application's limit, not the board's.
    pub latency_ms: f64,
    pub memory: MemoryLimit,
    /// `listen`: `host:port` or `unix:PATH`.
    pub listen: String,
    /// The pack ships a reference board's decisions: `shipped` points at
    /// them ([`layout::SHIPPED_DECISIONS`]).
    pub shipped: bool,
}

/// The default `listen`: loopback only.
pub const LISTEN: &str = "127.0.0.1:8470";

/// A pack's text files for one board, rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFiles {
    pub unit: String,
    pub config: String,
    pub install: String,
    pub readme: String,
    pub sysusers: String,
}

/// The `.deb`'s control files for one board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebControl {
    pub control: String,
    pub postinst: String,
    pub prerm: String,
    pub postrm: String,
}

impl Board {
    /// The memory, in bytes, the sub-networks packed for this board may
    /// predict to need: [`Board::model_percent`] of the smallest variant's RAM.
    pub const fn model_budget_bytes(&self) -> u64 {
        self.ram_mb as u64 * 1024 * 1024 * self.model_percent as u64 / 100
    }

    /// The memory limit a service on this board gets unless told otherwise.
    pub fn default_memory(&self) -> MemoryLimit {
        MemoryLimit::Fraction(f64::from(self.model_percent) / 100.0)
    }

    /// Renders the unit, runtime.toml, installer, README and sysusers entry.
    pub fn service_files(&self, service: &Service) -> Result<ServiceFiles, TemplateError> {
        let (memory_key, memory_value) = match service.memory {
            MemoryLimit::Fraction(f) => ("memory_fraction", f),
            MemoryLimit::Mb(mb) => ("memory_mb", mb),
        };
        let paths = [
            ("prefix", layout::PREFIX),
            ("runtime", layout::RUNTIME),
            ("bundle", layout::BUNDLE),
            ("config", layout::CONFIG),
            ("shipped", layout::SHIPPED_DECISIONS),
            ("packed_config", layout::PACKED_CONFIG),
        ];
        let render = |t: &template::Template, extra: &[(&str, &str)]| {
            // The layout's paths are offered to every template; the values
            // particular to one must all be used.
            let used: Vec<(&str, &str)> = paths
                .iter()
                .copied()
                .filter(|(name, _)| t.text.contains(&format!("{{{{{name}}}}}")))
                .chain(extra.iter().copied())
                .collect();
            template::render(t, &used)
        };
        let board = [("board", self.name)];
        Ok(ServiceFiles {
            unit: render(
                &template::UNIT,
                &[
                    ("board", self.name),
                    ("after", &self.after.join(" ")),
                    ("groups", &self.groups.join(" ")),
                    ("start_timeout_s", &self.start_timeout_s.to_string()),
                    ("sandbox", self.sandbox),
                ],
            )?,
            config: render(
                &template::CONFIG,
                &[
                    ("board", self.name),
                    ("latency_ms", &toml_float(service.latency_ms)),
                    ("memory_key", memory_key),
                    ("memory_value", &toml_float(memory_value)),
                    ("engine", self.engine),
                    ("provider", self.provider),
                    ("listen", &service.listen),
                    ("shipped_off", if service.shipped { "" } else { "# " }),
                ],
            )?,
            install: render(
                &template::INSTALL,
                &[
                    ("board", self.name),
                    ("installer", layout::INSTALLER),
                    ("unit", layout::UNIT),
                    ("sysusers", layout::SYSUSERS),
                ],
            )?,
            readme: render(&template::README, &board)?,
            sysusers: render(&template::SYSUSERS, &[])?,
        })
    }

    /// Renders the `.deb`'s control file and maintainer scripts.
    pub fn deb_control(
        &self,
        version: &str,
        installed_kib: u64,
    ) -> Result<DebControl, TemplateError> {
        let installer = [("installer", layout::INSTALLER)];
        Ok(DebControl {
            control: template::render(
                &template::DEB_CONTROL,
                &[
                    ("board", self.name),
                    ("version", version),
                    ("arch", self.arch.debian()),
                    ("installed_kib", &installed_kib.to_string()),
                ],
            )?,
            postinst: template::render(&template::DEB_POSTINST, &installer)?,
            prerm: template::render(&template::DEB_PRERM, &installer)?,
            postrm: template::render(&template::DEB_POSTRM, &[("config", layout::CONFIG)])?,
        })
    }
}

/// A TOML float: `25.0`, not Rust's `25`, which TOML reads as an integer.
fn toml_float(v: f64) -> String {
    format!("{v:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_s_targets_and_a_ci_target_are_there() {
        let names: Vec<&str> = BOARDS.iter().map(|b| b.name).collect();
        assert_eq!(
            names,
            [
                "jetson-orin-nano",
                "jetson-xavier",
                "rpi5",
                "rk3588",
                "generic-aarch64",
                "generic-x86_64"
            ]
        );
        assert_eq!(find("rpi5").map(|b| b.ram_mb), Some(2048));
        assert_eq!(find("jetson-orin"), None, "profile names are not targets");
    }

    #[test]
    fn each_board_runs_a_known_profile_built_for_its_architecture() {
        for b in BOARDS {
            assert_eq!(
                crate::by_name(b.profile.name),
                Some(b.profile),
                "{}",
                b.name
            );
            assert_eq!(b.profile.rust_target, b.arch.rust_target(), "{}", b.name);
            assert!(b.model_percent > 0 && b.model_percent <= 100, "{}", b.name);
            let gpu = matches!(b.profile.engine, crate::Engine::Ort { .. });
            assert_eq!(
                gpu,
                b.engine == "ort",
                "{}: engine as the profile prefers",
                b.name
            );
        }
        assert_eq!(Arch::from_elf_machine(183), Some(Arch::Aarch64));
        assert_eq!(Arch::from_elf_machine(62), Some(Arch::X86_64));
        assert_eq!(
            Arch::from_elf_machine(40),
            None,
            "32-bit Arm is not shipped"
        );
    }

    #[test]
    fn the_budget_is_the_share_of_the_smallest_variant() {
        // 40% of 4 GiB.
        let orin = find("jetson-orin-nano").unwrap();
        assert_eq!(orin.model_budget_bytes(), 1_717_986_918);
        assert_eq!(orin.default_memory(), MemoryLimit::Fraction(0.4));
    }

    #[test]
    fn the_config_holds_the_limit_the_deployer_chose() {
        let rpi = find("rpi5").unwrap();
        let service = |memory| Service {
            latency_ms: 25.0,
            memory,
            listen: LISTEN.into(),
            shipped: false,
        };
        let files = rpi.service_files(&service(MemoryLimit::Mb(900.0))).unwrap();
        assert!(
            files.config.contains("\nmemory_mb = 900.0\n"),
            "{}",
            files.config
        );
        assert!(
            files.config.contains("\nlatency_ms = 25.0\n"),
            "{}",
            files.config
        );
        assert!(
            !files.config.contains("memory_fraction ="),
            "{}",
            files.config
        );
        let files = rpi.service_files(&service(rpi.default_memory())).unwrap();
        assert!(
            files.config.contains("\nmemory_fraction = 0.5\n"),
            "{}",
            files.config
        );
    }

    #[test]
    fn the_config_points_at_shipped_decisions_only_when_the_pack_has_them() {
        let rpi = find("rpi5").unwrap();
        let config = |shipped| {
            let service = Service {
                latency_ms: 25.0,
                memory: rpi.default_memory(),
                listen: LISTEN.into(),
                shipped,
            };
            rpi.service_files(&service).unwrap().config
        };
        let line = "shipped = \"/opt/tailor/bundle/shipped/decisions.postcard\"\n";
        let on = config(true);
        assert!(on.contains(&format!("\n{line}")), "{on}");
        let off = config(false);
        assert!(off.contains(&format!("\n# {line}")), "{off}");
    }

    #[test]
    fn only_the_jetsons_join_the_gpu_groups() {
        let files = |name| {
            let b = find(name).unwrap();
            let service = Service {
                latency_ms: 10.0,
                memory: b.default_memory(),
                listen: LISTEN.into(),
                shipped: false,
            };
            b.service_files(&service).unwrap()
        };
        let unit = files("jetson-orin-nano").unit;
        assert!(
            unit.contains("\nSupplementaryGroups=video render\n"),
            "{unit}"
        );
        assert!(unit.contains("\nTimeoutStartSec=1800\n"), "{unit}");
        let unit = files("rk3588").unit;
        assert!(unit.contains("\nSupplementaryGroups=\n"), "{unit}");
        assert!(unit.contains("\nTimeoutStartSec=600\n"), "{unit}");
    }
}
