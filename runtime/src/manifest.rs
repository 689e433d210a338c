//! The bundle manifest: what a bundle holds, as the exporter writes it and
//! the runtime reads it.
//!
//! One set of types serves both encodings: `manifest.json` (for people and
//! scripts) and `manifest.postcard` (compact, decoded on the device without
//! allocating: strings borrow from the input buffer). The list of
//! sub-networks is a `heapless::Vec` in the `no_std` core and a heap `Vec`
//! with `std` (hundreds of entries are too big for a thread's stack); both
//! encode identically.

use core::fmt;

use heapless::Vec;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The manifest format this build reads and writes (6: fp16 variants; 5:
/// every sub-network's precision, int8 variants of fp32 ones; 4: the task a bundle was routed
/// to; 3: calibration results; 2: family-generic sub-networks and teacher
/// configs; 1 was ViT only).
pub const FORMAT_VERSION: u32 = 6;
/// The most sub-networks a manifest may list (POA's ResNet grid has 465).
pub const MAX_SUBNETS: usize = 512;
/// The most blocks a sub-network may keep.
pub const MAX_BLOCKS: usize = 64;
/// The most weight files one graph may reference.
pub const MAX_WEIGHT_FILES: usize = 4;
/// The most stages a staged family (Swin, ResNet) has.
pub const MAX_STAGES: usize = 4;
/// The most SDR blocks a route picks a group in (a ResNet-50 has 16 bottlenecks).
pub const MAX_ROUTE: usize = 16;

/// One individual group per SDR block, or a group count per SDR block.
pub type PerSdrBlock = Vec<u8, MAX_ROUTE>;

/// One number per stage.
pub type PerStage = Vec<u32, MAX_STAGES>;

/// The list of sub-networks: bounded and inline without `std`.
#[cfg(not(feature = "std"))]
pub type Subnets<'a> = Vec<Subnet<'a>, MAX_SUBNETS>;
/// The list of sub-networks: on the heap with `std`.
#[cfg(feature = "std")]
pub type Subnets<'a> = std::vec::Vec<Subnet<'a>>;

/// A bundle's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest<'a> {
    /// Always [`FORMAT_VERSION`] for manifests this build writes.
    pub format_version: u32,
    /// The teacher the bundle was sliced from.
    #[serde(borrow)]
    pub teacher: Teacher<'a>,
    /// Every sub-network in the bundle, in grid order (width, then depth).
    #[serde(borrow)]
    pub subnets: Subnets<'a>,
    /// What `exporter calibrate` measured the qualities on, if it ran.
    #[serde(borrow)]
    pub calibration: Option<Calibration<'a>>,
}

/// The data and metric behind every sub-network's `quality`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration<'a> {
    /// What `quality` measures.
    pub quality_metric: QualityMetric,
    /// sha256 of the dataset (the `.npz` file, or every image of a folder).
    pub dataset_sha256: Sha256,
    /// Images the features were computed on.
    pub dataset_images: u32,
    /// Per-tensor activation ranges for a later INT8 export.
    #[serde(borrow)]
    pub ranges: BundleFile<'a>,
    /// The task the qualities score (`exporter route --task`); `None` from
    /// `exporter calibrate`.
    #[serde(borrow)]
    pub task: Option<&'a str>,
}

/// The score in a sub-network's `quality`, higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityMetric {
    /// Weighted k-NN top-1 accuracy on `cls_token`, in percent (labelled data).
    KnnTop1,
    /// Linear CKA of `cls_token` with the largest sub-network's, in [0, 1]
    /// (label-free).
    CkaFidelity,
}

impl QualityMetric {
    /// The name in manifests and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            QualityMetric::KnnTop1 => "knn_top1",
            QualityMetric::CkaFidelity => "cka_fidelity",
        }
    }
}

/// The teacher checkpoint's identity and the geometry of its grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Teacher<'a> {
    /// The checkpoint's file name (no directories).
    pub file: &'a str,
    /// sha256 of the checkpoint file's bytes.
    pub sha256: Sha256,
    /// The elastic family: `"vit"`, `"swin"` or `"resnet"`.
    pub family: &'a str,
    /// The geometry the sub-networks were sliced with.
    pub config: TeacherConfig,
}

/// The teacher geometry that every sub-network shares, by family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherConfig {
    Vit(VitConfig),
    Swin(SwinConfig),
    #[serde(rename = "resnet")]
    ResNet(ResNetConfig),
    Sdr(SdrConfig),
}

