//! Issue 20: a `.pth` whose `data.pkl` asks for unbounded memory or recursion is refused
//! quickly, with a message, instead of exhausting memory or the stack.

use std::io::Write;
use std::path::Path;

use tailor_exporter::checkpoint::{Checkpoint, ErrorKind};

/// A `torch.save`-shaped archive holding `pickle` as `archive/data.pkl`.
fn write_pth(dir: &Path, pickle: &[u8]) -> std::path::PathBuf {
    let path = dir.join("hostile.pth");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.finish().unwrap();
    path
}

/// The pickle error `Checkpoint::open` reports for `pickle`, as text.
fn pickle_error(pickle: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let err = Checkpoint::open(&write_pth(dir.path(), pickle)).unwrap_err();
    match err.kind() {
        ErrorKind::Pickle { source, .. } => source.to_string(),
        other => panic!("expected a pickle error, got {other}"),
    }
}

#[test]
fn dup_tuple2_bomb_is_refused_not_allocated() {
    // EMPTY_TUPLE, then (DUP, TUPLE2) x 60: each pair doubles the value, so a copy would
    // hold 2^60 tuples; the stream is 122 bytes.
    let mut pickle = vec![0x80, 0x02, b')'];
    for _ in 0..60 {
        pickle.extend([b'2', 0x86]);
    }
    pickle.push(b'.');
    let message = pickle_error(&pickle);
    assert!(message.contains("DUP bomb"), "{message}");
}

#[test]
fn memo_get_bomb_is_refused_not_allocated() {
    // The value doubles through the memo instead: PUT 0, GET 0, GET 0, TUPLE2, repeated.
    let mut pickle = vec![0x80, 0x02, b')'];
    for _ in 0..60 {
        pickle.extend([b'q', 0, b'0', b'h', 0, b'h', 0, 0x86]);
    }
    pickle.push(b'.');
    let message = pickle_error(&pickle);
    assert!(message.contains("memo or DUP bomb"), "{message}");
}

#[test]
fn deep_nesting_is_refused_not_recursed() {
    // 1 wrapped in 200 000 one-tuples: dropping or cloning that recurses past the stack.
    let mut pickle = vec![0x80, 0x02, b'K', 1];
    pickle.extend(std::iter::repeat_n(0x85, 200_000));
    pickle.push(b'.');
    let message = pickle_error(&pickle);
    assert!(message.contains("deeper than"), "{message}");
}
