//! Exports every sub-network of a POA teacher in real shapes (random
//! weights, generated here): the ViT-L grid (143), the ResNet grid (465) or
//! POA's Swin grid (C = 128, depths [2, 2, 18, 2]: 39),
//! and compares with `cp` of the same number of bytes, measured in the same run.
//!
//! Usage: `cargo bench -p tailor-exporter --bench export [-- --family vit|resnet|swin --runs N --dir DIR --keep]`

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tailor_exporter::family::{resnet, swin};
use tailor_exporter::synthetic::{
    write_resnet_teacher, write_swin_teacher, write_vit_teacher, VIT_L16,
};

/// One teacher to export.
struct Case {
    /// The grid, for the table.
    grid: &'static str,
    config: &'static str,
    /// Writes the teacher, returning its size.
    write: fn(&Path) -> u64,
}

const VIT_L: Case = Case {
    grid: "143 (11 widths × 13 depths)",
    config: VIT_CONFIG,
    write: |path| write_vit_teacher(path, &VIT_L16, 42).unwrap(),
};

const RESNET: Case = Case {
    grid: "465 (3 zipped mid widths × 155 stage depths)",
    config: RESNET_CONFIG,
    write: |path| write_resnet_teacher(path, &resnet::POA_RESNET, 42).unwrap(),
};

const SWIN: Case = Case {
    grid: "39 (3 widths × 13 stage-3 depths)",
    config: SWIN_CONFIG,
    write: |path| {
        let poa_swin = swin::Geometry {
            max_width: 128,
            max_depths: [2, 2, 18, 2],
            head_dim: 16,
            window: 7,
            patch_size: 4,
            image_size: 224,
            ln_bias: true,
            qkv_bias: true,
        };
        write_swin_teacher(path, &poa_swin, 42).unwrap()
    },
};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut dir, mut keep, mut case) = (
        3usize,
        std::env::temp_dir().join("tailor-export-bench"),
        false,
        &VIT_L,
    );
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--family" => {
                case = match args.next().as_deref() {
                    Some("vit") => &VIT_L,
                    Some("resnet") => &RESNET,
                    Some("swin") => &SWIN,
                    _ => panic!("--family vit|resnet|swin"),
                }
            }
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
    let teacher_bytes = (case.write)(&teacher);
    fs::write(dir.join("config.yaml"), case.config).unwrap();
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
    let (mut bundle_bytes, mut one_per_graph) = (0, 0);
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
        one_per_graph = weights_per_graph(&bundle);
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
    println!("| sub-networks | {} |", case.grid);
    println!(
        "| teacher (fp32 safetensors) | {:.2} GB |",
        teacher_bytes as f64 / 1e9
    );
    println!(
        "| bundle written | {:.2} GB (one file per sub-network: {:.2} GB) |",
        bundle_bytes as f64 / 1e9,
        one_per_graph as f64 / 1e9
    );
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

/// What the bundle's weights would take stored once per sub-network.
fn weights_per_graph(bundle: &Path) -> u64 {
    let text = fs::read_to_string(bundle.join("manifest.json")).unwrap();
    let m = tailor_runtime::manifest::Manifest::from_json(&text).unwrap();
    m.subnets.iter().map(|s| s.weight_bytes).sum()
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

const VIT_CONFIG: &str = "student:
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

/// POA's released ResNet config (resnet_ssl_default_config.yaml).
const RESNET_CONFIG: &str = "student:
  arch: resnet_dynamic
  min_depths: [3, 4, 6, 3]
  max_depths: [3, 8, 36, 3]
  stem_channels: 64
  base_channels: 64
  num_gn_groups: 32
  strides: [1, 2, 2, 2]
crops:
  global_crops_size: 224
";

/// POA's swin_ssl_default_config.yaml, the keys that describe the teacher.
const SWIN_CONFIG: &str = "student:
  arch: swin_dynamic
  min_embed_dim: 96
  max_embed_dim: 128
  min_s3_depth: 6
  max_depths: [2, 2, 18, 2]
  head_dim: 16
  mode: order
  patch_size: 4
  window_size: 7
  qkv_bias: true
  width_interval: 1
  depth_interval: 1
crops:
  global_crops_size: 224
";
