//! Export, select and serve across the crates: the Rust API a deployment
//! program uses, on the tiny POA fixture teacher.

mod common;

use common::{assert_close, export, request, subnets, Reference};
use ndarray::Ix4;
use tailor::runtime::profile::MeasureOptions;
use tailor::runtime::select::{
    CacheOutcome, Limits, Runtime, RuntimeOptions, SelectError, Stage, CONFIRM_MEASUREMENTS,
};

const TEACHER: &str = "tests/fixtures/vit-tiny/output/eval/training_99/teacher_checkpoint.pth";

fn fast(options: &mut RuntimeOptions) {
    options.measure = MeasureOptions {
        min_runs: 10,
        min_time: std::time::Duration::ZERO,
        ..MeasureOptions::default()
    };
}

#[test]
fn export_select_and_serve_the_reference_outputs() {
    let (dir, bundle) = export(&request(TEACHER));
    let mut options = RuntimeOptions {
        cache: Some(dir.path().join("cache/decisions.postcard")),
        ..RuntimeOptions::default()
    };
    fast(&mut options);
    let rt = Runtime::with_options(&bundle, options).unwrap();
    let refs = Reference::open("tests/fixtures/vit-tiny/reference.safetensors");

    // A generous budget gets the largest sub-network, measured, then cached.
    let limits = Limits::latency_ms(1e5).memory_mb(4096.0).batch(2);
    let mut chosen = rt.select(&limits).unwrap();
    assert_eq!(
        (chosen.id.as_str(), chosen.cache),
        ("w64-d4", CacheOutcome::Miss)
    );
    assert!(chosen.candidates_measured() >= 1 && chosen.candidates_measured() <= 9);
    let input = refs.get("input").into_dimensionality::<Ix4>().unwrap();
    let out = chosen.session().run(input.view()).unwrap();
    assert_close(
        &out.cls_token.into_dyn(),
        &refs.get("w64-d4.cls_token"),
        "served cls_token",
    );

    let again = rt.select(&limits).unwrap();
    assert_eq!(
        (again.id.as_str(), again.cache, again.candidates_measured()),
        ("w64-d4", CacheOutcome::Hit, 0)
    );

    // A latency between the smallest and the largest: the pick is returned
    // with the confirmation that admitted it, the median of fresh jobs
    // measured after the search's, and what is reported is that one.
    let smallest = rt.profile("w32-d2", 1).unwrap().p90_ms;
    let largest = rt.profile("w64-d4", 1).unwrap().p90_ms;
    let middle =
        Limits::latency_ms((smallest * largest).sqrt().max(smallest * 3.0)).memory_mb(4096.0);
    let pick = rt.select(&middle).unwrap();
    let confirmed = pick.confirmed.as_ref().expect("a fresh pick is confirmed");
    assert_eq!(confirmed.id, pick.id);
    assert!(confirmed.jobs >= CONFIRM_MEASUREMENTS, "{confirmed:?}");
    assert_eq!(
        (pick.measured.runs, pick.measured.p90_ms),
        (confirmed.runs, confirmed.latency_ms)
    );
    let stages: Vec<Stage> = (pick.trials.iter())
        .filter(|t| t.id == pick.id && t.measured.is_some())
        .map(|t| t.stage)
        .collect();
    assert_eq!(
        (stages.first(), stages.last()),
        (Some(&Stage::Search), Some(&Stage::Confirm)),
        "measured in the search first, confirmed last: {stages:?}"
    );

    // Nothing fits: the error names the smallest candidate.
    match rt.select(&Limits::latency_ms(1e-6).memory_mb(4096.0)) {
        Err(SelectError::NothingFits(why)) => assert!(why.contains("w32-d2"), "{why}"),
        other => panic!("expected NothingFits, got {:?}", other.map(|c| c.id)),
    }
}

#[test]
fn the_committed_runtime_fixture_bundle_is_what_the_exporter_writes_today() {
    let mut req = request(TEACHER);
    req.selection = subnets(&["32x2", "32x3", "32x4"]);
    let (_dir, fresh) = export(&req);
    let committed = common::fixture("runtime/tests/fixtures/bundle-tiny");
    for file in [
        "manifest.json",
        "manifest.postcard",
        "graphs/w32-d2.onnx",
        "graphs/w32-d4.onnx",
        "graphs/weights/w32.bin",
    ] {
        let (a, b) = (
            std::fs::read(fresh.join(file)).unwrap(),
            std::fs::read(committed.join(file)).unwrap(),
        );
        assert!(
            a == b,
            "{file} differs: regenerate runtime/tests/fixtures/bundle-tiny (see tools/README.md)"
        );
    }
}

#[test]
fn a_resnet_teacher_exports_selects_and_serves_its_reference() {
    let mut req =
        request("tests/fixtures/resnet-tiny/output/eval/training_49/teacher_checkpoint.pth");
    req.selection = subnets(&["4x1.1.2.1", "6x2.2.3.1", "8x2.3.4.1"]);
    let (dir, bundle) = export(&req);
    let mut options = RuntimeOptions {
        cache: Some(dir.path().join("cache/decisions.postcard")),
        ..RuntimeOptions::default()
    };
    fast(&mut options);
    let rt = Runtime::with_options(&bundle, options).unwrap();
    // A generous budget gets the sub-network with the most MACs.
    let mut chosen = rt
        .select(&Limits::latency_ms(1e5).memory_mb(4096.0).batch(2))
        .unwrap();
    assert_eq!(chosen.id, "w8-d2.3.4.1");
    assert_eq!((chosen.width, chosen.depth), (8, 10));
    let refs = Reference::open("tests/fixtures/resnet-tiny/reference.safetensors");
    let input = refs.get("input").into_dimensionality::<Ix4>().unwrap();
    let out = chosen.session().run(input.view()).unwrap();
    assert_close(
        &out.cls_token.into_dyn(),
        &refs.get("w8-d2.3.4.1.cls_token"),
        "served ResNet cls_token",
    );
}

#[test]
fn a_swin_bundle_is_selected_and_served() {
    let swin = "tests/fixtures/swin-tiny";
    let (dir, bundle) = export(&request(&format!(
        "{swin}/output/eval/training_49/teacher_checkpoint.pth"
    )));
    let mut options = RuntimeOptions {
        cache: Some(dir.path().join("cache/decisions.postcard")),
        ..RuntimeOptions::default()
    };
    fast(&mut options);
    let rt = Runtime::with_options(&bundle, options).unwrap();
    let refs = Reference::open(&format!("{swin}/reference.safetensors"));

    // A generous budget gets the largest Swin, whose output is POA's.
    let mut chosen = rt
        .select(&Limits::latency_ms(1e5).memory_mb(4096.0).batch(2))
        .unwrap();
    assert_eq!(chosen.id, "w12-d2.2.5.2");
    let input = refs.get("input").into_dimensionality::<Ix4>().unwrap();
    let out = chosen.session().run(input.view()).unwrap();
    assert_close(
        &out.patch_tokens.into_dyn(),
        &refs.get("w12-d2.2.5.2.patch_tokens"),
        "served Swin patch_tokens",
    );

    match rt.select(&Limits::latency_ms(1e-6).memory_mb(4096.0)) {
        Err(SelectError::NothingFits(why)) => assert!(why.contains("w4-d2.2.2.2"), "{why}"),
        other => panic!("expected NothingFits, got {:?}", other.map(|c| c.id)),
    }
}
