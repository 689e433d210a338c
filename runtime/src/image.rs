//! Turning a PNG (or, with `jpeg`, a JPEG) into the `pixel_values` a graph
//! expects, exactly as the teacher was evaluated: the shorter side resized to
//! `round(S·256/224)` (bilinear), the centre `S×S` cropped, grey repeated to
//! three channels, ImageNet's mean and std (POA's evaluation transforms).
//!
//! [`Image::preprocess_into`] is the one implementation: `runtime run`,
//! `runtime serve` and `exporter calibrate` all go through it.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayViewMut3, Axis};

/// The largest image decoded unless the caller says otherwise (`max_pixels`
/// in `serve`'s config): 4096², 48 MiB of RGB, refused from the header
/// before a pixel is allocated.
pub const MAX_PIXELS: u64 = 4096 * 4096;

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ImageError {
    pub path: PathBuf,
    pub message: String,
}

/// Why an image sent as bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a readable {format}: {message}")]
    Malformed { format: Format, message: String },
    /// Refused from the header, before the pixels were allocated.
    #[error("the {format} is {width}x{height}, over the limit of {limit} pixels")]
    TooLarge {
        format: Format,
        width: u64,
        height: u64,
        limit: u64,
    },
}

impl DecodeError {
    fn malformed(format: Format) -> impl Fn(String) -> DecodeError {
        move |message| DecodeError::Malformed { format, message }
    }

    /// Refuses `width`×`height` over `limit` pixels.
    fn check(format: Format, width: u64, height: u64, limit: u64) -> Result<(), DecodeError> {
        if width.saturating_mul(height) > limit {
            return Err(DecodeError::TooLarge {
                format,
                width,
                height,
                limit,
            });
        }
        Ok(())
    }
}

/// The encodings [`decode`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    /// Needs the `jpeg` feature (`serve` enables it).
    #[cfg(feature = "jpeg")]
    Jpeg,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Png => "PNG",
            #[cfg(feature = "jpeg")]
            Format::Jpeg => "JPEG",
        })
    }
}

/// Reads `path` as a `[1, 3, side, side]` normalised tensor.
pub fn load_png(path: &Path, side: usize) -> Result<Array4<f32>, ImageError> {
    let fail = |message: String| ImageError {
        path: path.to_owned(),
        message,
    };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let pixels = png_pixels(BufReader::new(file), MAX_PIXELS).map_err(|e| fail(e.to_string()))?;
    Ok(pixels.to_tensor(side))
}

/// Decodes an encoded image of at most `max_pixels` into a
/// `[1, 3, side, side]` normalised tensor, exactly as [`load_png`] prepares
/// a file.
pub fn decode(
    bytes: &[u8],
    format: Format,
    max_pixels: u64,
    side: usize,
) -> Result<Array4<f32>, DecodeError> {
    Ok(Image::decode_at_most(bytes, format, max_pixels)?.to_tensor(side))
}

/// Decoded 8-bit pixels, interleaved, 1 to 4 channels (grey, grey + alpha,
/// RGB, RGBA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    data: Vec<u8>,
    width: usize,
    height: usize,
    channels: usize,
}

/// Why pixels do not make an [`Image`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{width}x{height} pixels with {channels} channels cannot hold {len} bytes (expected 1 to 4 channels, at least one pixel)")]
pub struct ShapeError {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub len: usize,
}

impl Image {
    /// Wraps interleaved 8-bit pixels, e.g. a decoded dataset array.
    pub fn new(
        data: Vec<u8>,
        width: usize,
        height: usize,
        channels: usize,
    ) -> Result<Image, ShapeError> {
        if width == 0
            || height == 0
            || !(1..=4).contains(&channels)
            || data.len() != width * height * channels
        {
            return Err(ShapeError {
                width,
                height,
                channels,
                len: data.len(),
            });
        }
        Ok(Image {
            data,
            width,
            height,
            channels,
        })
    }

    /// Decodes an encoded image of at most [`MAX_PIXELS`].
    pub fn decode(bytes: &[u8], format: Format) -> Result<Image, DecodeError> {
        Image::decode_at_most(bytes, format, MAX_PIXELS)
    }

    /// Decodes an encoded image, refusing one over `max_pixels` from its
    /// header, before its pixels are allocated.
    pub fn decode_at_most(
        bytes: &[u8],
        format: Format,
        max_pixels: u64,
    ) -> Result<Image, DecodeError> {
        match format {
            Format::Png => png_pixels(std::io::Cursor::new(bytes), max_pixels),
            #[cfg(feature = "jpeg")]
            Format::Jpeg => jpeg_pixels(bytes, max_pixels),
        }
    }

    /// `(width, height)` in pixels.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The `[1, 3, side, side]` tensor a graph takes.
    pub fn to_tensor(&self, side: usize) -> Array4<f32> {
        let mut out = Array4::<f32>::zeros((1, 3, side, side));
        self.preprocess_into(out.index_axis_mut(Axis(0), 0));
        out
    }
}

