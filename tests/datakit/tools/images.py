"""Crafted images for the photo tests (a test helper, not a test module)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, side: int) -> Path:
    """A valid single-colour greyscale PNG of ``side`` x ``side`` pixels that is a few KB on disk: decoded it
    takes ``3 * side**2`` bytes as RGB (432 MB at 12000). Written row by row, so making it costs no memory."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side)  # filter byte 0, then one grey byte per pixel
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path
