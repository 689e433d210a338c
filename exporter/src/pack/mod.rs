//! `exporter pack`: the one file a user copies to a board. It holds the
//! runtime built for the board, the bundle filtered to what fits the
//! board's memory, the service's configuration and systemd unit, a README
//! and an idempotent installer; optionally the same as a `.deb`.
//!
//! The archive (`tailor-BOARD/` inside) is laid out as the installer reads it:
//! `install.sh`, `README.md`, and `root/`, the files as they land on the
//! device (paths in [`tailor_targets::board::layout`]; the configuration
//! as packed, which the installer copies to `/etc` unless one there was
//! edited). A `.deb`'s data is that same `root/`, and its maintainer
//! scripts run the installer's configuration, user and service steps.

mod archive;
mod decisions;
mod elf;
mod filter;

use std::collections::BTreeSet;
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tailor_runtime::bundle::{Bundle, BundleError, MANIFEST_JSON, MANIFEST_POSTCARD};
use tailor_runtime::fs::StagedFile;
use tailor_runtime::manifest::{ActivationEncoding, Manifest};
use tailor_targets::board::{layout, Int8Activations, MemoryLimit, Service, ServiceFiles, LISTEN};
use tailor_targets::template::TemplateError;
use tailor_targets::{Arch, Board};

use archive::{ArchiveError, Entry};
pub use decisions::Shipped;
pub use filter::{Fate, Verdict};

/// What to pack, for which board.
#[derive(Debug, Clone)]
pub struct PackOptions<'a> {
    pub board: &'static Board,
    /// The runtime executable, built for the board's architecture.
    pub runtime: &'a Path,
    /// Sub-networks packed even when predicted over the memory budget.
    pub keep: &'a [String],
    /// The service's latency limit: the application's choice, so required.
    pub latency_ms: f64,
    /// A fixed memory limit in MiB, for filtering and for the service;
    /// `None`: the board's share of its smallest variant's RAM for
    /// filtering, the same share of the memory available for the service.
    pub memory_mb: Option<f64>,
    /// A reference board's decisions (`runtime cache export`) to ship.
    pub decisions: Option<&'a Path>,
    /// TensorRT's caches of that board, shipped with its decisions.
    pub trt_cache: Option<&'a Path>,
    /// Write a `.deb` beside the archive.
    pub deb: bool,
    /// Replace existing output files.
    pub force: bool,
}

/// What was packed.
#[derive(Debug, Clone, PartialEq)]
pub struct Packed {
    pub archive: PathBuf,
    pub deb: Option<PathBuf>,
    /// The memory budget sub-networks were judged against, in bytes.
    pub budget_bytes: u64,
    /// Every sub-network of the bundle, with what happened to it.
    pub verdicts: Vec<Verdict>,
    /// Files of the bundle packed (graphs, weights, manifests).
    pub bundle_files: usize,
    /// Bytes of every file installed on the device.
    pub installed_bytes: u64,
    /// What was shipped of a reference board (`--decisions`).
    pub shipped: Option<Shipped>,
}

