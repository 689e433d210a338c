"""Writes runtime/tests/fixtures/preprocess/: small photographs from
scikit-image's `data` module as PNG, and for each the `pixel_values` an
independent implementation (Pillow) makes of it, as the runtime documents its
preprocessing (runtime/src/image.rs, docs/runtime.md "Serving"):

    the shorter side resized to round(S*256/224) with bilinear interpolation
    (pixel centres aligned, no antialiasing), the longer side to
    int(short * long / short) as torchvision's Resize; the centre S x S
    cropped at int(round((size - S) / 2)) as torchvision's CenterCrop
    (Python's round: half to even); grey repeated to three channels;
    (x / 255 - mean) / std with ImageNet's mean and std.

    pip install scikit-image pillow && python3 tools/preprocess_reference.py

Every resize here runs in Pillow's float mode ("F"), one channel at a time,
so no 8-bit rounding enters the reference. Pillow's `resize` is torchvision's
on PIL images; it antialiases when it shrinks (its bilinear filter widens
with the scale) and is the plain bilinear sample when it enlarges. So:

- coffee, astronaut, camera are small enough that the resize enlarges them:
  Pillow's `resize` is the documented method there (the script checks it
  equals the plain bilinear sample below to 1e-4 of a grey level);
- chelsea is shrunk 2.7x: `chelsea.f32` is the plain bilinear sample, from
  Pillow's affine `transform` (which samples without widening its filter),
  and `chelsea.antialiased.f32` is Pillow's `resize`, i.e. what
  torchvision's eval transforms give; the script prints how far apart the
  two are (the runtime does not antialias; docs/runtime.md says so).

Outputs: `<name>.png` (the input, 8-bit, < 10 kB) and `<name>.f32`, the
expected tensor as little-endian float32 [3, S, S], S = 32 (the tiny
bundle's input). Byte-for-byte reproducible for a given Pillow.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

SIDE = 32
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
OUT = Path(__file__).resolve().parent.parent / "runtime/tests/fixtures/preprocess"


def photo(array, box, size):
    """A region (left, top, right, bottom) of a scikit-image photograph,
    shrunk with Lanczos to `size` (w, h): only the input, not the reference."""
    return Image.fromarray(array).crop(box).resize(size, Image.Resampling.LANCZOS)


# name -> (input image, whether the runtime's resize enlarges it)
PHOTOS = {
    # wide RGB: resized 55x37, crop at (12, 2): both offsets x.5, rounded to even
    "coffee": photo(data.coffee(), (0, 0, 600, 400), (36, 24)),
    # tall RGB: resized 37x52, crop at (2, 10)
    "astronaut": photo(data.astronaut(), (120, 0, 400, 400), (24, 34)),
    # wide grey: resized 47x37, crop at (8, 2): 7.5 rounds up, 2.5 down
    "camera": photo(data.camera(), (0, 56, 512, 456), (36, 28)),
    # wide RGB shrunk 2.7x: resized 55x37, crop at (12, 2)
    "chelsea": photo(data.chelsea(), (0, 0, 451, 300), (150, 100)),
}


def resized_size(w, h):
    """torchvision's Resize(short) size: the shorter side `short`, the
    longer one truncated to keep the aspect."""
    short = round(SIDE * 256 / 224)
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def centre_box(rw, rh):
    """torchvision's CenterCrop box in the resized image."""
    left = int(round((rw - SIDE) / 2.0))
    top = int(round((rh - SIDE) / 2.0))
    return left, top, left + SIDE, top + SIDE


def channels(image):
    """The image as float ("F") planes, grey repeated to three."""
    planes = [Image.fromarray(np.asarray(p, dtype=np.float32), "F") for p in image.split()]
    return planes * 3 if len(planes) == 1 else planes


def normalise(planes):
    """[3, S, S] float32: (x / 255 - mean) / std, computed in float64."""
    x = np.stack([np.asarray(p, dtype=np.float64) for p in planes]) / 255.0
    return ((x - MEAN[:, None, None]) / STD[:, None, None]).astype("<f4")


def pil_resize(image):
    """Pillow's resize (torchvision's on PIL images), then the centre crop."""
    size = resized_size(*image.size)
    box = centre_box(*size)
    return normalise([p.resize(size, Image.Resampling.BILINEAR).crop(box) for p in channels(image)])


def bilinear(image):
    """The plain bilinear sample of the same resize and crop: output pixel
    (x, y) reads input position ((x + left + 0.5) * w / rw, ...) in Pillow's
    pixel-centre convention, neighbours clamped at the border, no
    antialiasing (Pillow's affine transform with BILINEAR)."""
    w, h = image.size
    rw, rh = resized_size(w, h)
    left, top, _, _ = centre_box(rw, rh)
    sx, sy = w / rw, h / rh
    coefficients = (sx, 0.0, left * sx, 0.0, sy, top * sy)
    return normalise(
        [
            p.transform((SIDE, SIDE), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
            for p in channels(image)
        ]
    )


def grey_levels(a, b):
    """The largest difference of two normalised tensors in 8-bit grey levels."""
    return float((np.abs(a.astype(np.float64) - b) * STD[:, None, None] * 255).max())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, image in PHOTOS.items():
        w, h = image.size
        rw, rh = resized_size(w, h)
        enlarged = rw >= w and rh >= h
        plain = bilinear(image)
        resized = pil_resize(image)
        gap = grey_levels(plain, resized)
        if enlarged:
            # Enlarging, Pillow's resize is the plain bilinear sample.
            assert gap < 1e-4, f"{name}: resize and bilinear differ by {gap} grey levels"
        else:
            assert gap > 1, f"{name}: shrunk {w / rw:.1f}x, yet resize does not antialias?"
            resized.tofile(OUT / f"{name}.antialiased.f32")
            diff = np.abs(plain.astype(np.float64) - resized)
            print(
                f"{name}: antialiased vs plain bilinear: max |diff| {diff.max():.4f}, "
                f"mean {diff.mean():.4f} (normalised units; max {gap:.1f} grey levels)"
            )
        image.save(OUT / f"{name}.png", optimize=True)
        plain.tofile(OUT / f"{name}.f32")
        print(f"{name}: {image.mode} {w}x{h} -> {rw}x{rh} -> crop {centre_box(rw, rh)}")
    for f in sorted(OUT.iterdir()):
        print(f"  {f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