impl TeacherConfig {
    /// Side of the square input image, in pixels.
    pub fn image_size(&self) -> u32 {
        match self {
            TeacherConfig::Vit(c) => c.image_size,
            TeacherConfig::Swin(c) => c.image_size,
            TeacherConfig::ResNet(c) => c.image_size,
            TeacherConfig::Sdr(c) => c.image_size,
        }
    }
}

impl fmt::Display for TeacherConfig {
    /// One line for people, e.g. `width 64, depth 4, head_dim 16, image 32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeacherConfig::Vit(c) => write!(
                f,
                "width {}, depth {}, head_dim {}, image {}",
                c.max_width, c.max_depth, c.head_dim, c.image_size
            ),
            TeacherConfig::Swin(c) => write!(
                f,
                "width {}, depths {:?}, head_dim {}, window {}, image {}",
                c.max_width, c.max_depths, c.head_dim, c.window_size, c.image_size
            ),
            TeacherConfig::ResNet(c) => {
                f.write_str("depths")?;
                for (i, (lo, hi)) in c.min_depths.iter().zip(&c.max_depths).enumerate() {
                    let sep = if i == 0 { " " } else { "/" };
                    write!(f, "{sep}{lo}..{hi}")?;
                }
                write!(
                    f,
                    ", stem {}, base {}, GroupNorm({}), image {}",
                    c.stem_channels, c.base_channels, c.num_gn_groups, c.image_size
                )
            }
            TeacherConfig::Sdr(c) => write!(
                f,
                "{} SDR blocks, groups {:?}, {} paths, image {}",
                c.groups.len(),
                c.groups,
                c.groups.iter().map(|&g| u64::from(g)).product::<u64>(),
                c.image_size
            ),
        }
    }
}

/// A ViT teacher's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Full width D (embedding dimension).
    pub max_width: u32,
    /// Full depth Lmax (number of blocks).
    pub max_depth: u32,
    /// Channels per attention head; widths are multiples of it.
    pub head_dim: u32,
    /// Side of a square patch, in pixels.
    pub patch_size: u32,
    /// Side of the square input image, in pixels.
    pub image_size: u32,
    /// Hidden width of the MLP as a multiple of the width.
    pub mlp_ratio: u32,
}

/// A Swin teacher's geometry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    /// Stage-1 width C; stage i has C·2^i channels.
    pub max_width: u32,
    /// Blocks per stage; only stage 3's depth is elastic.
    pub max_depths: PerStage,
    /// Channels per attention head; widths are multiples of it.
    pub head_dim: u32,
    /// Side of an attention window, in tokens.
    pub window_size: u32,
    /// Side of a square patch, in pixels.
    pub patch_size: u32,
    /// Side of the square input image, in pixels.
    pub image_size: u32,
    /// Hidden width of the MLP as a multiple of the width.
    pub mlp_ratio: u32,
}

/// A bottleneck ResNet teacher's geometry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Output channels of the stem convolution.
    pub stem_channels: u32,
    /// Stage 1's bottleneck mid width at expansion 4; stage i outputs
    /// `4 · base_channels · 2^i` channels.
    pub base_channels: u32,
    /// Groups of every GroupNorm.
    pub num_gn_groups: u32,
    /// Fewest and most blocks of each stage.
    pub min_depths: PerStage,
    pub max_depths: PerStage,
    /// Stride of each stage's first block.
    pub strides: PerStage,
    /// Side of the square input image, in pixels.
    pub image_size: u32,
}

/// An SDR teacher's routing geometry (docs/sdr.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdrConfig {
    /// Individual groups of each SDR block, in network order.
    pub groups: PerSdrBlock,
    /// Side of the square input image, in pixels.
    pub image_size: u32,
}

