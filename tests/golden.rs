//! Exported sub-networks compute what POA's elastic forward computes: graphs
//! from the Rust exporter, run in tract (and ONNX Runtime with `--features
//! ort`), against references from independent float64 implementations
//! (tools/poa_reference.py for ViT, tools/resnet_reference.py for ResNet,
//! tools/sdr_reference.py for SDR).

mod common;

use std::path::Path;

use common::{assert_close, export, request, subnets, Reference};
use ndarray::{Array4, Ix4};
use tailor::runtime::bundle::Bundle;
use tailor::runtime::engine::{self, EngineKind, EngineOptions};

const TINY: &str = "tests/fixtures/vit-tiny";

/// Runs every sub-network `ids` of the bundle on the reference input with
/// each engine and compares with the references under `tag`.
fn check(bundle: &Path, refs: &Reference, tag: &str, ids: &[&str]) {
    let input: Array4<f32> = refs.get("input").into_dimensionality::<Ix4>().unwrap();
    let bundle = Bundle::open(bundle).unwrap();
    let mut engines = vec![EngineKind::Tract];
    if cfg!(feature = "ort") {
        engines.push(EngineKind::Ort);
    }
    for id in ids {
        let subnet = bundle.subnet(id).unwrap();
        bundle.verify(&subnet).unwrap();
        for &kind in &engines {
            let opts = EngineOptions {
                batch: input.dim().0,
                ..Default::default()
            };
            let mut session = engine::load(kind, &bundle.graph_path(&subnet), &opts).unwrap();
            let out = session.run(input.view()).unwrap();
            let what = format!("{kind} {tag}{id}");
            assert_close(
                &out.cls_token.into_dyn(),
                &refs.get(&format!("{tag}{id}.cls_token")),
                &format!("{what} cls_token"),
            );
            assert_close(
                &out.patch_tokens.into_dyn(),
                &refs.get(&format!("{tag}{id}.patch_tokens")),
                &format!("{what} patch_tokens"),
            );
        }
    }
}

/// The ids of every sub-network in the bundle, in manifest order.
fn subnet_ids(bundle: &Path) -> Vec<String> {
    Bundle::open(bundle)
        .unwrap()
        .manifest()
        .subnets
        .iter()
        .map(|s| s.id.to_owned())
        .collect()
}

