//! The names every bundle graph's inputs and outputs carry: the contract
//! between the exporter that writes graphs and every engine that runs them,
//! spelled once here so a rename cannot reach only one side.

/// The one input: a batch of preprocessed images, f32 `[batch, 3, H, W]`.
pub const PIXEL_VALUES: &str = "pixel_values";
/// The image embedding, f32 `[batch, width]`.
pub const CLS_TOKEN: &str = "cls_token";
/// The per-patch features, f32 `[batch, patches, width]`.
pub const PATCH_TOKENS: &str = "patch_tokens";
/// The outputs every bundle graph has, in this order.
pub const OUTPUTS: [&str; 2] = [CLS_TOKEN, PATCH_TOKENS];
/// The task head's output, present once `exporter calibrate --head` gave one.
pub const LOGITS: &str = "logits";
