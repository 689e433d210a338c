//! What several fuzz targets share: scratch files for readers that take a
//! path, and the bundle directory the `bundle` target writes its manifest to.

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
