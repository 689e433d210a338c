//! Issue 20: an `.npz` from elsewhere cannot make `calibrate --data`/`--head` allocate what
//! its zip or `.npy` headers merely claim, nor wrap a shape product past the length check.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use tailor_calibration::npz;

/// Counts the bytes each thread holds, and the most it held: each test runs on its own thread.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counters are plain thread-local cells.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|live| {
            live.set(live.get() + layout.size());
            PEAK.with(|peak| peak.set(peak.get().max(live.get())));
        });
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(layout.size())));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A version 1 `.npy` of `descr` and `shape`, followed by `data`.
fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// A deflated archive whose member `x.npy` is `chunks` of bytes.
fn archive(chunks: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("x.npy", deflated).unwrap();
    for chunk in chunks {
        zip.write_all(&chunk).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[test]
fn deflate_bomb_is_read_only_as_far_as_its_shape() {
    // Four declared bytes, then 512 MiB of zeros that deflate to about half a MiB.
    const ZEROS: usize = 512 << 20;
    let chunk = vec![0u8; 1 << 20];
    let bomb = archive(
        std::iter::once(npy("|u1", "(4,)", &[1, 2, 3, 4]))
            .chain(std::iter::repeat_n(chunk, ZEROS >> 20)),
    );
    assert!(bomb.len() < 4 << 20, "the bomb is {} bytes", bomb.len());
    let held = PEAK.with(|peak| {
        peak.set(0);
        LIVE.with(Cell::get)
    });
    let err = npz::read(&bomb).unwrap_err();
    let peak = PEAK.with(Cell::get) - held;
    assert!(
        err.contains("x.npy") && err.contains("needs 4 bytes"),
        "{err}"
    );
    // The archive itself is borrowed; reading it may hold a few inflater buffers.
    assert!(
        peak < 4 << 20,
        "reading the bomb held {peak} bytes at its peak"
    );
}

#[test]
fn shape_product_that_overflows_is_refused() {
    // 2^62 · 2^62 · 16 wraps to 0 in usize, which the empty data would match.
    let overflow = npy("<f4", "(4611686018427387904, 4611686018427387904, 16)", &[]);
    let err = npz::read(&archive([overflow])).unwrap_err();
    assert!(err.contains("larger than any array"), "{err}");
    // Within usize, but more elements than ndarray can index (isize::MAX bytes).
    let huge = npy("|u1", "(0, 9223372036854775807, 2)", &[]);
    let err = npz::read(&archive([huge])).unwrap_err();
    assert!(err.contains("larger than any array"), "{err}");
}

#[test]
fn oversized_npy_header_is_refused_unread() {
    // A version 2 header claiming 4 GiB.
    let mut member = b"\x93NUMPY\x02\x00".to_vec();
    member.extend(u32::MAX.to_le_bytes());
    let err = npz::read(&archive([member])).unwrap_err();
    assert!(err.contains("numpy's limit"), "{err}");
}
