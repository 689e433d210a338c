//! Issue 20: images posted to `runtime serve` that the fuzzer (`fuzz/`, target
//! `image`) found to panic the decoder.

use tailor_runtime::image::{decode, Format, Image, MAX_PIXELS};

const GREY_PROGRESSIVE: &[u8] = include_bytes!("fixtures/hostile/grey-progressive.jpg");

#[test]
fn progressive_grey_jpeg_is_decoded_as_grey_not_indexed_past_its_pixels() {
    // PIL's progressive greyscale 9x7 JPEG: zune-jpeg returns one channel for
    // it, which was taken as RGB and indexed past the end.
    let image = Image::decode(GREY_PROGRESSIVE, Format::Jpeg).unwrap();
    assert_eq!(image.size(), (9, 7));
    let tensor = decode(GREY_PROGRESSIVE, Format::Jpeg, MAX_PIXELS, 4).unwrap();
    // Grey stands for all three channels: after normalisation each channel
    // is the same grey level, (v - mean) / std.
    let grey = (tensor[[0, 0, 0, 0]] * 0.229 + 0.485) * 255.0;
    assert!((grey - 100.0).abs() < 3.0, "grey level {grey}");
    let green = (tensor[[0, 1, 0, 0]] * 0.224 + 0.456) * 255.0;
    assert!((green - grey).abs() < 0.01, "green {green}, red {grey}");
}

#[test]
fn png_claiming_huge_dimensions_is_refused_before_allocating() {
    // 57 bytes whose header claims 5x536870915 RGB: 8 GB of pixels.
    let tall = include_bytes!("fixtures/hostile/tall.png");
    // Refused from the header by the pixel limit (`serve`'s `max_pixels`).
    let err = decode(tall, Format::Png, MAX_PIXELS, 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("5x536870915") && err.contains("over the limit"),
        "{err}"
    );
}

#[test]
fn jpeg_scanning_with_a_huffman_table_it_never_defined_does_not_panic() {
    // 618 bytes (fuzz target `image`): a baseline JPEG whose scan names a
    // Huffman table no DHT defined. zune-jpeg 0.4 unwrapped the missing
    // table (mcu.rs:384), a panic in release builds too, which the device
    // profile's `panic = "abort"` turns into a dead `serve`. 0.5.15 checks
    // it: the bug is the panic, so either answer below is right.
    let jpeg = include_bytes!("fixtures/hostile/missing-huffman-table.jpg");
    match decode(jpeg, Format::Jpeg, MAX_PIXELS, 4) {
        Ok(tensor) => assert_eq!(tensor.shape(), [1, 3, 4, 4]),
        Err(e) => assert!(e.to_string().contains("JPEG"), "{e}"),
    }
}
