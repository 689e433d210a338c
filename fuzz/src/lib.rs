//! What several fuzz targets share: scratch files for readers that take a
//! path, the bundle directory the `bundle` target writes its manifest to,
//! and the panic hook of the targets that reach zune-jpeg.

use std::panic::{self, PanicHookInfo};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tailor_exporter::checkpoint::Checkpoint;

/// This process's scratch directory, on tmpfs when there is one.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        };
        dir.expect("creating the fuzzer's scratch directory")
    })
    .path()
}

/// `data` written to the scratch file `name`, for readers that take a path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    std::fs::write(&path, data).expect("writing a scratch file");
    path
}

/// Opens `data` as a teacher checkpoint and reads every tensor it lists.
pub fn open_checkpoint(data: &[u8]) {
    let Ok(checkpoint) = Checkpoint::open(&scratch_file("teacher", data)) else {
        return;
    };
    for name in checkpoint.names() {
        let tensor = checkpoint.tensor(name).expect("a listed tensor is found");
        let _ = tensor.first_non_finite();
        tensor.read_f32(0, 1.0, &mut vec![0.0; tensor.numel()]);
    }
}

/// A bundle directory whose `graphs/` is the tiny fixture bundle's; the
/// `bundle` target writes the manifest.
pub fn bundle_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch().join("bundle");
        std::fs::create_dir_all(&dir).expect("creating the scratch bundle");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../runtime/tests/fixtures/bundle-tiny/graphs");
        std::os::unix::fs::symlink(fixture, dir.join("graphs")).expect("linking the fixture");
        dir
    })
}

/// A check inside zune-jpeg that release builds (every build of ours) compile
/// out, which fuzz builds turn on in every crate: its arithmetic overflow
/// checks (the IDCT wraps on hostile coefficients) and drop_bits'
/// `debug_assert!(self.bits_left >= n)`, followed by a saturating
/// subtraction. Known upstream (etemesi254/zune-image#295, #300, #302, #377).
/// Any other panic in zune-jpeg, an index out of bounds say, still aborts.
fn is_upstream_debug_check(info: &PanicHookInfo<'_>) -> bool {
    let in_zune = info
        .location()
        .is_some_and(|at| at.file().contains("/zune-jpeg-"));
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("");
    let debug_only = message.contains("self.bits_left >= n")
        || (message.starts_with("attempt to ") && message.ends_with(" with overflow"));
    in_zune && debug_only
}

/// libFuzzer's panic hook aborts on every panic; this one lets the known
/// upstream debug-only checks ([`is_upstream_debug_check`]) unwind, to a
/// `catch_unwind` in the target or to the task that decodes.
pub fn let_upstream_debug_checks_unwind() {
    let abort = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !is_upstream_debug_check(info) {
            abort(info);
        }
    }));
}
