//! Selection among number formats through the whole driver, on the fake
//! device of `fake` (exact latencies, no engine): int8 variants are their
//! own latency curve and compete with fp32 by the bundle's one objective.

mod common;
mod fake;

use std::fs;
use std::path::Path;

use fake::{bundle, size};
use tailor_runtime::engine::EngineKind;
use tailor_runtime::manifest::PrecisionKind;
use tailor_runtime::select::{
    CacheOutcome, Chosen, EngineChoice, Limits, Runtime, RuntimeOptions, SelectError,
};

/// fp32 `sN` runs 2N ms, its int8 variant N ms: at 7.5 ms fp32 fits up to
/// s3, int8 up to s7.
const INT8_TWICE_AS_FAST: &str = "n * (2 - q)";

/// The default options (every format the bundle has, thread counts
/// selected) but the fake device, tract only, and `cache`.
fn options(dir: &Path, ms: &str, cache: bool) -> RuntimeOptions {
    RuntimeOptions {
        engine: EngineChoice::Only(EngineKind::Tract),
        cache: cache.then(|| dir.join("cache/decisions.postcard")),
        isolation: fake::child(dir, ms, ms, u64::MAX),
        ..RuntimeOptions::default()
    }
}

fn select(bundle: &Path, options: RuntimeOptions) -> Result<Chosen, SelectError> {
    let rt = Runtime::with_options(bundle, options).unwrap();
    rt.select(&Limits::latency_ms(7.5).memory_mb(4096))
}

#[test]
fn a_larger_int8_variant_that_fits_beats_the_best_fp32_fit_by_default() {
    // Broken by searching fp32 alone, or by one latency curve for both
    // formats (the int8 points halve the fp32 slope and the search
    // settles between the curves).
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path(), true);
    let chosen = select(&bundle, options(dir.path(), INT8_TWICE_AS_FAST, false)).unwrap();
    assert_eq!(
        (chosen.id.as_str(), chosen.precision),
        ("s7@int8-u8", PrecisionKind::Int8),
        "{:?}",
        chosen.notes
    );
    assert_eq!(chosen.measured.p90_ms, 7.0);
    assert!(
        chosen
            .notes
            .iter()
            .any(|n| n.contains("s7@int8-u8 fits with") && n.contains("choice, s3")),
        "{:?}",
        chosen.notes
    );
    // fp32 searched first: the widest format is the one every engine runs.
    assert!(!chosen.trials[0].id.contains('@'), "{:?}", chosen.trials[0]);
}

#[test]
fn precision_restricts_the_formats_and_keys_the_cache() {
    // Broken by ignoring --precision (s7@int8-u8 again), or by a cache key
    // without the formats (the int8 decision served to an fp32-only call).
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path(), true);
    let with = |precisions: Option<&str>| {
        let mut o = options(dir.path(), INT8_TWICE_AS_FAST, true);
        o.precisions = precisions.map(|p| p.parse().unwrap());
        select(&bundle, o).unwrap()
    };
    let all = with(None);
    assert_eq!(
        (all.id.as_str(), all.cache),
        ("s7@int8-u8", CacheOutcome::Miss)
    );
    let fp32 = with(Some("fp32"));
    assert_eq!((fp32.id.as_str(), fp32.cache), ("s3", CacheOutcome::Miss));
    assert!(
        fp32.trials.iter().all(|t| !t.id.contains('@')),
        "{:?}",
        fp32.trials
    );
    let int8 = with(Some("int8"));
    assert_eq!(
        (int8.id.as_str(), int8.cache),
        ("s7@int8-u8", CacheOutcome::Miss)
    );
    // Naming every format the bundle has is the default's key.
    let named = with(Some("fp32,fp16,int8"));
    assert_eq!(
        (named.id.as_str(), named.cache),
        ("s7@int8-u8", CacheOutcome::Hit)
    );
}

#[test]
fn at_equal_speed_and_macs_the_fp32_parent_wins() {
    // Broken by ranking int8 above fp32 at equal MACs: the int8 look would
    // measure s7@int8-u8, which fits as well.
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path(), true);
    let chosen = select(&bundle, options(dir.path(), "n", false)).unwrap();
    assert_eq!(chosen.id, "s7", "{:?}", chosen.trials);
    assert!(
        chosen
            .trials
            .iter()
            .all(|t| size(&t.id) != 7 || !t.id.contains('@')),
        "{:?}",
        chosen.trials
    );
}

#[test]
fn int8_graphs_the_engine_refuses_are_their_candidates_failures() {
    // Broken by letting the refusal end the selection (an error), or by
    // running the fp32 parent in the variant's place (a silent fp32 pick
    // named int8).
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path(), true);
    fs::write(dir.path().join(fake::INT8_FAILS), "").unwrap();
    let chosen = select(&bundle, options(dir.path(), INT8_TWICE_AS_FAST, false)).unwrap();
    assert_eq!(chosen.id, "s3", "{:?}", chosen.notes);
    let refused: Vec<_> = chosen
        .trials
        .iter()
        .filter(|t| t.id.contains('@'))
        .collect();
    assert!(!refused.is_empty(), "an int8 variant was tried");
    for t in refused {
        assert!(t.measured.is_none() && !t.fits, "{t:?}");
        assert!(
            t.note.as_deref().unwrap_or("").contains("no int8 kernel"),
            "{t:?}"
        );
    }
}

#[test]
fn a_format_the_bundle_lacks_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle(dir.path(), false);
    let mut o = options(dir.path(), "n", false);
    o.precisions = Some("int8".parse().unwrap());
    let e = select(&bundle, o).err().expect("no int8 sub-network");
    let why = e.to_string();
    assert!(
        why.contains("no sub-network in int8 (it has fp32)") && why.contains("exporter quantize"),
        "{why}"
    );
}
