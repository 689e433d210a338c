use std::path::Path;

use super::graph::{relative_position_index, shift_regions};
use super::grid::{resolve, Grid};
use super::*;
use crate::config::{ConfigError, Overrides, PoaConfig};

fn poa_swin() -> Geometry {
    Geometry {
        max_width: 128,
        max_depths: [2, 2, 18, 2],
        head_dim: 16,
        window: 7,
        patch_size: 4,
        image_size: 224,
        ln_bias: true,
        qkv_bias: true,
    }
}

#[test]
fn swin_t_and_swin_b_costs_match_the_known_sizes() {
    // Swin-T: 28.3M parameters with its 0.77M classifier, 4.5 GMACs at 224².
    let tiny = Geometry {
        max_width: 96,
        max_depths: [2, 2, 6, 2],
        head_dim: 32,
        ..poa_swin()
    };
    let t = tiny.costs(&tiny.subnet(96, 6));
    assert!((27_000_000..28_000_000).contains(&t.params), "{}", t.params);
    assert!(
        (4_300_000_000..4_700_000_000).contains(&t.macs),
        "{}",
        t.macs
    );
    // Swin-B: 87.8M with its 1.03M classifier, 15.4 GMACs (POA's largest).
    let g = poa_swin();
    let b = g.costs(&g.subnet(128, 18));
    assert!((86_000_000..88_000_000).contains(&b.params), "{}", b.params);
    assert!(
        (15_000_000_000..15_800_000_000).contains(&b.macs),
        "{}",
        b.macs
    );
    let small = g.costs(&g.subnet(96, 6));
    assert!(small.params < t.params + 1_000_000 && small.macs < b.macs / 3);
}

#[test]
fn only_stage_three_is_elastic() {
    let g = poa_swin();
    assert_eq!(g.subnet(96, 6).id(), "w96-d2.2.6.2");
    assert_eq!(g.check(&g.subnet(112, 18)), Ok(g.subnet(112, 18)));
    let depths = |d: [u32; 4]| SubnetSpec {
        width: 96,
        depths: Depths::new(&d).unwrap(),
        path: None,
    };
    let stage = |stage, depth, min, max| {
        Err(FamilyError::StageDepth {
            stage,
            depth,
            min,
            max,
        })
    };
    assert_eq!(g.check(&depths([2, 2, 19, 2])), stage(3, 19, 1, 18));
    assert_eq!(g.check(&depths([2, 1, 6, 2])), stage(2, 1, 2, 2));
    assert_eq!(g.check(&depths([2, 2, 6, 3])), stage(4, 3, 2, 2));
    assert_eq!(
        g.check(&SubnetSpec::single(96, 6)),
        Err(FamilyError::Stages {
            family: "Swin",
            expected: 4,
            found: 1
        })
    );
    assert_eq!(
        g.check(&g.subnet(100, 6)),
        Err(FamilyError::WidthNotMultiple {
            width: 100,
            head_dim: 16
        })
    );
    assert_eq!(
        g.check(&g.subnet(144, 6)),
        Err(FamilyError::WidthRange {
            width: 144,
            max: 128
        })
    );
}

fn poa_facts() -> TensorFacts {
    TensorFacts {
        max_width: 128,
        max_depths: [2, 2, 18, 2],
        patch_size: 4,
        head_dim: 16,
        window: 7,
        ln_bias: true,
        qkv_bias: true,
    }
}

const POA_CONFIG: &str = "student:\n  arch: swin_dynamic\n  min_embed_dim: 96\n  \
    max_embed_dim: 128\n  min_s3_depth: 6\n  max_depths: [2, 2, 18, 2]\n  head_dim: 16\n  \
    mode: order\n  patch_size: 4\n  window_size: 7\n  qkv_bias: true\n\
    crops:\n  global_crops_size: 224\n";

fn with_config(text: &str) -> Result<Grid, ConfigError> {
    let config = PoaConfig::parse(Path::new("cfg.yaml"), text).unwrap();
    resolve(&poa_facts(), Some(&config), &Overrides::default())
}

