//! Exports all 143 sub-networks of a ViT-L-shaped POA teacher (random
//! weights in the real shapes, generated here) and compares with `cp` of the
//! same number of bytes, measured in the same run.
//!
//! Usage: `cargo bench -p tailor-exporter --bench export [-- --runs N --dir DIR --keep]`

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tailor_exporter::synthetic::{write_vit_teacher, VIT_L16};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut dir, mut keep) = (
        3usize,
        std::env::temp_dir().join("tailor-export-bench"),
        false,
    );
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--dir" => dir = PathBuf::from(args.next().expect("--dir DIR")),
            // Leave the teacher and the last bundle for inspection.
            "--keep" => keep = true,
            _ => {} // cargo bench passes --bench
        }
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let teacher = dir.join("teacher.safetensors");
    let t0 = Instant::now();
    let teacher_bytes = write_vit_teacher(&teacher, &VIT_L16, 42).unwrap();
    fs::write(dir.join("config.yaml"), CONFIG).unwrap();
    eprintln!(
        "generated {} ({:.2} GB) in {:.1?}",
        teacher.display(),
        teacher_bytes as f64 / 1e9,
        t0.elapsed()
    );

    let exporter = env!("CARGO_BIN_EXE_exporter");
    let bundle = dir.join("bundle");
    let copy_src = dir.join("copy-src.bin");
    let copy_dst = dir.join("copy-dst.bin");
    let (mut export_s, mut cp_s, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let mut bundle_bytes = 0;
    for run in 0..runs {
        let _ = fs::remove_dir_all(&bundle);
        settle();
        let (elapsed, peak) = timed_peak_rss(Command::new(exporter).args([
            "--all-subnets",
            teacher.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "-q",
        ]));
        bundle_bytes = dir_bytes(&bundle);
        if run == 0 {
            // The baseline copies exactly as many bytes as the export writes.
            write_random(&copy_src, bundle_bytes);
        }
        let _ = fs::remove_file(&copy_dst);
        settle();
        let (cp_elapsed, _) = timed_peak_rss(Command::new("cp").args([&copy_src, &copy_dst]));
        eprintln!(
            "run {run}: export {:.2} s ({:.2} GB/s, peak RSS {:.2} GB), cp {:.2} s",
            elapsed.as_secs_f64(),
            bundle_bytes as f64 / 1e9 / elapsed.as_secs_f64(),
            peak as f64 / 1e9,
            cp_elapsed.as_secs_f64()
        );
        export_s.push(elapsed.as_secs_f64());
        cp_s.push(cp_elapsed.as_secs_f64());
        rss.push(peak as f64);
    }
    let (e, c, r) = (median(&mut export_s), median(&mut cp_s), median(&mut rss));
    println!("| metric | median of {runs} runs |");
    println!("|---|---|");
    println!("| sub-networks | 143 (11 widths × 13 depths) |");
    println!(
        "| teacher (fp32 safetensors) | {:.2} GB |",
        teacher_bytes as f64 / 1e9
    );
    println!("| bundle written | {:.2} GB |", bundle_bytes as f64 / 1e9);
    println!("| export wall time | {e:.2} s |");
    println!(
        "| export throughput | {:.2} GB/s |",
        bundle_bytes as f64 / 1e9 / e
    );
    println!(
        "| `cp` of the same bytes | {c:.2} s ({:.2} GB/s) |",
        bundle_bytes as f64 / 1e9 / c
    );
    println!("| export / cp | {:.2}× |", e / c);
    println!("| peak RSS | {:.2} GB |", r / 1e9);
    println!(
        "| peak RSS / teacher size | {:.2}× |",
        r / teacher_bytes as f64
    );
    if !keep {
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Writes back what earlier steps left dirty, so neither side pays for the other.
fn settle() {
    assert!(Command::new("sync").status().unwrap().success());
}

/// Runs `cmd`, returning its wall time and peak RSS (VmHWM, polled every 5 ms
/// until exit; the high-water mark only grows, so the last reading is it).
fn timed_peak_rss(cmd: &mut Command) -> (Duration, u64) {
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(status) = fs::read_to_string(&status_path) {
            if let Some(kb) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                peak = peak.max(
                    kb.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0)
                        * 1024,
                );
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{cmd:?} failed");
            return (start.elapsed(), peak);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

fn write_random(path: &Path, bytes: u64) {
    let mut out = BufWriter::with_capacity(1 << 22, fs::File::create(path).unwrap());
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

const CONFIG: &str = "student:
  arch: vit_dynamic
  patch_size: 16
  min_embed_dim: 384
  max_embed_dim: 1024
  min_depth: 12
  max_depth: 24
  head_dim: 64
  width_interval: 1
  depth_interval: 1
crops:
  global_crops_size: 224
";
