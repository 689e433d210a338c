//! Helpers shared by the end-to-end tests: exporting fixtures and reading
//! the PyTorch references.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayD, IxDyn};
use safetensors::SafeTensors;
use tailor::calibration::Dataset;
use tailor::exporter::bundle::{self, WriteOptions};
use tailor::exporter::config::Overrides;
use tailor::exporter::family::SubnetSpec;
use tailor::exporter::plan::{Plan, Request, Selection};
use tailor::runtime::image::Image;
use tailor::runtime::manifest::Sha256;
use tailor::runtime::profile::MeasureOptions;
use tailor::runtime::select::{Runtime, RuntimeOptions};

/// A fixture path, relative to the workspace root.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// An export request with the fixture defaults.
pub fn request(teacher: &str) -> Request {
    Request {
        teacher: fixture(teacher),
        config: None,
        overrides: Overrides::default(),
        selection: Selection::All,
        max_params: None,
        max_macs: None,
    }
}

pub fn subnets(list: &[&str]) -> Selection {
    Selection::List(
        list.iter()
            .map(|s| s.parse::<SubnetSpec>().unwrap())
            .collect(),
    )
}

/// Exports `req` into a fresh temporary directory; returns it and the bundle path.
pub fn export(req: &Request) -> (tempfile::TempDir, PathBuf) {
    let plan = Plan::new(req).unwrap_or_else(|e| panic!("planning {}: {e}", req.teacher.display()));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let opts = WriteOptions {
        force: false,
        jobs: 2,
    };
    // Every export also checks the progress callback: it hears each weight
    // byte once, so the calls add up to the planned size.
    let heard = AtomicU64::new(0);
    bundle::write(&plan, &out, &opts, &|bytes| {
        heard.fetch_add(bytes, Ordering::Relaxed);
    })
    .unwrap_or_else(|e| panic!("exporting: {e}"));
    assert_eq!(heard.into_inner(), bundle::planned_bytes(&plan));
    (dir, out)
}

/// A runtime on `bundle` without a decision cache, measuring each candidate
/// five times (enough to rank the tiny test graphs).
pub fn quick_runtime(bundle: &Path) -> Runtime {
    let mut options = RuntimeOptions {
        cache: None,
        ..RuntimeOptions::default()
    };
    options.measure = MeasureOptions {
        min_runs: 5,
        min_time: std::time::Duration::ZERO,
        ..MeasureOptions::default()
    };
    Runtime::with_options(bundle, options).unwrap()
}

/// The tensors of a `reference.safetensors` written by tools/make_fixtures.py.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(rel: &str) -> Reference {
        Reference {
            bytes: std::fs::read(fixture(rel)).unwrap(),
        }
    }

    pub fn get(&self, name: &str) -> ArrayD<f32> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("reference `{name}`: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let values = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        ArrayD::from_shape_vec(IxDyn(t.shape()), values).unwrap()
    }

    /// The `fixture` metadata JSON.
    pub fn meta(&self) -> serde_json::Value {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let text = &meta.metadata().as_ref().unwrap()["fixture"];
        serde_json::from_str(text).unwrap()
    }
}

/// Asserts `actual` matches `expected` to 1e-4 of the expected output's magnitude.
pub fn assert_close(actual: &ArrayD<f32>, expected: &ArrayD<f32>, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = actual
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    assert!(
        err <= 1e-4 * scale,
        "{what}: max abs error {err:e} exceeds 1e-4 × {scale}"
    );
}

/// Label-free images with varied content (a seeded hash per pixel).
pub fn images(n: usize) -> Dataset {
    let images = (0..n)
        .map(|i| {
            let data = (0..20 * 20 * 3)
                .map(|p: usize| {
                    ((p.wrapping_mul(2_654_435_761) ^ i.wrapping_mul(40_503)) >> 5) as u8
                })
                .collect();
            Image::new(data, 20, 20, 3).unwrap()
        })
        .collect();
    Dataset {
        images,
        labels: None,
        sha256: Sha256([1; 32]),
        bytes: 0,
    }
}
