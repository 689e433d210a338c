//! Turning a PNG (or, with `serve`, a JPEG) into the `pixel_values` a graph expects: RGB, resized to
//! the model's side, normalised with ImageNet's mean and std (as POA's
//! evaluation transforms do).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ndarray::Array4;

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
#[error("not a readable {format}: {message}")]
pub struct DecodeError {
    pub format: Format,
    pub message: String,
}

/// The encodings [`decode`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    /// Needs the `serve` feature (the JPEG decoder comes with it).
    #[cfg(feature = "serve")]
    Jpeg,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Png => "PNG",
            #[cfg(feature = "serve")]
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
    let pixels = png_pixels(BufReader::new(file)).map_err(|e| fail(e.to_string()))?;
    Ok(pixels.resize_normalised(side))
}

/// Decodes an encoded image into a `[1, 3, side, side]` normalised tensor,
/// exactly as [`load_png`] prepares a file.
pub fn decode(bytes: &[u8], format: Format, side: usize) -> Result<Array4<f32>, DecodeError> {
    let pixels = match format {
        Format::Png => png_pixels(std::io::Cursor::new(bytes))?,
        #[cfg(feature = "serve")]
        Format::Jpeg => jpeg_pixels(bytes)?,
    };
    Ok(pixels.resize_normalised(side))
}

/// Decoded 8-bit pixels, interleaved, 1 to 4 channels.
struct Pixels {
    data: Vec<u8>,
    width: usize,
    height: usize,
    channels: usize,
}

fn png_pixels(read: impl std::io::BufRead + std::io::Seek) -> Result<Pixels, DecodeError> {
    let fail = |message: String| DecodeError {
        format: Format::Png,
        message,
    };
    let mut decoder = png::Decoder::new(read);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| fail(e.to_string()))?;
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
    Ok(Pixels {
        data,
        width: info.width as usize,
        height: info.height as usize,
        channels,
    })
}

#[cfg(feature = "serve")]
fn jpeg_pixels(bytes: &[u8]) -> Result<Pixels, DecodeError> {
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    /// Larger sides are refused before their pixels are allocated.
    const MAX_SIDE: usize = 8192;
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(bytes, options);
    let fail = |message: String| DecodeError {
        format: Format::Jpeg,
        message,
    };
    let data = decoder.decode().map_err(|e| fail(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| fail("no image dimensions".into()))?;
    Ok(Pixels {
        data,
        width: usize::from(info.width),
        height: usize::from(info.height),
        channels: 3,
    })
}

impl Pixels {
    /// Bilinear resize to side × side (pixel centres aligned), then
    /// ImageNet normalisation.
    fn resize_normalised(&self, side: usize) -> Array4<f32> {
        let (w, h, channels) = (self.width, self.height, self.channels);
        let pixel = |x: usize, y: usize, c: usize| -> f32 {
            let base = (y * w + x) * channels;
            // Grey (with or without alpha) stands for all three channels.
            let c = if channels < 3 { 0 } else { c };
            f32::from(self.data[base + c]) / 255.0
        };
        let mut out = Array4::<f32>::zeros((1, 3, side, side));
        for y in 0..side {
            let fy = ((y as f32 + 0.5) * h as f32 / side as f32 - 0.5).clamp(0.0, (h - 1) as f32);
            let (y0, ty) = (fy.floor() as usize, fy.fract());
            let y1 = (y0 + 1).min(h - 1);
            for x in 0..side {
                let fx =
                    ((x as f32 + 0.5) * w as f32 / side as f32 - 0.5).clamp(0.0, (w - 1) as f32);
                let (x0, tx) = (fx.floor() as usize, fx.fract());
                let x1 = (x0 + 1).min(w - 1);
                for c in 0..3 {
                    let top = pixel(x0, y0, c) * (1.0 - tx) + pixel(x1, y0, c) * tx;
                    let bottom = pixel(x0, y1, c) * (1.0 - tx) + pixel(x1, y1, c) * tx;
                    let v = top * (1.0 - ty) + bottom * ty;
                    out[[0, c, y, x]] = (v - MEAN[c]) / STD[c];
                }
            }
        }
        out
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
