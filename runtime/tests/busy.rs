//! Selection on a device whose measurements do not repeat, through the
//! whole driver: a script stands in for the measuring child (the engine
//! never runs), so the latencies are exact and nothing depends on timing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tailor_runtime::bundle::{MANIFEST_JSON, MANIFEST_POSTCARD};
use tailor_runtime::engine::EngineKind;
use tailor_runtime::manifest::Manifest;
use tailor_runtime::select::{
    Chosen, EngineChoice, Limits, Runtime, RuntimeOptions, SelectError, Stage,
};
use tailor_runtime::trial::Isolation;

/// Sub-networks `s1`..=`s8`: `sN` has N times the MACs of the smallest.
const SIZES: u64 = 8;

/// A bundle of [`SIZES`] sub-networks, each a copy of the fixture's
/// smallest graph under its own name (the fake child reads the size from it).
fn bundle(dir: &Path) -> PathBuf {
    let names: Vec<(String, String)> = (1..=SIZES)
        .map(|n| (format!("s{n}"), format!("graphs/s{n}.onnx")))
        .collect();
    let out = dir.join("bundle");
    common::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny"),
        &out,
    );
    let json = fs::read_to_string(out.join(MANIFEST_JSON)).unwrap();
    let mut manifest = Manifest::from_json(&json).unwrap();
    let template = manifest.subnets[0].clone();
    manifest.subnets.clear();
    for (n, (id, onnx)) in (1..=SIZES).zip(&names) {
        fs::copy(out.join(template.onnx), out.join(onnx)).unwrap();
        let subnet = tailor_runtime::manifest::Subnet {
            id,
            onnx,
            macs: template.macs * n,
            ..template.clone()
        };
        manifest.subnets.push(subnet);
    }
    fs::write(out.join(MANIFEST_JSON), manifest.to_json()).unwrap();
    fs::write(out.join(MANIFEST_POSTCARD), manifest.to_postcard()).unwrap();
    out
}

/// A measuring child that answers without running anything: `sN` measures
/// N ms in the search; a confirmation (more than the default 10 runs)
/// measures `confirmed` (a shell arithmetic expression of `n`) ms.
fn fake_child(dir: &Path, confirmed: &str) -> Isolation {
    let path = dir.join("child.sh");
    let script = format!(
        r#"#!/bin/sh
job=$(cat)
runs=$(printf '%s' "$job" | sed 's/.*"min_runs":\([0-9]*\).*/\1/')
out=""
for n in $(printf '%s' "$job" | grep -o '/s[0-9]*\.onnx' | tr -dc '0-9\n'); do
  if [ "$runs" -gt 10 ]; then ms=$(({confirmed})); else ms=$n; fi
  m="{{\"load_ms\":1,\"engine_build_ms\":null,\"first_ms\":$ms,\"runs\":$runs,\"mean_ms\":$ms,\"p50_ms\":$ms,\"p90_ms\":$ms,\"p99_ms\":$ms,\"stdev_ms\":0,\"cv\":0,\"noisy\":false,\"rss_mb\":1,\"peak_mb\":1,\"memory\":\"sampled_rss\",\"samples_ms\":[]}}"
  out="$out${{out:+,}}$m"
done
echo "{{\"Measured\":[$out]}}"
"#
    );
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    Isolation::Child(path)
}

fn select(dir: &Path, confirmed: &str, limit_ms: f64) -> Result<Chosen, SelectError> {
    let options = RuntimeOptions {
        engine: EngineChoice::Only(EngineKind::Tract),
        cache: None,
        isolation: fake_child(dir, confirmed),
        ..RuntimeOptions::default()
    };
    let rt = Runtime::with_options(bundle(dir), options).unwrap();
    rt.select(&Limits::latency_ms(limit_ms).memory_mb(4096))
}

/// The size `n` of sub-network `sN`.
fn size(id: &str) -> u64 {
    id[1..].parse().unwrap()
}

#[test]
fn confirmations_that_keep_missing_step_down_to_a_fit_that_held() {
    let dir = tempfile::tempdir().unwrap();
    // Measured again, everything runs twice as slow: of the fits the search
    // found under 7.5 ms, only s1..=s3 hold.
    let chosen = select(dir.path(), "2 * n", 7.5).unwrap();
    let held = chosen
        .trials
        .iter()
        .filter(|t| t.stage == Stage::Search && t.fits && 2 * size(&t.id) <= 7)
        .map(|t| size(&t.id))
        .max()
        .unwrap();
    assert_eq!(size(&chosen.id), held, "{:?}", chosen.trials);
    assert_eq!(chosen.measured.p90_ms, 2.0 * held as f64);
    assert!(
        chosen
            .notes
            .iter()
            .any(|n| n.contains("stepped down after")),
        "{:?}",
        chosen.notes
    );
}

#[test]
fn nothing_fits_once_the_smallest_missed_when_measured_again() {
    let dir = tempfile::tempdir().unwrap();
    // Measured again, everything runs ten times as slow: s1 misses too.
    let err = select(dir.path(), "10 * n", 7.5)
        .err()
        .expect("nothing fits");
    let why = err.to_string();
    assert!(
        matches!(err, SelectError::NothingFits(_))
            && why.contains("the smallest, s1, measured 10.00 ms"),
        "{why}"
    );
}