/// One sub-network of the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subnet<'a> {
    /// Stable identifier, e.g. `w384-d12` (see docs/exporter.md per family).
    pub id: &'a str,
    /// The first stage's width: ViT's embedding width, Swin's stage-1
    /// width, ResNet's stage-1 bottleneck mid width.
    pub width: u32,
    /// Blocks kept, all stages together.
    pub depth: u32,
    /// Blocks kept per stage (staged families; `None` for ViT).
    pub depths: Option<PerStage>,
    /// Bottleneck mid width per stage (ResNet; `None` otherwise).
    pub mid_widths: Option<PerStage>,
    /// Teacher block indices kept, in order, numbered across stages.
    pub block_idx: Vec<u16, MAX_BLOCKS>,
    /// The individual group each SDR block computes with (an SDR path;
    /// `None` for the whole SDRnet and the other families).
    pub route: Option<PerSdrBlock>,
    /// The ONNX graph, relative to the bundle directory.
    pub onnx: &'a str,
    /// sha256 of the graph file.
    pub onnx_sha256: Sha256,
    /// The external-data files the graph references.
    #[serde(borrow)]
    pub weights: Vec<BundleFile<'a>, MAX_WEIGHT_FILES>,
    /// Parameters in the sub-network.
    pub params: u64,
    /// Multiply-accumulates per image at the teacher's resolution.
    pub macs: u64,
    /// Bytes of the weights this graph reads.
    pub weight_bytes: u64,
    /// Estimated peak activation memory at batch 1, in bytes.
    pub activation_bytes: u64,
    /// Calibrated quality score in the manifest's
    /// [`Calibration::quality_metric`], higher is better, if calibration ran.
    pub quality: Option<f32>,
    /// Linear CKA of `cls_token` with the largest sub-network's (1 for the
    /// largest itself), if calibration ran: a ranking without labels.
    pub fidelity: Option<f32>,
    /// The number format it computes in, and for a variant the fp32
    /// sub-network it was derived from.
    #[serde(borrow)]
    pub precision: Precision<'a>,
}

impl Subnet<'_> {
    /// The fp32 sub-network this one is a variant of (`None` for fp32 ones).
    pub fn parent(&self) -> Option<&str> {
        match self.precision {
            Precision::Fp32 => None,
            Precision::Int8 { parent, .. } | Precision::Fp16 { parent } => Some(parent),
        }
    }
}

/// A sub-network's number format. A variant shares its parent's
/// architecture, `params` and `macs`; its own graph, weights, bytes and
/// sha256 are listed as any sub-network's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision<'a> {
    /// As exported: float32 weights and activations.
    Fp32,
    /// An explicit QDQ graph (`exporter quantize`): int8 weights per output
    /// channel, activations quantised per tensor.
    Int8 {
        /// The fp32 sub-network's id (the variant's is `PARENT@int8-ENCODING`).
        parent: &'a str,
        /// How activations are encoded, which decides the engines that run it fast.
        encoding: ActivationEncoding,
        /// How activations' clipping ranges were chosen.
        calibrator: ActivationCalibrator,
    },
    /// Float16 weights and arithmetic (`exporter quantize --precision
    /// fp16`), float32 inputs and outputs; LayerNorm, Softmax and the
    /// normalisations' statistics stay float32, where fp16 overflows.
    Fp16 {
        /// The fp32 sub-network's id (the variant's is `PARENT@fp16`).
        parent: &'a str,
    },
}

impl Precision<'_> {
    /// The name in manifests, ids and on command lines: `fp32`, `fp16` or `int8`.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The number format without the variant's details.
    pub fn kind(&self) -> PrecisionKind {
        match self {
            Precision::Fp32 => PrecisionKind::Fp32,
            Precision::Fp16 { .. } => PrecisionKind::Fp16,
            Precision::Int8 { .. } => PrecisionKind::Int8,
        }
    }
}

/// A number format as `--precision` names it. Declared widest first: at an
/// equal objective the wider format ranks first, as it computes closer to
/// what was trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionKind {
    Fp32,
    Fp16,
    Int8,
}

impl PrecisionKind {
    /// Every format, widest first.
    pub const ALL: [PrecisionKind; 3] = [
        PrecisionKind::Fp32,
        PrecisionKind::Fp16,
        PrecisionKind::Int8,
    ];

    /// `fp32`, `fp16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            PrecisionKind::Fp32 => "fp32",
            PrecisionKind::Fp16 => "fp16",
            PrecisionKind::Int8 => "int8",
        }
    }
}

impl fmt::Display for PrecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`PrecisionKind`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPrecision;

impl fmt::Display for UnknownPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected fp32, fp16 or int8")
    }
}

impl core::str::FromStr for PrecisionKind {
    type Err = UnknownPrecision;

    fn from_str(s: &str) -> Result<Self, UnknownPrecision> {
        PrecisionKind::ALL
            .into_iter()
            .find(|k| s.eq_ignore_ascii_case(k.name()))
            .ok_or(UnknownPrecision)
    }
}

/// How an int8 variant encodes its activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationEncoding {
    /// Symmetric int8, zero point 0 (TensorRT).
    S8,
    /// Asymmetric uint8 (ONNX Runtime's CPU on AVX2, QNN's HTP).
    U8,
}

