//! A device whose latencies are exact: a bundle of same-shaped sub-networks
//! that differ only in MACs, and a script that stands in for the measuring
//! child (the engine never runs), so nothing depends on timing.
#![allow(dead_code)] // each test binary uses its own subset

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tailor_runtime::bundle::{MANIFEST_JSON, MANIFEST_POSTCARD};
use tailor_runtime::manifest::{ActivationCalibrator, ActivationEncoding, Manifest, Precision};
use tailor_runtime::trial::Isolation;

use crate::common;

/// While this file exists in the fake child's directory, int8 graphs fail.
pub const INT8_FAILS: &str = "int8-fails";

/// Sub-networks `s1`..=`s8`: `sN` has N times the MACs of the smallest.
pub const SIZES: u64 = 8;

/// A bundle of [`SIZES`] sub-networks, each a copy of the fixture's
/// smallest graph under its own name (the fake child reads the size from
/// it), and with `int8` an int8 variant `sN@int8-u8` of each, its graph
/// `graphs/sN-int8.onnx` (whose name the fake child tells apart).
pub fn bundle(dir: &Path, int8: bool) -> PathBuf {
    let out = dir.join("bundle");
    common::copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle-tiny"),
        &out,
    );
    let mut names: Vec<(String, String, Option<String>)> = (1..=SIZES)
        .map(|n| (format!("s{n}"), format!("graphs/s{n}.onnx"), None))
        .collect();
    if int8 {
        names.extend((1..=SIZES).map(|n| {
            let parent = format!("s{n}");
            (
                format!("{parent}@int8-u8"),
                format!("graphs/s{n}-int8.onnx"),
                Some(parent),
            )
        }));
    }
    let json = fs::read_to_string(out.join(MANIFEST_JSON)).unwrap();
    let mut manifest = Manifest::from_json(&json).unwrap();
    let template = manifest.subnets[0].clone();
    manifest.subnets.clear();
    for (n, (id, onnx, parent)) in (1..=SIZES).cycle().zip(&names) {
        fs::copy(out.join(template.onnx), out.join(onnx)).unwrap();
        let precision = match parent {
            None => Precision::Fp32,
            Some(parent) => Precision::Int8 {
                parent,
                encoding: ActivationEncoding::U8,
                calibrator: ActivationCalibrator::Percentile,
            },
        };
        manifest.subnets.push(tailor_runtime::manifest::Subnet {
            id,
            onnx,
            macs: template.macs * n,
            precision,
            ..template.clone()
        });
    }
    fs::write(out.join(MANIFEST_JSON), manifest.to_json()).unwrap();
    fs::write(out.join(MANIFEST_POSTCARD), manifest.to_postcard()).unwrap();
    out
}

/// A measuring child that answers without running anything: `sN` on `t`
/// threads measures `searched` ms the first time, and `confirmed` ms each
/// time it is measured again (with the same `t` and `q`); both are shell
/// arithmetic of `n`, `t`, `q` (1 for an int8 variant's graph, else 0) and
/// `calls` (how many times it was measured before).
/// From `sN` with N >= `noisy_from` on, a first measurement comes back
/// noisy, and the second takes three times as long. While a file
/// [`INT8_FAILS`] exists in `dir`, the engine refuses every int8 graph.
pub fn child(dir: &Path, searched: &str, confirmed: &str, noisy_from: u64) -> Isolation {
    let path = dir.join("child.sh");
    let seen = dir.join("seen");
    fs::create_dir_all(&seen).unwrap();
    let seen = seen.display();
    let dir = dir.display();
    let script = format!(
        r#"#!/bin/sh
job=$(cat)
runs=$(printf '%s' "$job" | sed 's/.*"min_runs":\([0-9]*\).*/\1/')
t=$(printf '%s' "$job" | sed 's/.*"threads":\([0-9]*\).*/\1/')
out=""
for g in $(printf '%s' "$job" | grep -o '/s[0-9]*[-a-z0-9]*\.onnx'); do
  n=$(basename "$g" .onnx | sed 's/-.*//' | tr -dc '0-9')
  case "$g" in *-int8.onnx) q=1 ;; *) q=0 ;; esac
  if [ "$q" = 1 ] && [ -e "{dir}/{INT8_FAILS}" ]; then
    echo '{{"Engine":{{"kind":"unsupported_operator","systematic":false,"message":"no int8 kernel for MatMul"}}}}'
    exit 0
  fi
  calls=$(cat "{seen}/$n-$t-$q" 2>/dev/null || echo 0)
  echo $((calls + 1)) > "{seen}/$n-$t-$q"
  if [ "$calls" -gt 0 ]; then ms=$(({confirmed})); else ms=$(({searched})); fi
  noisy=false
  if [ "$n" -ge {noisy_from} ]; then
    if [ "$calls" = 0 ]; then noisy=true; elif [ "$calls" = 1 ]; then ms=$((3 * ms)); fi
  fi
  m="{{\"load_ms\":1,\"engine_build_ms\":null,\"first_ms\":$ms,\"runs\":$runs,\"mean_ms\":$ms,\"p50_ms\":$ms,\"p90_ms\":$ms,\"p99_ms\":$ms,\"stdev_ms\":0,\"cv\":0,\"noisy\":$noisy,\"rss_mb\":1,\"peak_mb\":1,\"memory\":\"sampled_rss\",\"samples_ms\":[$ms]}}"
  out="$out${{out:+,}}$m"
done
echo "{{\"Measured\":[$out]}}"
"#
    );
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    Isolation::Child(path)
}

/// The size `n` of sub-network `sN` or of its variant `sN@...`.
pub fn size(id: &str) -> u64 {
    let base = id.split('@').next().unwrap();
    base[1..].parse().unwrap()
}
