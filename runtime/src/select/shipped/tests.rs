use super::*;
use crate::engine::EngineKind;
use crate::manifest::PrecisionKind;
use crate::probe::Load;
use crate::profile::{MeasureOptions, Measurement, MemorySource};
use crate::select::Limits;

fn key(device: &str) -> CacheKey {
    CacheKey {
        device: device.into(),
        power_mode: Some("MAXN".into()),
        clocks: None,
        engine: "tract 0.23".into(),
        tailor: "0.1.0".into(),
        bundle: Sha256([7; 32]),
        limits: Limits::latency_ms(25.0).memory_mb(900),
        threads: vec![6],
        precisions: vec![PrecisionKind::Fp32],
        measuring: MeasureOptions::default(),
    }
}

/// A decision as the cache stores it: postcard encodes a struct as the
/// tuple of its fields, so this is `Decision`'s layout.
fn decision(id: &str) -> (String, EngineKind, usize, Measurement, u32, bool, Load) {
    let measured = Measurement {
        load_ms: 1.0,
        engine_build_ms: None,
        first_ms: 2.0,
        runs: 9,
        mean_ms: 3.0,
        p50_ms: 3.0,
        p90_ms: 3.5,
        p99_ms: 4.0,
        stdev_ms: 0.1,
        cv: 0.03,
        noisy: false,
        rss_mb: 40.0,
        peak_mb: 42.0,
        memory: MemorySource::HighWaterMark,
        samples_ms: Vec::new(),
    };
    let load = Load {
        load_avg_1m: Some(0.5),
        cpu_pressure_avg10: None,
        steal: None,
    };
    (id.into(), EngineKind::Tract, 2, measured, 3, false, load)
}

/// A cache file holding `entries`, oldest first.
fn cache_with(dir: &Path, entries: &[(CacheKey, &str)]) -> PathBuf {
    let path = dir.join(cache::FILE_NAME);
    let cache = Cache::at(&path);
    for (key, id) in entries {
        cache.store(key, &decision(id), &[]).unwrap();
    }
    path
}

#[test]
fn a_cache_exports_every_decision_and_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut other_bundle = key("orin");
    other_bundle.bundle = Sha256([8; 32]);
    let cache = cache_with(
        dir.path(),
        &[(key("orin"), "w640-d12"), (other_bundle, "w384-d12")],
    );
    let out = dir.path().join("fleet.postcard");
    ShippedDecisions::from_cache(&cache)
        .unwrap()
        .write(&out)
        .unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(&bytes[..16], b"tailor-decisions");
    assert_eq!(
        bytes[16], FORMAT_VERSION as u8,
        "the version follows the magic"
    );

    let read = ShippedDecisions::read(&out).unwrap();
    let winners: Vec<(&str, &str)> = read
        .winners()
        .map(|(k, id)| (k.device.as_str(), id))
        .collect();
    assert_eq!(winners, [("orin", "w640-d12"), ("orin", "w384-d12")]);
    let ours = read.for_bundle(&Sha256([7; 32]));
    assert_eq!(
        ours.winners().map(|(_, id)| id).collect::<Vec<_>>(),
        ["w640-d12"]
    );
    assert!(read.for_bundle(&Sha256([9; 32])).is_empty());
}

#[test]
fn an_empty_or_missing_cache_has_nothing_to_export() {
    let dir = tempfile::tempdir().unwrap();
    let err = ShippedDecisions::from_cache(&dir.path().join("none.postcard")).unwrap_err();
    assert!(matches!(err, ShippedError::NothingCached { .. }), "{err:?}");
    assert!(err.to_string().contains("no decision cached yet"), "{err}");
}

#[test]
fn files_that_are_not_decisions_are_refused_by_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        ShippedDecisions::read(&path).unwrap_err()
    };
    // The runtime's own cache file, handed over instead of an export.
    let cache = cache_with(dir.path(), &[(key("orin"), "w640-d12")]);
    let err = ShippedDecisions::read(&cache).unwrap_err();
    assert!(matches!(err, ShippedError::NotDecisions { .. }), "{err:?}");
    assert!(err.to_string().contains("runtime cache export"), "{err}");
    assert!(matches!(
        file("short", b"tailor"),
        ShippedError::NotDecisions { .. }
    ));

    let with = |version: u32, entries: &[(CacheKey, Decision)]| {
        postcard::to_stdvec(&(MAGIC, version, entries)).unwrap()
    };
    let err = file("future", &with(FORMAT_VERSION + 1, &[]));
    assert!(
        matches!(err, ShippedError::OtherFormat { version, .. } if version == FORMAT_VERSION + 1),
        "{err:?}"
    );
    assert!(matches!(
        file("empty", &with(FORMAT_VERSION, &[])),
        ShippedError::Empty { .. }
    ));

    let whole = ShippedDecisions::from_cache(&cache).unwrap().to_bytes();
    let err = file("truncated", &whole[..whole.len() - 1]);
    assert!(matches!(err, ShippedError::Corrupt { .. }), "{err:?}");
    let err = file("trailing", &[&whole[..], b"x"].concat());
    assert!(matches!(err, ShippedError::Corrupt { .. }), "{err:?}");
}

#[test]
fn a_mismatch_names_the_nearest_winner_and_each_field_with_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut slower = key("orin");
    slower.limits.latency_ms = 40.0;
    let cache = cache_with(
        dir.path(),
        &[(key("xavier"), "w192-d6"), (slower, "w384-d12")],
    );
    let shipped = ShippedDecisions::from_cache(&cache).unwrap();

    let mut here = key("orin");
    here.power_mode = Some("15W".into());
    let why = shipped.mismatch(&here);
    // The same device with another limit is nearer than another device.
    assert!(
        why.contains("the nearest, choosing w384-d12, differs in the power mode"),
        "{why}"
    );
    assert!(
        why.contains("the power mode (shipped MAXN, here 15W), the latency limit (shipped 40 ms, here 25 ms)"),
        "{why}"
    );
    assert!(!why.contains("device fingerprint"), "{why}");

    let why = shipped.mismatch(&key("rpi5"));
    assert!(why.contains("the device fingerprint (shipped "), "{why}");
    assert!(why.contains("here rpi5)"), "{why}");
}

#[test]
fn seeding_copies_only_the_files_the_cache_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("shipped"), dir.path().join("cache"));
    fs::create_dir_all(from.join("fp16")).unwrap();
    fs::write(from.join("timing.cache"), b"shipped timing").unwrap();
    fs::write(from.join("fp16/w640.engine"), b"shipped engine").unwrap();
    fs::create_dir_all(&to).unwrap();
    fs::write(to.join("timing.cache"), b"built here").unwrap();

    seed(&from, &to).unwrap();
    assert_eq!(fs::read(to.join("timing.cache")).unwrap(), b"built here");
    assert_eq!(
        fs::read(to.join("fp16/w640.engine")).unwrap(),
        b"shipped engine"
    );
    let names: Vec<_> = fs::read_dir(to.join("fp16"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["w640.engine"], "no staging file is left");
    // Nothing shipped: nothing to do.
    seed(&dir.path().join("absent"), &to).unwrap();
}