#[test]
fn poa_checkpoint_matches_the_reference_for_every_subnet() {
    let req = request(&format!(
        "{TINY}/output/eval/training_99/teacher_checkpoint.pth"
    ));
    let (_dir, bundle) = export(&req);
    let refs = Reference::open(&format!("{TINY}/reference.safetensors"));
    let ids = subnet_ids(&bundle);
    // The grid comes from the config found in POA's output layout.
    assert_eq!(
        ids,
        [
            "w32-d2", "w32-d3", "w32-d4", "w48-d2", "w48-d3", "w48-d4", "w64-d2", "w64-d3",
            "w64-d4"
        ]
    );
    check(
        &bundle,
        &refs,
        "",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn fp16_and_chunked_checkpoints_match_their_rounded_references() {
    let refs = Reference::open(&format!("{TINY}/reference.safetensors"));
    for teacher in ["teacher-fp16.pth", "teacher-chunked.pth"] {
        let mut req = request(&format!("{TINY}/{teacher}"));
        req.config = Some(common::fixture(&format!("{TINY}/output/config.yaml")));
        req.selection = subnets(&["32x2", "64x4"]);
        let (_dir, bundle) = export(&req);
        check(&bundle, &refs, "fp16.", &["w32-d2", "w64-d4"]);
    }
}

#[test]
fn bf16_safetensors_with_plain_names_match() {
    let refs = Reference::open(&format!("{TINY}/reference.safetensors"));
    let mut req = request(&format!("{TINY}/teacher-bf16.safetensors"));
    req.config = Some(common::fixture(&format!("{TINY}/output/config.yaml")));
    req.selection = subnets(&["32x2", "64x4"]);
    let (_dir, bundle) = export(&req);
    check(&bundle, &refs, "bf16.", &["w32-d2", "w64-d4"]);
}

#[test]
fn layer_norms_without_bias_match() {
    let refs = Reference::open(&format!("{TINY}/reference.safetensors"));
    let mut req = request(&format!("{TINY}/teacher-nobias.safetensors"));
    req.config = Some(common::fixture(&format!("{TINY}/output/config.yaml")));
    req.selection = subnets(&["32x2", "48x3", "64x4"]);
    let (_dir, bundle) = export(&req);
    check(&bundle, &refs, "nobias.", &["w32-d2", "w48-d3", "w64-d4"]);
}

#[test]
fn depth_follows_numpy_linspace_where_the_floor_formula_differs() {
    let refs = Reference::open("tests/fixtures/vit-deep31/reference.safetensors");
    let meta = refs.meta();
    let mut req = request("tests/fixtures/vit-deep31/teacher.safetensors");
    // No config: head_dim cannot be read off the tensors.
    req.overrides.head_dim = Some(meta["geometry"]["head_dim"].as_u64().unwrap() as u32);
    let ids = [
        "w32-d23", "w16-d23", "w32-d31", "w16-d31", "w32-d12", "w16-d1",
    ];
    req.selection = subnets(&ids);
    let (_dir, bundle) = export(&req);
    let b = Bundle::open(&bundle).unwrap();
    let kept: Vec<u64> = b
        .subnet("w32-d23")
        .unwrap()
        .block_idx
        .iter()
        .map(|&i| i as u64)
        .collect();
    let numpy: Vec<u64> = serde_json::from_value(meta["block_idx"]["23"].clone()).unwrap();
    let paper: Vec<u64> = serde_json::from_value(meta["paper_block_idx"]["23"].clone()).unwrap();
    assert_eq!(kept, numpy);
    assert_ne!(kept, paper, "the fixture must exercise the rounding case");
    check(&bundle, &refs, "", &ids);
}

const RESNET_TINY: &str = "tests/fixtures/resnet-tiny";

/// The ids of the sub-networks a reference file holds.
fn reference_ids(refs: &Reference) -> Vec<String> {
    let meta = refs.meta();
    let subnets = meta["subnets"]
        .as_object()
        .expect("fixture lists its subnets");
    subnets.keys().cloned().collect()
}

#[test]
fn resnet_checkpoint_matches_the_reference() {
    let req = request(&format!(
        "{RESNET_TINY}/output/eval/training_49/teacher_checkpoint.pth"
    ));
    let (_dir, bundle) = export(&req);
    let refs = Reference::open(&format!("{RESNET_TINY}/reference.safetensors"));
    let b = Bundle::open(&bundle).unwrap();
    let m = b.manifest();
    // The config found in POA's layout: 3 zipped mid widths × 2·3·3·1 depths.
    assert_eq!((m.teacher.family, m.subnets.len()), ("resnet", 54));
    let meta = refs.meta();
    for (id, want) in meta["subnets"].as_object().unwrap() {
        let s = b.subnet(id).unwrap();
        let per_stage = |v: &Option<tailor::runtime::manifest::PerStage>| {
            serde_json::to_value(v.as_ref().unwrap().as_slice()).unwrap()
        };
        assert_eq!(per_stage(&s.mid_widths), want["mid_widths"], "{id}");
        assert_eq!(per_stage(&s.depths), want["depths"], "{id}");
    }
    let ids = reference_ids(&refs);
    check(
        &bundle,
        &refs,
        "",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn resnet_stage_depth_follows_numpy_linspace_where_the_floor_formula_differs() {
    let refs = Reference::open("tests/fixtures/resnet-deep31/reference.safetensors");
    let meta = refs.meta();
    // The config beside the teacher gives GroupNorm(1) and the 31-block stage.
    let mut req = request("tests/fixtures/resnet-deep31/teacher.safetensors");
    let ids = reference_ids(&refs);
    req.selection = subnets(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    let (_dir, bundle) = export(&req);
    let b = Bundle::open(&bundle).unwrap();
    let kept: Vec<u64> = b
        .subnet("w2-d1.1.23.1")
        .unwrap()
        .block_idx
        .iter()
        .map(|&i| i as u64)
        .collect();
    // Stages 1 and 2 hold one block each: stage 3's blocks start at 2.
    let stage3 = |key: &str| -> Vec<u64> {
        let idx: Vec<u64> = serde_json::from_value(meta[key]["23"].clone()).unwrap();
        [0, 1]
            .into_iter()
            .chain(idx.iter().map(|i| i + 2))
            .chain([2 + 31])
            .collect()
    };
    assert_eq!(kept, stage3("block_idx"));
    assert_ne!(
        kept,
        stage3("paper_block_idx"),
        "the fixture must exercise the rounding case"
    );
    check(
        &bundle,
        &refs,
        "",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

const SWIN: &str = "tests/fixtures/swin-tiny";

#[test]
fn swin_poa_checkpoint_matches_the_reference_for_every_subnet() {
    let req = request(&format!(
        "{SWIN}/output/eval/training_49/teacher_checkpoint.pth"
    ));
    let (_dir, bundle) = export(&req);
    let refs = Reference::open(&format!("{SWIN}/reference.safetensors"));
    let b = Bundle::open(&bundle).unwrap();
    assert_eq!(b.manifest().teacher.family, "swin");
    let ids: Vec<String> = b
        .manifest()
        .subnets
        .iter()
        .map(|s| s.id.to_owned())
        .collect();
    // The grid comes from the config's student.arch swin_dynamic keys.
    let grid: Vec<String> = [4, 8, 12]
        .iter()
        .flat_map(|w| (2..=5).map(move |d| format!("w{w}-d2.2.{d}.2")))
        .collect();
    assert_eq!(ids, grid);
    // Stage 3 at depth 3 keeps teacher blocks 0, 2, 4 (numbered after
    // stages 1 and 2's four blocks), the other stages all of theirs.
    let meta = refs.meta();
    let kept: Vec<u16> = serde_json::from_value(meta["block_idx"]["3"].clone()).unwrap();
    let s = b.subnet("w8-d2.2.3.2").unwrap();
    assert_eq!(s.depths.as_deref(), Some(&[2, 2, 3, 2][..]));
    let stage3: Vec<u16> = kept.iter().map(|i| i + 4).collect();
    assert_eq!(&s.block_idx[4..7], &stage3[..]);
    check(
        &bundle,
        &refs,
        "",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn swin_without_config_is_known_by_its_tensor_names() {
    // fp16, plain names, no LayerNorm biases: what POA saves under torch >= 2.1.
    let refs = Reference::open(&format!("{SWIN}/reference.safetensors"));
    let mut req = request(&format!("{SWIN}/teacher-nobias-fp16.safetensors"));
    req.overrides.image_size = Some(40);
    let ids = ["w4-d2.2.2.2", "w8-d2.2.3.2", "w12-d2.2.5.2"];
    req.selection = subnets(&ids);
    let (_dir, bundle) = export(&req);
    check(&bundle, &refs, "nobias.", &ids);
}

/// Every SDR path and the whole SDRnet, exported gathered and folded,
/// compute what the whole net computes with the path's unchosen groups
/// masked to zero (tools/sdr_reference.py, float64 numpy).
#[test]
fn sdr_paths_match_the_masked_sdrnet() {
    let (_dir, bundle) = export(&request("examples/sdr-tiny/sdr.safetensors"));
    let refs = Reference::open("tests/fixtures/sdr-tiny/reference.safetensors");
    let ids = subnet_ids(&bundle);
    assert_eq!(ids.len(), 17, "{ids:?}");
    check(
        &bundle,
        &refs,
        "",
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}
