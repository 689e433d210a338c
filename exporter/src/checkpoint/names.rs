//! One naming scheme for POA, DINOv2 and timm teachers.

/// Training-only heads: never part of a deployed sub-network.
const TRAINING_HEADS: [&str; 2] = ["dino_head", "ibot_head"];

/// Maps a checkpoint key to the plain DINOv2/timm name, or `None` for a training-head key.
///
/// - a leading `module.` (DDP) and `backbone.` (POA) are stripped;
/// - keys under `dino_head.` / `ibot_head.` are training heads;
/// - an elastic wrapper segment directly before a final `weight` / `bias` is dropped: `linear`
///   after any segment (`attn.qkv.linear.weight` -> `attn.qkv.weight`), `norm` after a
///   LayerNorm, which POA always names `norm*` (`norm.norm.weight` -> `norm.weight`,
///   `downsample.norm.norm.bias` -> `downsample.norm.bias`), while plain `norm.weight` and
///   `downsample.norm.weight` stay;
/// - DINOv2 block chunks `blocks.<chunk>.<i>.` (`i` global) collapse to `blocks.<i>.`.
pub fn canonical_name(key: &str) -> Option<String> {
    let mut rest = key;
    for prefix in ["module.", "backbone."] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let mut segments: Vec<&str> = rest.split('.').collect();
    if TRAINING_HEADS.contains(&segments[0]) {
        return None;
    }
    match segments[..] {
        [.., _, "linear", "weight" | "bias"] => {
            segments.remove(segments.len() - 2);
        }
        [.., layer, "norm", "weight" | "bias"] if layer.starts_with("norm") => {
            segments.remove(segments.len() - 2);
        }
        _ => {}
    }
    if let ["blocks", chunk, index, _, ..] = segments[..] {
        if is_index(chunk) && is_index(index) {
            segments.remove(1);
        }
    }
    Some(segments.join("."))
}

fn is_index(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::canonical_name;

    #[track_caller]
    fn assert_canonical(key: &str, want: &str) {
        assert_eq!(canonical_name(key).as_deref(), Some(want), "{key}");
    }

    #[test]
    fn poa_elastic_wrappers_are_dropped() {
        assert_canonical(
            "backbone.blocks.3.attn.qkv.linear.weight",
            "blocks.3.attn.qkv.weight",
        );
        assert_canonical("backbone.blocks.0.norm1.norm.bias", "blocks.0.norm1.bias");
        assert_canonical(
            "backbone.blocks.11.mlp.fc2.linear.bias",
            "blocks.11.mlp.fc2.bias",
        );
        assert_canonical("backbone.norm.norm.weight", "norm.weight");
        assert_canonical("backbone.cls_token", "cls_token");
        assert_canonical("backbone.blocks.2.ls1.gamma", "blocks.2.ls1.gamma");
    }

    #[test]
    fn swin_norms_inside_modules_keep_their_name() {
        assert_canonical(
            "backbone.stages.0.downsample.norm.norm.weight",
            "stages.0.downsample.norm.weight",
        );
        assert_canonical(
            "backbone.patch_embed.norm.norm.bias",
            "patch_embed.norm.bias",
        );
        assert_canonical("backbone.norm3.norm.weight", "norm3.weight");
        assert_canonical(
            "backbone.stages.1.downsample.reduction.linear.weight",
            "stages.1.downsample.reduction.weight",
        );
    }

    #[test]
    fn plain_names_are_kept() {
        for key in [
            "stages.0.downsample.norm.weight",
            "patch_embed.norm.bias",
            "norm.weight",
            "norm.bias",
            "blocks.3.attn.qkv.weight",
            "patch_embed.proj.weight",
            "pos_embed",
            "linear.weight",
        ] {
            assert_canonical(key, key);
        }
    }

    #[test]
    fn wrapper_is_dropped_only_before_weight_or_bias() {
        assert_canonical("backbone.norm.norm.gamma", "norm.norm.gamma");
        assert_canonical("blocks.0.linear.scale", "blocks.0.linear.scale");
        assert_canonical("norm.norm.norm.weight", "norm.norm.weight");
    }

    #[test]
    fn module_and_backbone_prefixes_are_stripped() {
        assert_canonical("module.backbone.norm.norm.bias", "norm.bias");
        assert_canonical("module.blocks.0.norm1.weight", "blocks.0.norm1.weight");
        // Only leading prefixes; a later `backbone` segment is a real name.
        assert_canonical("x.backbone.weight", "x.backbone.weight");
    }

    #[test]
    fn block_chunks_collapse_to_the_global_index() {
        assert_canonical("blocks.1.6.attn.proj.weight", "blocks.6.attn.proj.weight");
        assert_canonical(
            "backbone.blocks.0.0.norm1.norm.weight",
            "blocks.0.norm1.weight",
        );
        // Two indices but nothing after them is not a chunk.
        assert_canonical("blocks.1.6", "blocks.1.6");
        assert_canonical("blocks.1.x.weight", "blocks.1.x.weight");
    }

    #[test]
    fn training_heads_are_dropped() {
        assert_eq!(canonical_name("dino_head.mlp.0.weight"), None);
        assert_eq!(canonical_name("ibot_head.last_layer.weight_g"), None);
        assert_eq!(canonical_name("module.dino_head.last_layer.weight_v"), None);
        assert_canonical("blocks.0.dino_head", "blocks.0.dino_head");
    }
}