fn png_pixels(
    read: impl std::io::BufRead + std::io::Seek,
    max_pixels: u64,
) -> Result<Image, DecodeError> {
    let fail = DecodeError::malformed(Format::Png);
    let mut decoder = png::Decoder::new(read);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| fail(e.to_string()))?;
    let (width, height) = reader.info().size();
    DecodeError::check(Format::Png, width.into(), height.into(), max_pixels)?;
    let mut data = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut data)
        .map_err(|e| fail(e.to_string()))?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(fail("indexed colour was not expanded".into())),
    };
    Ok(Image {
        data,
        width: info.width as usize,
        height: info.height as usize,
        channels,
    })
}

#[cfg(feature = "jpeg")]
fn jpeg_pixels(bytes: &[u8], max_pixels: u64) -> Result<Image, DecodeError> {
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    // A JPEG's sides are 16-bit: `max_pixels` is the bound, not zune's
    // default side limit.
    let side = usize::from(u16::MAX);
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(side)
        .set_max_height(side);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let fail = DecodeError::malformed(Format::Jpeg);
    decoder.decode_headers().map_err(|e| fail(e.to_string()))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| fail("no image dimensions".into()))?;
    DecodeError::check(Format::Jpeg, width as u64, height as u64, max_pixels)?;
    let data = decoder.decode().map_err(|e| fail(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| fail("no image dimensions".into()))?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    // Asked for RGB, zune-jpeg still returns one channel for a progressive
    // greyscale JPEG: the channels are what it produced, checked by `new`.
    let channels = data.len() / (width * height).max(1);
    Image::new(data, width, height, channels).map_err(|e| fail(e.to_string()))
}

