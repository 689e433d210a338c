use tailor_runtime::manifest::{ActivationCalibrator, Manifest};

use super::*;

const MANIFEST: &str = include_str!("../../../../runtime/tests/fixtures/bundle-tiny/manifest.json");

/// The fixture's w32-d2..d4 with, for each, an s8, a u8 and an fp16 variant.
fn with_variants(manifest: &Manifest<'static>) -> Vec<Subnet<'static>> {
    let mut subnets = manifest.subnets.clone();
    for parent in &manifest.subnets {
        let variants: [(&'static str, Precision<'static>); 3] = [
            ("@int8-s8", int8(parent.id, ActivationEncoding::S8)),
            ("@int8-u8", int8(parent.id, ActivationEncoding::U8)),
            ("@fp16", Precision::Fp16 { parent: parent.id }),
        ];
        for (suffix, precision) in variants {
            let mut v = parent.clone();
            v.id = String::leak(format!("{}{suffix}", parent.id));
            v.precision = precision;
            subnets.push(v);
        }
    }
    subnets
}

fn int8(parent: &'static str, encoding: ActivationEncoding) -> Precision<'static> {
    Precision::Int8 {
        parent,
        encoding,
        calibrator: ActivationCalibrator::Percentile,
    }
}

fn packed(verdicts: &[Verdict]) -> Vec<&str> {
    verdicts
        .iter()
        .filter(|v| v.fate.packed())
        .map(|v| v.id.as_str())
        .collect()
}

#[test]
fn only_the_boards_int8_encoding_is_packed() {
    let manifest = Manifest::from_json(MANIFEST).unwrap();
    let subnets = with_variants(&manifest);
    for (encoding, other) in [
        (ActivationEncoding::S8, ActivationEncoding::U8),
        (ActivationEncoding::U8, ActivationEncoding::S8),
    ] {
        let verdicts = judge(&subnets, u64::MAX, encoding, &[]).unwrap();
        let ids = packed(&verdicts);
        assert!(
            ids.contains(&format!("w32-d3@int8-{}", encoding.name()).as_str()),
            "{ids:?}"
        );
        assert!(ids.contains(&"w32-d3@fp16"), "{ids:?}");
        let dropped = format!("w32-d3@int8-{}", other.name());
        let v = verdicts.iter().find(|v| v.id == dropped).unwrap();
        assert_eq!(v.fate, Fate::OtherEncoding, "{v:?}");
        assert_eq!(ids.len(), 9, "{ids:?}");
    }
}

#[test]
fn a_variant_goes_with_its_dropped_parent() {
    let manifest = Manifest::from_json(MANIFEST).unwrap();
    let subnets = with_variants(&manifest);
    let footprint = |id: &str| {
        let s = subnets.iter().find(|s| s.id == id).unwrap();
        Candidate::from(s).predicted_footprint(1)
    };
    // Room for w32-d3 but not w32-d4; the variants here are the parent's
    // size, so this also drops them by memory: shrink one to fit.
    let mut subnets = subnets.clone();
    let budget = footprint("w32-d3");
    assert!(footprint("w32-d4") > budget);
    let small = subnets.iter_mut().find(|s| s.id == "w32-d4@fp16").unwrap();
    small.weight_bytes = 0;
    small.activation_bytes = 0;
    assert!(Candidate::from(&*small).predicted_footprint(1) <= budget);
    let verdicts = judge(&subnets, budget, ActivationEncoding::U8, &[]).unwrap();
    let fate = |id: &str| verdicts.iter().find(|v| v.id == id).unwrap().fate;
    assert_eq!(fate("w32-d4"), Fate::Dropped);
    assert_eq!(fate("w32-d4@fp16"), Fate::ParentDropped);
    assert_eq!(fate("w32-d3@fp16"), Fate::Kept);
    // Kept on request, the parent takes its variants along.
    let keep = ["w32-d4".to_owned()];
    let verdicts = judge(&subnets, budget, ActivationEncoding::U8, &keep).unwrap();
    let fate = |id: &str| verdicts.iter().find(|v| v.id == id).unwrap().fate;
    assert_eq!(fate("w32-d4"), Fate::KeptOnRequest);
    assert_eq!(fate("w32-d4@fp16"), Fate::Kept);
}
