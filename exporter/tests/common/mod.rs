//! Helpers shared by the exporter's test binaries.
#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the exporter binary with `args`.
pub fn exporter(args: &[&dyn AsRef<OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exporter"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the `runtime` binary built beside `exporter`, measuring with tract
/// briefly and without a cache, as a deployment script would.
pub fn runtime(command: &str, bundle: &Path, args: &[&str]) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_exporter")).with_file_name("runtime");
    Command::new(&bin)
        .args([command, "--json", "--no-cache", "--engine", "tract"])
        .args(["--min-runs", "10", "--min-time", "0"])
        .args(args)
        .arg(bundle)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build -p tailor-runtime)", bin.display()))
}

/// Copies a directory tree (a committed bundle, to change a copy of it).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Every file under `dir`, at any depth, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// A grey image: dark (class 0) or bright (class 1), with seeded noise.
pub fn grey(class: u8, seed: usize, side: usize) -> Vec<u8> {
    (0..side * side)
        .map(|i| {
            let noise = ((i * 7 + seed * 13) % 40) as u8;
            if class == 0 {
                20 + noise
            } else {
                190 + noise
            }
        })
        .collect()
}

/// Writes a square grey PNG, creating its folder.
pub fn write_png(path: &Path, side: u32, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut enc = png::Encoder::new(std::fs::File::create(path).unwrap(), side, side);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(data).unwrap();
}
