"""Writes a 32x32 RGB gradient PNG (the image POSTed to /v1/embed in the VM)."""
import struct
import sys
import zlib

SIZE = 32


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


rows = b"".join(
    b"\0" + bytes(v for x in range(SIZE) for v in (8 * x, 8 * y, 255 - 4 * (x + y)))
    for y in range(SIZE)
)
png = (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(rows))
    + chunk(b"IEND", b"")
)
with open(sys.argv[1], "wb") as f:
    f.write(png)