/// Why a pack could not be written. Nothing is left at the destination.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    #[error("{0}: the pack's name must end in .tar.gz")]
    NotTarGz(PathBuf),
    #[error("no runtime binary at {path}: {how}, or name one with --runtime-bin PATH")]
    NoRuntime { path: PathBuf, how: &'static str },
    #[error("{0} is not a 64-bit little-endian ELF executable")]
    NotElf(PathBuf),
    #[error("{path} is an ELF executable for machine {machine}, which tailor does not ship for")]
    UnknownMachine { path: PathBuf, machine: u16 },
    #[error("{path} is built for {found}, but {board} runs {expected}")]
    WrongArch {
        path: PathBuf,
        found: Arch,
        board: &'static str,
        expected: Arch,
    },
    #[error("{0}")]
    Limit(String),
    #[error("--keep {id}: {bundle} has no such sub-network")]
    UnknownKeep { id: String, bundle: PathBuf },
    #[error("nothing in {bundle} fits {board}'s budget of {budget_mib:.0} MiB: the smallest, {smallest}, is predicted to need {need_mib:.1} MiB (pass --memory-mb or --keep)")]
    NothingFits {
        bundle: PathBuf,
        board: &'static str,
        budget_mib: f64,
        smallest: String,
        need_mib: f64,
    },
    #[error("{0}: the manifest lists no sub-network")]
    Empty(PathBuf),
    #[error("shipping decisions")]
    Decisions(#[from] tailor_runtime::select::ShippedError),
    #[error("none of the decisions in {} was made with the bundle packed ({bundle}): they were made with {made_with}; pack the bundle the reference board ran, with its --memory-mb and --keep", path.display())]
    ForeignDecisions {
        path: PathBuf,
        bundle: String,
        made_with: String,
    },
    #[error("--trt-cache {}: {why}", path.display())]
    TrtCache { path: PathBuf, why: String },
    #[error("checking the bundle")]
    Bundle(#[from] BundleError),
    #[error("rendering the service files")]
    Template(#[from] TemplateError),
    #[error("reading {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// Where `targets/cross/build.sh` (or `cargo build --profile device --target`)
/// leaves the runtime for `board`, under the cargo target directory.
pub fn built_runtime(target_dir: &Path, board: &Board) -> PathBuf {
    target_dir
        .join(board.arch.rust_target())
        .join("device")
        .join("runtime")
}

/// How to build the runtime for an architecture.
fn how_to_build(arch: Arch) -> &'static str {
    match arch {
        Arch::Aarch64 => "build it with targets/cross/build.sh (docs/deploy.md)",
        Arch::X86_64 => "build it with cargo build --profile device -p tailor-runtime --bin runtime --target x86_64-unknown-linux-gnu",
    }
}

/// The `.deb` written beside `archive` (`x.tar.gz` -> `x.deb`).
pub fn deb_path(archive: &Path) -> Result<PathBuf, PackError> {
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .filter(|stem| !stem.is_empty())
        .ok_or_else(|| PackError::NotTarGz(archive.to_owned()))?;
    Ok(archive.with_file_name(format!("{name}.deb")))
}

/// Packs `bundle` for `options.board` into `out` (a `.tar.gz`), and a
/// `.deb` beside it when asked. Both are written to temporary files and
/// renamed into place once complete.
pub fn pack(bundle_dir: &Path, out: &Path, options: &PackOptions) -> Result<Packed, PackError> {
    let board = options.board;
    let deb = deb_path(out)?;
    for path in std::iter::once(out).chain(options.deb.then_some(deb.as_path())) {
        if path.exists() && !options.force {
            return Err(PackError::Exists(path.to_owned()));
        }
    }
    check_runtime(options.runtime, board)?;
    let service = Service {
        latency_ms: positive(options.latency_ms, "--latency-ms")?,
        memory: match options.memory_mb {
            Some(mb) => MemoryLimit::Mb(positive(mb, "--memory-mb")?),
            None => board.default_memory(),
        },
        listen: LISTEN.to_owned(),
        shipped: options.decisions.is_some(),
    };
    let budget_bytes = match options.memory_mb {
        Some(mb) => (mb * 1024.0 * 1024.0) as u64,
        None => board.model_budget_bytes(),
    };

    let bundle = Bundle::open(bundle_dir)?;
    let (verdicts, filtered) = filter_bundle(&bundle, board, budget_bytes, options.keep)?;
    let rendered = board.service_files(&service)?;
    let top = [
        Entry::bytes("install.sh", 0o755, rendered.install.clone()),
        Entry::bytes("README.md", 0o644, rendered.readme.clone()),
    ];
    let (mut tree, bundle_files) = device_tree(&bundle, &filtered, options.runtime, rendered)?;
    let shipped = match options.decisions {
        Some(file) => {
            let identity = tailor_runtime::fs::sha256(&filtered.to_postcard());
            let (entries, shipped) = decisions::entries(file, options.trt_cache, &identity)?;
            tree.extend(entries);
            Some(shipped)
        }
        None => None,
    };
    let installed_bytes = tree
        .iter()
        .map(Entry::len)
        .sum::<Result<u64, _>>()
        .map_err(|e| e.into_pack_error(out))?;
    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let prefix = format!("tailor-{}/", board.name);
    let archive = stage(out, |file| {
        let groups = [
            (prefix.clone(), &top[..]),
            (format!("{prefix}root/"), &tree[..]),
        ];
        archive::tar_gz(file, &groups, mtime).map(drop)
    })?;
    let deb_file = options
        .deb
        .then(|| write_deb(&deb, board, &tree, installed_bytes, mtime))
        .transpose()?;
    let archive = persist(archive, options.force)?;
    let deb = match deb_file {
        Some(deb_file) => match persist(deb_file, options.force) {
            Ok(path) => Some(path),
            Err(e) => {
                // Both or neither.
                let _ = fs::remove_file(&archive);
                return Err(e);
            }
        },
        None => None,
    };
    Ok(Packed {
        archive,
        deb,
        budget_bytes,
        verdicts,
        bundle_files,
        installed_bytes,
        shipped,
    })
}

/// Judges the bundle's sub-networks against the budget; the manifest of
/// those packed, whose files are verified against it.
fn filter_bundle<'b>(
    bundle: &'b Bundle,
    board: &'static Board,
    budget_bytes: u64,
    keep: &[String],
) -> Result<(Vec<Verdict>, Manifest<'b>), PackError> {
    let manifest = bundle.manifest();
    let encoding = match board.int8_activations {
        Int8Activations::S8 => ActivationEncoding::S8,
        Int8Activations::U8 => ActivationEncoding::U8,
    };
    let verdicts =
        filter::judge(&manifest.subnets, budget_bytes, encoding, keep).map_err(|id| {
            PackError::UnknownKeep {
                id: id.to_owned(),
                bundle: bundle.dir().to_owned(),
            }
        })?;
    let kept: Vec<_> = manifest
        .subnets
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.fate.packed())
        .map(|(s, _)| s.clone())
        .collect();
    if kept.is_empty() {
        let Some(smallest) = verdicts.iter().min_by_key(|v| v.footprint_bytes) else {
            return Err(PackError::Empty(bundle.dir().to_owned()));
        };
        return Err(PackError::NothingFits {
            bundle: bundle.dir().to_owned(),
            board: board.name,
            budget_mib: budget_bytes as f64 / MIB,
            smallest: smallest.id.clone(),
            need_mib: smallest.footprint_bytes as f64 / MIB,
        });
    }
    // What ships is what the manifest promises: a corrupted file stops here.
    for subnet in &kept {
        bundle.verify(subnet)?;
    }
    if let Some(c) = &manifest.calibration {
        bundle.verify_data(&c.ranges)?;
    }
    let filtered = Manifest {
        format_version: manifest.format_version,
        teacher: manifest.teacher.clone(),
        subnets: kept,
        calibration: manifest.calibration.clone(),
    };
    Ok((verdicts, filtered))
}

/// The files as they land on the device (paths relative to `/`), and how
/// many of them are the bundle's.
fn device_tree(
    bundle: &Bundle,
    filtered: &Manifest<'_>,
    runtime: &Path,
    rendered: ServiceFiles,
) -> Result<(Vec<Entry>, usize), PackError> {
    let root = |path: &str| path.trim_start_matches('/').to_owned();
    let bundle_root = root(layout::BUNDLE);
    // Only the files a packed sub-network reads, each once, and the
    // calibration's ranges the manifest names.
    let files: BTreeSet<&str> = filtered
        .subnets
        .iter()
        .flat_map(|s| std::iter::once(s.onnx).chain(s.weights.iter().map(|w| w.path)))
        .chain(filtered.calibration.iter().map(|c| c.ranges.path))
        .collect();
    let mut tree = vec![
        Entry::file(root(layout::RUNTIME), 0o755, runtime),
        Entry::bytes(
            format!("{bundle_root}/{MANIFEST_JSON}"),
            0o644,
            filtered.to_json(),
        ),
        Entry::bytes(
            format!("{bundle_root}/{MANIFEST_POSTCARD}"),
            0o644,
            filtered.to_postcard(),
        ),
    ];
    // Every name stays inside the bundle: `Bundle::open` checked them.
    for file in &files {
        tree.push(Entry::file(
            format!("{bundle_root}/{file}"),
            0o644,
            &bundle.dir().join(file),
        ));
    }
    let bundle_files = tree.len() - 1;
    tree.extend([
        Entry::bytes(root(layout::PACKED_CONFIG), 0o644, rendered.config),
        Entry::bytes(root(layout::UNIT), 0o644, rendered.unit),
        Entry::bytes(root(layout::SYSUSERS), 0o644, rendered.sysusers),
        Entry::bytes(root(layout::INSTALLER), 0o755, rendered.install),
        Entry::bytes(root(layout::README), 0o644, rendered.readme),
    ]);
    Ok((tree, bundle_files))
}

/// Stages the `.deb`: `tree` as its data, the installer's system steps as
/// its maintainer scripts (which put runtime.toml in place: no conffile,
/// whose prompt on an edited one fails an unattended upgrade). The data tarball is
/// staged in a file of its own (ar needs its size first, and it holds the
/// weights).
fn write_deb(
    path: &Path,
    board: &'static Board,
    tree: &[Entry],
    installed_bytes: u64,
    mtime: u64,
) -> Result<StagedFile, PackError> {
    let control = board.deb_control(env!("CARGO_PKG_VERSION"), installed_bytes.div_ceil(1024))?;
    let control = [
        Entry::bytes("control", 0o644, control.control),
        Entry::bytes("postinst", 0o755, control.postinst),
        Entry::bytes("prerm", 0o755, control.prerm),
        Entry::bytes("postrm", 0o755, control.postrm),
    ];
    let data = stage(path, |file| {
        archive::tar_gz(file, &[(String::new(), tree)], mtime).map(drop)
    })?;
    stage(path, |file| {
        let control_tar = archive::tar_gz(Vec::new(), &[(String::new(), &control[..])], mtime)?;
        let mut data_tar = File::open(data.path())?;
        let data_len = data_tar.metadata()?.len();
        let members: [(&str, u64, &mut dyn Read); 3] = [
            ("debian-binary", 4, &mut &b"2.0\n"[..]),
            (
                "control.tar.gz",
                control_tar.len() as u64,
                &mut control_tar.as_slice(),
            ),
            ("data.tar.gz", data_len, &mut data_tar),
        ];
        archive::ar(file, members, mtime)?;
        Ok(())
    })
}

const MIB: f64 = 1024.0 * 1024.0;

impl ArchiveError {
    /// A source file that could not be read is named; otherwise the output
    /// `dest` could not be written.
    fn into_pack_error(self, dest: &Path) -> PackError {
        match self.source_file {
            Some(path) => PackError::Read {
                path,
                source: self.error,
            },
            None => PackError::Write {
                path: dest.to_owned(),
                source: self.error,
            },
        }
    }
}

fn positive(v: f64, flag: &str) -> Result<f64, PackError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(PackError::Limit(format!(
            "{flag} {v} is not a positive number"
        )))
    }
}

