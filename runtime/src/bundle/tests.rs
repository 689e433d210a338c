use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;

/// The tiny bundle's manifest, w32-d2's graph and the weights, in `dir`.
fn tiny_bundle(dir: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny");
    fs::create_dir_all(dir.join("graphs/weights")).unwrap();
    for file in [
        MANIFEST_POSTCARD,
        "graphs/w32-d2.onnx",
        "graphs/weights/w32.bin",
    ] {
        fs::copy(fixture.join(file), dir.join(file)).unwrap();
    }
}

#[test]
fn a_trusted_stamp_is_hashed_in_full_for_the_served_subnet_and_dropped_once_wrong() {
    let dir = tempfile::tempdir().unwrap();
    tiny_bundle(dir.path());
    let first = Bundle::open(dir.path()).unwrap();
    first.verify(&first.subnet("w32-d2").unwrap()).unwrap();
    let stamps = first.stamps();
    assert_eq!(stamps.len(), 2, "the graph and its weights");

    // Bit-rot: one byte flipped, size, inode and mtime kept.
    let weights = dir.path().join("graphs/weights/w32.bin");
    let file = File::options()
        .read(true)
        .write(true)
        .open(&weights)
        .unwrap();
    let mtime = file.metadata().unwrap().modified().unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, 7).unwrap();
    file.write_all_at(&[byte[0] ^ 1], 7).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);

    let bundle = Bundle::open(dir.path()).unwrap();
    let subnet = bundle.subnet("w32-d2").unwrap();
    bundle.trust(&stamps);
    // The stamps still match, so a candidate's check takes them.
    bundle.verify(&subnet).unwrap();
    let corrupted = |result: Result<(), BundleError>| matches!(result, Err(BundleError::Corrupted { path, .. }) if path.ends_with("w32.bin"));
    assert!(corrupted(bundle.verify_in_full(&subnet)));
    // Found wrong once, the file is hashed again rather than trusted.
    assert!(corrupted(bundle.verify(&subnet)));
}