#[test]
fn poa_config_gives_the_39_grid() {
    let grid = with_config(POA_CONFIG).unwrap();
    assert_eq!(grid.widths, [96, 112, 128]);
    assert_eq!(grid.s3_depths, (6..=18).collect::<Vec<_>>());
    assert_eq!(grid.subnets().len(), 39);
    assert_eq!(grid.subnets()[0].id(), "w96-d2.2.6.2");
    assert!(grid.assumptions.is_empty());
}

#[test]
fn config_contradictions_name_the_key_and_both_values() {
    for (from, to, want) in [
        (
            "window_size: 7",
            "window_size: 12",
            "student.window_size = 12, the tensors say 7",
        ),
        (
            "[2, 2, 18, 2]",
            "[2, 2, 6, 2]",
            "student.max_depths = [2, 2, 6, 2], the tensors hold [2, 2, 18, 2]",
        ),
    ] {
        let msg = with_config(&POA_CONFIG.replace(from, to))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cfg.yaml") && msg.contains(want), "{msg}");
    }
}

#[test]
fn without_config_assumptions_are_stated() {
    let grid = resolve(&poa_facts(), None, &Overrides::default()).unwrap();
    assert_eq!(grid.widths, [96, 112, 128]);
    assert_eq!(grid.s3_depths, (6..=18).collect::<Vec<_>>());
    assert_eq!(grid.geometry.image_size, 224);
    assert_eq!(grid.assumptions.len(), 3, "{:?}", grid.assumptions);
}

#[test]
fn kept_blocks_are_numbered_across_stages() {
    let g = poa_swin();
    let layout = g.layout(&g.subnet(96, 6));
    assert_eq!(layout.depths, Some(vec![2, 2, 6, 2]));
    // Stage 3 keeps linspace(0, 17, 6) = [0, 3, 6, 10, 13, 17], after 4 blocks.
    assert_eq!(layout.block_idx, [0, 1, 2, 3, 4, 7, 10, 14, 17, 21, 22, 23]);
}

#[test]
fn bias_index_and_shift_regions_follow_swin() {
    // 2x2 window: query (0,0) vs key (1,1) is Δ = (-1,-1), the table's first row.
    let index = relative_position_index(2);
    assert_eq!((index[0], index[3], index[3 * 4], index[5]), (4, 0, 8, 4));
    // A 6² map in windows of 3 shifted by 1: bands [0,3), [3,5), [5,6).
    let regions = shift_regions(6, 3, 1);
    assert_eq!(&regions[..9], &[0; 9]);
    assert_eq!(&regions[27..], &[4, 4, 5, 4, 4, 5, 7, 7, 8]);
}

#[test]
fn cuts_take_grouped_rows_and_merged_channels() {
    let g = poa_swin();
    let runs = |param, w| g.cut(param, w).runs().collect::<Vec<_>>();
    // Stage 2 (C_s = 256, w_s = 192): q, k and v rows of the first 192 columns.
    let qkv = runs(Param::block(ParamKind::QkvBias, 1, 0), 96);
    assert_eq!(qkv, [0..192, 256..448, 512..704]);
    // Merge after stage 1 (C_s = 128, w_s = 96): ∪_k [128k, 128k + 96).
    let merge = runs(Param::merge(ParamKind::MergeNormWeight, 0), 96);
    assert_eq!(merge, [0..96, 128..224, 256..352, 384..480]);
    let reduction = g.cut(Param::merge(ParamKind::ReductionWeight, 0), 96);
    assert_eq!(reduction.shape(), [192, 384]);
    assert_eq!(reduction.scale(), 128.0 / 96.0);
    // Stage 4 bias table: 48 of the teacher's 1024/16 = 64 head columns.
    let table = g.cut(Param::block(ParamKind::BiasTable, 3, 1), 96);
    assert_eq!(table.shape(), [169, 48]);
    assert_eq!(table.runs().nth(1), Some(64..112));
    // The patch embed keeps all 128 channels.
    let patch = g.cut(Param::top(ParamKind::PatchWeight), 96);
    assert_eq!(patch.shape(), [128, 3, 4, 4]);
}