fn check_runtime(path: &Path, board: &'static Board) -> Result<(), PackError> {
    if !path.is_file() {
        return Err(PackError::NoRuntime {
            path: path.to_owned(),
            how: how_to_build(board.arch),
        });
    }
    let found = elf::arch(path)?;
    if found != board.arch {
        return Err(PackError::WrongArch {
            path: path.to_owned(),
            found,
            board: board.name,
            expected: board.arch,
        });
    }
    Ok(())
}

/// An output written completely beside `dest`, waiting to be renamed into
/// place ([`persist`]); dropped, it is removed.
fn stage(
    dest: &Path,
    write: impl FnOnce(&mut StagedFile) -> Result<(), ArchiveError>,
) -> Result<StagedFile, PackError> {
    let write_err = |source| PackError::Write {
        path: dest.to_owned(),
        source,
    };
    let mut file = StagedFile::create(dest).map_err(write_err)?;
    write(&mut file).map_err(|e| e.into_pack_error(dest))?;
    file.flush().map_err(write_err)?;
    // Whatever the umask: a pack is for copying around.
    fs::set_permissions(file.path(), Permissions::from_mode(0o644)).map_err(write_err)?;
    Ok(file)
}

/// Renames `file` into place; without `force`, never over an existing file.
fn persist(file: StagedFile, force: bool) -> Result<PathBuf, PackError> {
    let dest = file.dest().to_owned();
    let persisted = if force {
        file.commit()
    } else {
        file.commit_new()
    };
    persisted.map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => PackError::Exists(dest.clone()),
        _ => PackError::Write {
            path: dest.clone(),
            source,
        },
    })?;
    Ok(dest)
}