impl ActivationEncoding {
    /// The name in manifests and ids: `s8` or `u8`.
    pub fn name(self) -> &'static str {
        match self {
            ActivationEncoding::S8 => "s8",
            ActivationEncoding::U8 => "u8",
        }
    }
}

/// How an int8 variant's activation ranges were clipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationCalibrator {
    /// The whole observed range.
    MinMax,
    /// The recorded 99.99th percentile of |x|.
    Percentile,
    /// The clip minimising the squared quantisation error.
    Mse,
}

impl ActivationCalibrator {
    /// The name in manifests and on command lines.
    pub fn name(self) -> &'static str {
        match self {
            ActivationCalibrator::MinMax => "minmax",
            ActivationCalibrator::Percentile => "percentile",
            ActivationCalibrator::Mse => "mse",
        }
    }
}

/// A file of the bundle other than a graph (a graph's external data, the
/// calibration's ranges), listed with what verifies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleFile<'a> {
    /// Path relative to the bundle directory.
    pub path: &'a str,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// sha256 of the file.
    pub sha256: Sha256,
}

/// A sha256 digest: lowercase hex in human-readable encodings, 32 raw bytes
/// in postcard.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sha256(pub [u8; 32]);

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// [`Sha256::short`]: a digest's first 12 hex digits.
pub struct ShortSha256<'a>(&'a Sha256);

impl fmt::Display for ShortSha256<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0 .0[..6].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl Sha256 {
    /// Its first 12 hex digits, as messages show a digest: enough to tell
    /// two apart.
    pub fn short(&self) -> ShortSha256<'_> {
        ShortSha256(self)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16);
            *o = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Sha256(out))
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let mut hex = heapless::String::<64>::new();
            fmt::write(&mut hex, format_args!("{self}")).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&hex)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let hex = <&str>::deserialize(d)?;
            Sha256::from_hex(hex)
                .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits of a sha256"))
        } else {
            <[u8; 32]>::deserialize(d).map(Sha256)
        }
    }
}

/// Why a manifest could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a manifest (truncated, corrupted, or too many entries).
    Malformed,
    /// A manifest of a format version this build does not read.
    UnsupportedVersion(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed => f.write_str("not a valid manifest (truncated or corrupted)"),
            DecodeError::UnsupportedVersion(v) => write!(
                f,
                "manifest format version {v} is not supported (this build reads version {FORMAT_VERSION}; {})",
                if *v < FORMAT_VERSION { "export the bundle again with this exporter" } else { "update the runtime" }
            ),
        }
    }
}

impl<'a> Manifest<'a> {
    /// Decodes `manifest.postcard` bytes without allocating.
    pub fn from_postcard(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        // The version leads the encoding, so an unknown version is named as
        // such rather than reported as garbage.
        let (version, _) =
            postcard::take_from_bytes::<u32>(bytes).map_err(|_| DecodeError::Malformed)?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let (manifest, rest) =
            postcard::take_from_bytes::<Manifest<'a>>(bytes).map_err(|_| DecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(DecodeError::Malformed);
        }
        Ok(manifest)
    }

    /// Looks a sub-network up by id.
    pub fn subnet(&self, id: &str) -> Option<&Subnet<'a>> {
        self.subnets.iter().find(|s| s.id == id)
    }
}

#[cfg(feature = "std")]
impl Manifest<'_> {
    /// Encodes the compact on-device form.
    pub fn to_postcard(&self) -> std::vec::Vec<u8> {
        postcard::to_stdvec(self).expect("a manifest always encodes")
    }

    /// Encodes `manifest.json`: pretty, for people and scripts.
    pub fn to_json(&self) -> std::vec::Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always encodes")
    }

    /// Decodes `manifest.json`, checking the format version first.
    pub fn from_json(text: &str) -> Result<Manifest<'_>, JsonError> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let v: Version = serde_json::from_str(text).map_err(JsonError::Syntax)?;
        if v.format_version != FORMAT_VERSION {
            return Err(JsonError::Decode(DecodeError::UnsupportedVersion(
                v.format_version,
            )));
        }
        serde_json::from_str(text).map_err(JsonError::Syntax)
    }
}

/// Why `manifest.json` could not be read.
#[cfg(feature = "std")]
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("{0}")]
    Syntax(serde_json::Error),
    #[error("{0}")]
    Decode(DecodeError),
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests;
