use super::*;

fn sample() -> Manifest<'static> {
    let mut weights = Vec::new();
    weights
        .push(BundleFile {
            path: "weights/w32.bin",
            bytes: 10,
            sha256: Sha256([7; 32]),
        })
        .unwrap();
    let subnets = vec![Subnet {
        id: "w32-d2",
        width: 32,
        depth: 2,
        depths: None,
        mid_widths: None,
        block_idx: Vec::from_slice(&[0, 3]).unwrap(),
        route: None,
        onnx: "graphs/w32-d2.onnx",
        onnx_sha256: Sha256([1; 32]),
        weights,
        params: 100,
        macs: 1000,
        weight_bytes: 400,
        activation_bytes: 64,
        quality: None,
        fidelity: None,
        precision: Precision::Fp32,
    }];
    Manifest {
        format_version: FORMAT_VERSION,
        teacher: Teacher {
            file: "teacher.pth",
            sha256: Sha256([9; 32]),
            family: "vit",
            config: TeacherConfig::Vit(VitConfig {
                max_width: 64,
                max_depth: 4,
                head_dim: 16,
                patch_size: 8,
                image_size: 32,
                mlp_ratio: 4,
            }),
        },
        subnets,
        calibration: None,
    }
}

#[test]
fn postcard_round_trips() {
    let m = sample();
    let bytes = m.to_postcard();
    assert_eq!(Manifest::from_postcard(&bytes).unwrap(), m);
}

#[test]
fn json_round_trips_with_hex_digests() {
    let m = sample();
    let text = serde_json::to_string(&m).unwrap();
    assert!(text.contains(&"07".repeat(32)), "{text}");
    assert_eq!(Manifest::from_json(&text).unwrap(), m);
}

