//! A calibrated bundle through the runtime: selection reads the qualities
//! `exporter calibrate` wrote, and `min_quality` excludes by them.

mod common;

use common::{export, images, request, subnets};
use tailor::calibration::{self, record, Options};
use tailor::exporter::plan::Request;
use tailor::runtime::bundle::Bundle;
use tailor::runtime::manifest::QualityMetric;
use tailor::runtime::select::{Limits, SelectError};

#[test]
fn min_quality_selects_among_the_calibrated_scores() {
    let (_dir, bundle_dir) = export(&Request {
        selection: subnets(&["32x2", "32x3", "32x4"]),
        ..request("tests/fixtures/vit-tiny/output/eval/training_99/teacher_checkpoint.pth")
    });
    let bundle = Bundle::open(&bundle_dir).unwrap();
    let dataset = images(24);
    let calibrated =
        calibration::score(&bundle, &dataset, &Options::default(), &mut |_| {}).unwrap();
    assert_eq!(calibrated.metric, QualityMetric::CkaFidelity);
    record::write(&bundle, &dataset, &calibrated).unwrap();

    let rt = common::quick_runtime(&bundle_dir);
    let manifest = rt.bundle().manifest();
    let quality = |id: &str| manifest.subnet(id).unwrap().quality.unwrap();
    // The reference scores 1; a minimum between the runner-up and 1 leaves
    // it alone eligible, and nothing below it is measured.
    let runner_up = quality("w32-d2").max(quality("w32-d3"));
    assert!(runner_up < 1.0 && quality("w32-d4") == 1.0, "{runner_up}");
    let limits = Limits::latency_ms(1e5).memory_mb(4096.0);
    let strict = limits.min_quality((runner_up + 1.0) / 2.0);
    let chosen = rt.select(&strict).unwrap();
    assert_eq!(chosen.id, "w32-d4");
    assert!(
        chosen.trials.iter().all(|t| t.id == "w32-d4"),
        "{:?}",
        chosen.trials.iter().map(|t| &t.id).collect::<Vec<_>>()
    );

    // Above every score: refused before measuring, naming the metric.
    match rt.select(&limits.min_quality(1.5)) {
        Err(SelectError::NothingFits(why)) => {
            assert!(
                why.contains("minimum quality 1.5")
                    && why.contains("cka_fidelity")
                    && why.contains("w32-d4"),
                "{why}"
            )
        }
        other => panic!("expected NothingFits, got {:?}", other.map(|c| c.id)),
    }
}
