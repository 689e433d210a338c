"""Writes runtime/tests/fixtures/serve/colour.jpg: a uniform JPEG of the
colour the serve tests also send as PNG (runtime/tests/serve.rs,
PNG_JPEG_COLOUR), encoded by an independent encoder (Pillow).

    pip install pillow && python3 tools/make_serve_fixtures.py
"""

from pathlib import Path

from PIL import Image

COLOUR = (200, 40, 90)
OUT = Path(__file__).resolve().parent.parent / "runtime/tests/fixtures/serve/colour.jpg"

OUT.parent.mkdir(parents=True, exist_ok=True)
Image.new("RGB", (24, 16), COLOUR).save(OUT, quality=95, subsampling=0)
print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