impl Image {
    /// Writes the evaluation transform of this image into `out`
    /// (`[3, S, S]`): shorter side resized to `round(S·256/224)` with
    /// bilinear interpolation (pixel centres aligned), centre `S×S` crop,
    /// ImageNet normalisation.
    pub fn preprocess_into(&self, mut out: ArrayViewMut3<'_, f32>) {
        let side = out.dim().1;
        assert_eq!(
            out.dim(),
            (3, side, side),
            "preprocess_into takes [3, S, S]"
        );
        let (w, h, channels) = (self.width, self.height, self.channels);
        // The resized image as torchvision's `Resize(short)` sizes it: the
        // shorter side `short`, the longer one truncated to keep the aspect.
        let short = (side as f64 * 256.0 / 224.0).round();
        let long = |a: usize, b: usize| (short * a.max(b) as f64 / a.min(b) as f64).floor();
        let (rw, rh) = if w >= h {
            (long(w, h), short)
        } else {
            (short, long(w, h))
        };
        // The crop's corner, rounded half to even as `CenterCrop` does.
        let left = ((rw - side as f64) / 2.0).round_ties_even();
        let top = ((rh - side as f64) / 2.0).round_ties_even();
        // A resized coordinate's source position and weight along one axis.
        let source = |i: usize, offset: f64, resized: f64, len: usize| {
            let f = ((i as f64 + offset + 0.5) * len as f64 / resized - 0.5)
                .clamp(0.0, (len - 1) as f64);
            let i0 = f.floor() as usize;
            (i0, (i0 + 1).min(len - 1), f.fract() as f32)
        };
        let pixel = |x: usize, y: usize, c: usize| -> f32 {
            let base = (y * w + x) * channels;
            // Grey (with or without alpha) stands for all three channels.
            let c = if channels < 3 { 0 } else { c };
            f32::from(self.data[base + c]) / 255.0
        };
        for y in 0..side {
            let (y0, y1, ty) = source(y, top, rh, h);
            for x in 0..side {
                let (x0, x1, tx) = source(x, left, rw, w);
                for c in 0..3 {
                    let upper = pixel(x0, y0, c) * (1.0 - tx) + pixel(x1, y0, c) * tx;
                    let lower = pixel(x0, y1, c) * (1.0 - tx) + pixel(x1, y1, c) * tx;
                    let v = upper * (1.0 - ty) + lower * ty;
                    out[[c, y, x]] = (v - MEAN[c]) / STD[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
        let file = File::create(path).unwrap();
        let mut enc = png::Encoder::new(file, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn a_uniform_image_normalises_per_channel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("red.png");
        let data: Vec<u8> = (0..7 * 5).flat_map(|_| [255, 0, 0]).collect();
        write_png(&path, 7, 5, png::ColorType::Rgb, &data);
        let t = load_png(&path, 4).unwrap();
        assert_eq!(t.dim(), (1, 3, 4, 4));
        for (c, want) in [
            (1.0 - MEAN[0]) / STD[0],
            -MEAN[1] / STD[1],
            -MEAN[2] / STD[2],
        ]
        .iter()
        .enumerate()
        {
            assert!(t
                .index_axis(ndarray::Axis(1), c)
                .iter()
                .all(|v| (v - want).abs() < 1e-5));
        }
    }

    #[test]
    fn a_wide_image_is_centre_cropped_not_stretched() {
        // 8x4: red in the two outer columns on each side, blue between.
        let data: Vec<u8> = (0..4)
            .flat_map(|_| {
                (0..8).flat_map(|x| {
                    if (2..6).contains(&x) {
                        [0, 0, 255]
                    } else {
                        [255, 0, 0]
                    }
                })
            })
            .collect();
        let image = Image::new(data, 8, 4, 3).unwrap();
        // Shorter side 4 -> round(4·256/224) = 5, so 10x5, and the centre
        // 4x4 reads source columns 2.3..4.7: blue only. Stretching would
        // bring the red borders in.
        let t = image.to_tensor(4);
        let (red, blue) = (-MEAN[0] / STD[0], (1.0 - MEAN[2]) / STD[2]);
        assert!(
            t.index_axis(Axis(1), 0)
                .iter()
                .all(|v| (v - red).abs() < 1e-5),
            "{t}"
        );
        assert!(
            t.index_axis(Axis(1), 2)
                .iter()
                .all(|v| (v - blue).abs() < 1e-5),
            "{t}"
        );
    }

    #[test]
    fn the_resize_interpolates_between_source_pixels() {
        // A 2x2 grey image at side 2: shorter side 2 -> 2, so no crop, and
        // resized 2 -> 2 maps each pixel to itself.
        let image = Image::new(vec![0, 255, 255, 0], 2, 2, 1).unwrap();
        let t = image.to_tensor(2);
        assert!((t[[0, 1, 0, 0]] - (0.0 - MEAN[1]) / STD[1]).abs() < 1e-5);
        // At side 7 the shorter side becomes 8 and the crop starts at
        // round_ties_even(0.5) = 0: the corner (source -0.375, clamped) is
        // black, and pixel (3, 3) reads source (0.375, 0.375).
        let t = image.to_tensor(7);
        assert!((t[[0, 0, 0, 0]] + MEAN[0] / STD[0]).abs() < 1e-5, "{t}");
        let inner = t[[0, 0, 3, 3]] * STD[0] + MEAN[0];
        let want = 0.375 * 0.625 + 0.625 * 0.375;
        assert!((inner - want).abs() < 1e-5, "{inner}");
    }

    #[test]
    fn pixels_that_do_not_fit_the_shape_are_refused() {
        assert!(Image::new(vec![0; 5], 2, 2, 1).is_err());
        assert!(Image::new(vec![0; 20], 2, 2, 5).is_err());
        assert!(Image::new(vec![], 0, 0, 1).is_err());
    }

    /// A PNG whose header declares `w`×`h` RGB pixels, followed by the first
    /// bytes of a zlib stream: enough to read the header, far from the pixels.
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        writer
            .write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x00])
            .unwrap();
        drop(writer);
        out
    }

    #[test]
    fn an_image_over_the_pixel_limit_is_refused_from_its_header() {
        // 60000² RGB would be a 10.8 GB buffer: refused before allocating.
        for (w, h) in [(60_000, 60_000), (1001, 1)] {
            let err = Image::decode_at_most(&png_header(w, h), Format::Png, 1000).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("the PNG is {w}x{h}, over the limit of 1000 pixels")
            );
        }
        // At the limit it is decoded (and fails on its truncated data).
        let err = Image::decode_at_most(&png_header(40, 25), Format::Png, 1000).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err}");
        let err = Image::decode(&png_header(4097, 4096), Format::Png).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    }

    #[cfg(feature = "jpeg")]
    #[test]
    fn a_jpeg_over_the_pixel_limit_is_refused_from_its_header() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/serve/colour.jpg");
        let mut jpeg = std::fs::read(path).unwrap();
        assert!(Image::decode_at_most(&jpeg, Format::Jpeg, 24 * 16).is_ok());
        let err = Image::decode_at_most(&jpeg, Format::Jpeg, 24 * 16 - 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the JPEG is 24x16, over the limit of 383 pixels"
        );
        // The frame header made to declare 65535x65535 (12.9 GB of RGB):
        // zune's own side limit would pass it, the pixel limit does not.
        let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        jpeg[sof + 5..sof + 9].fill(0xff);
        let err = Image::decode(&jpeg, Format::Jpeg).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the JPEG is 65535x65535, over the limit"),
            "{err}"
        );
    }

    #[test]
    fn grey_fills_every_channel_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grey.png");
        write_png(&path, 2, 2, png::ColorType::Grayscale, &[0, 255, 255, 0]);
        let t = load_png(&path, 2).unwrap();
        assert!((t[[0, 0, 0, 1]] - (1.0 - MEAN[0]) / STD[0]).abs() < 1e-5);
        assert!((t[[0, 2, 0, 1]] - (1.0 - MEAN[2]) / STD[2]).abs() < 1e-5);
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let err = load_png(&bad, 2).unwrap_err().to_string();
        assert!(err.contains("bad.png") && err.contains("PNG"), "{err}");
    }
}