#[test]
fn staged_subnets_and_configs_round_trip() {
    let mut m = sample();
    let stages = |v: &[u32]| Vec::from_slice(v).unwrap();
    m.teacher.family = "resnet";
    m.teacher.config = TeacherConfig::ResNet(ResNetConfig {
        stem_channels: 16,
        base_channels: 16,
        num_gn_groups: 8,
        min_depths: stages(&[1, 2, 2, 1]),
        max_depths: stages(&[1, 3, 5, 1]),
        strides: stages(&[1, 2, 2, 2]),
        image_size: 64,
    });
    m.subnets[0].depths = Some(stages(&[1, 2, 4, 1]));
    m.subnets[0].mid_widths = Some(stages(&[24, 48, 96, 192]));
    assert_eq!(Manifest::from_postcard(&m.to_postcard()).unwrap(), m);
    let text = serde_json::to_string(&m).unwrap();
    assert!(text.contains(r#""mid_widths":[24,48,96,192]"#), "{text}");
    assert!(
        text.contains(r#""config":{"resnet":{"stem_channels":16"#),
        "{text}"
    );
    assert_eq!(Manifest::from_json(&text).unwrap(), m);
    assert_eq!(m.teacher.config.image_size(), 64);
}

#[test]
fn calibrated_manifests_round_trip_with_the_metric_named() {
    let mut m = sample();
    m.subnets[0].quality = Some(91.5);
    m.subnets[0].fidelity = Some(0.75);
    m.calibration = Some(Calibration {
        quality_metric: QualityMetric::KnnTop1,
        dataset_sha256: Sha256([3; 32]),
        dataset_images: 1000,
        ranges: BundleFile {
            path: "calibration/ranges.json",
            bytes: 5,
            sha256: Sha256([4; 32]),
        },
        task: Some("digits"),
    });
    assert_eq!(Manifest::from_postcard(&m.to_postcard()).unwrap(), m);
    let text = serde_json::to_string(&m).unwrap();
    assert!(text.contains(r#""quality_metric":"knn_top1""#), "{text}");
    assert!(text.contains(r#""task":"digits""#), "{text}");
    assert_eq!(Manifest::from_json(&text).unwrap(), m);
}

#[test]
fn a_listed_file_keeps_its_encoding() {
    // Pinned bytes: old bundles list their weights and ranges this way.
    // Bug caught: a field renamed or reordered, which reads every
    // bundle exported before as corrupt.
    let file = BundleFile {
        path: "calibration/ranges.json",
        bytes: 5,
        sha256: Sha256([4; 32]),
    };
    let json = format!(
        r#"{{"path":"calibration/ranges.json","bytes":5,"sha256":"{}"}}"#,
        "04".repeat(32)
    );
    assert_eq!(serde_json::to_string(&file).unwrap(), json);
    let mut postcard = vec![23];
    postcard.extend(b"calibration/ranges.json");
    postcard.push(5);
    postcard.extend([4; 32]);
    assert_eq!(postcard::to_stdvec(&file).unwrap(), postcard);
}

#[test]
fn old_bundles_are_told_to_export_again() {
    let mut m = sample();
    m.format_version = 3;
    let err = Manifest::from_postcard(&m.to_postcard()).unwrap_err();
    assert_eq!(err, DecodeError::UnsupportedVersion(3));
    assert!(err.to_string().contains("export the bundle again"), "{err}");
}

/// Version-4 bundles (before variants) and version-5 ones (before fp16
/// variants), as the exporter wrote them: the runtime fixture's manifests,
/// kept.
#[test]
fn version_4_and_5_bundles_are_told_to_export_again_in_both_forms() {
    let fixtures: [(u32, &[u8], &str); 2] = [
        (
            4,
            include_bytes!("../../tests/fixtures/manifest-v4/manifest.postcard"),
            include_str!("../../tests/fixtures/manifest-v4/manifest.json"),
        ),
        (
            5,
            include_bytes!("../../tests/fixtures/manifest-v5/manifest.postcard"),
            include_str!("../../tests/fixtures/manifest-v5/manifest.json"),
        ),
    ];
    for (version, postcard, json) in fixtures {
        let err = Manifest::from_postcard(postcard).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion(version));
        assert!(err.to_string().contains("export the bundle again"), "{err}");
        let err = Manifest::from_json(json).unwrap_err();
        assert!(
            matches!(err, JsonError::Decode(DecodeError::UnsupportedVersion(v)) if v == version),
            "{err}"
        );
        assert!(err.to_string().contains("export the bundle again"), "{err}");
    }
}

fn with_int8_variant() -> Manifest<'static> {
    let mut m = sample();
    let mut variant = m.subnets[0].clone();
    variant.id = "w32-d2@int8-u8";
    variant.onnx = "graphs/w32-d2@int8-u8.onnx";
    variant.weights[0].path = "weights/w32.int8.bin";
    variant.weight_bytes = 110;
    variant.precision = Precision::Int8 {
        parent: "w32-d2",
        encoding: ActivationEncoding::U8,
        calibrator: ActivationCalibrator::Percentile,
    };
    m.subnets.push(variant);
    m
}

#[test]
fn int8_variants_round_trip_with_parent_and_encoding() {
    let m = with_int8_variant();
    assert_eq!(Manifest::from_postcard(&m.to_postcard()).unwrap(), m);
    let text = serde_json::to_string(&m).unwrap();
    assert!(text.contains(r#""precision":"fp32""#), "{text}");
    assert!(
        text.contains(
            r#""precision":{"int8":{"parent":"w32-d2","encoding":"u8","calibrator":"percentile"}}"#
        ),
        "{text}"
    );
    assert_eq!(Manifest::from_json(&text).unwrap(), m);
    assert_eq!(m.subnets[1].parent(), Some("w32-d2"));
    assert_eq!(m.subnets[0].parent(), None);
}

fn with_fp16_variant() -> Manifest<'static> {
    let mut m = with_int8_variant();
    let mut variant = m.subnets[0].clone();
    variant.id = "w32-d2@fp16";
    variant.onnx = "graphs/w32-d2@fp16.onnx";
    variant.weights[0].path = "weights/w32.fp16.bin";
    variant.precision = Precision::Fp16 { parent: "w32-d2" };
    m.subnets.push(variant);
    m
}

#[test]
fn fp16_variants_round_trip_with_their_parent() {
    let m = with_fp16_variant();
    assert_eq!(Manifest::from_postcard(&m.to_postcard()).unwrap(), m);
    let text = serde_json::to_string(&m).unwrap();
    assert!(
        text.contains(r#""precision":{"fp16":{"parent":"w32-d2"}}"#),
        "{text}"
    );
    assert_eq!(Manifest::from_json(&text).unwrap(), m);
    assert_eq!(m.subnets[2].parent(), Some("w32-d2"));
    assert_eq!(m.subnets[2].precision.name(), "fp16");
}

#[test]
fn a_version_5_reader_names_a_version_6_manifest_it_does_not_read() {
    // What a build that reads only version 5 does with this build's
    // output (an fp16 variant it has no precision for): the version leads
    // both forms, so it is named, not misread.
    let m = with_fp16_variant();
    let bytes = m.to_postcard();
    assert_eq!(postcard::take_from_bytes::<u32>(&bytes).unwrap().0, 6);
    let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
    assert_eq!(json["format_version"], 6);
    // And a newer bundle than this build reads says to update.
    let mut newer = m;
    newer.format_version = FORMAT_VERSION + 1;
    let err = Manifest::from_postcard(&newer.to_postcard()).unwrap_err();
    assert!(err.to_string().contains("update the runtime"), "{err}");
}

#[test]
fn an_unknown_precision_is_malformed_not_misread() {
    let text = String::from_utf8(with_int8_variant().to_json()).unwrap();
    let text = text.replace(r#""int8": {"#, r#""int4": {"#);
    assert!(text.contains("int4"), "{text}");
    assert!(matches!(
        Manifest::from_json(&text),
        Err(JsonError::Syntax(_))
    ));
}

#[test]
fn sdr_routes_and_configs_round_trip() {
    let mut m = sample();
    m.teacher.family = "sdr";
    m.teacher.config = TeacherConfig::Sdr(SdrConfig {
        groups: Vec::from_slice(&[2, 2, 4]).unwrap(),
        image_size: 32,
    });
    m.subnets[0].route = Some(Vec::from_slice(&[1, 0, 3]).unwrap());
    assert_eq!(Manifest::from_postcard(&m.to_postcard()).unwrap(), m);
    let text = serde_json::to_string(&m).unwrap();
    assert!(text.contains(r#""route":[1,0,3]"#), "{text}");
    assert!(
        text.contains(r#""config":{"sdr":{"groups":[2,2,4]"#),
        "{text}"
    );
    assert_eq!(Manifest::from_json(&text).unwrap(), m);
    assert_eq!(
        m.teacher.config.to_string(),
        "3 SDR blocks, groups [2, 2, 4], 16 paths, image 32"
    );
}

#[test]
fn truncated_postcard_is_malformed() {
    let bytes = sample().to_postcard();
    for len in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert_eq!(
            Manifest::from_postcard(&bytes[..len]),
            Err(DecodeError::Malformed)
        );
    }
}

#[test]
fn unknown_versions_are_named() {
    let mut m = sample();
    m.format_version = 99;
    let bytes = m.to_postcard();
    assert_eq!(
        Manifest::from_postcard(&bytes),
        Err(DecodeError::UnsupportedVersion(99))
    );
    let text = serde_json::to_string(&m).unwrap();
    assert!(matches!(
        Manifest::from_json(&text),
        Err(JsonError::Decode(DecodeError::UnsupportedVersion(99)))
    ));
}

#[test]
fn a_short_digest_is_its_first_twelve_hex_digits() {
    // Broken by showing bytes instead of digits (24 digits), or the tail.
    let mut bytes = [0u8; 32];
    bytes[..7].copy_from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd]);
    let sha = Sha256(bytes);
    assert_eq!(sha.short().to_string(), "0123456789ab");
    assert!(sha.to_string().starts_with(&sha.short().to_string()));
}
