"""Classical codecs through Pillow, as rate–distortion anchors.

Each `Baseline` has ``encode(rgb, quality) -> bytes`` (a complete file: the rate we report
counts every byte, container and headers included), ``decode(bytes) -> rgb`` and
``payload_bytes(bytes)``, the entropy-coded payload alone where the container lets us
isolate it (JPEG scan data, the WebP ``VP8 ``/``VP8L`` chunk, the AVIF ``mdat`` box), for
comparison with our own payload-only rate on tiny images.

Settings (the usual "good effort" settings for anchors, see docs/evaluation.md):
* ``jpeg420`` / ``jpeg444``: libjpeg(-turbo), ``optimize=True`` (optimal Huffman tables),
  chroma subsampling 4:2:0 / 4:4:4, baseline (not progressive).
* ``webp``: libwebp lossy, ``method=6`` (slowest, best).
* ``avif``: libavif + aom through Pillow's AVIF plugin, default speed 6, 4:2:0 YUV, full range;
  ``max_threads`` is fixed (1 by default) so results and CPU use do not depend on the machine.

The quality grids span roughly 0.1–1.5 bpp on Kodak.  None of these codecs reaches
0.05 bpp on Kodak through its quality setting alone (lowest: AVIF q=0 ≈ 0.07, JPEG 4:2:0
q=2 ≈ 0.1, WebP q=0 ≈ 0.1 bpp).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image


def _to_pil(rgb: np.ndarray) -> Image.Image:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8, got {arr.dtype} {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def decode_pillow(data: bytes) -> np.ndarray:
    """Decode any Pillow-readable file to HxWx3 uint8 RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _jpeg_encoder(subsampling: int) -> Callable[[np.ndarray, int], bytes]:
    def encode(rgb: np.ndarray, quality: int) -> bytes:
        buf = io.BytesIO()
        _to_pil(rgb).save(buf, "JPEG", quality=int(quality), subsampling=subsampling, optimize=True)
        return buf.getvalue()

    return encode


def encode_webp(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    _to_pil(rgb).save(buf, "WEBP", quality=int(quality), method=6)
    return buf.getvalue()


def avif_encoder(speed: int = 6, max_threads: int = 1) -> Callable[[np.ndarray, int], bytes]:
    """AVIF encoder with a fixed speed and thread count (the benchmark varies threads)."""

    def encode(rgb: np.ndarray, quality: int) -> bytes:
        buf = io.BytesIO()
        _to_pil(rgb).save(buf, "AVIF", quality=int(quality), speed=speed, max_threads=max_threads)
        return buf.getvalue()

    return encode


# ---- payload parsers -------------------------------------------------------------------


def jpeg_payload_bytes(data: bytes) -> int | None:
    """Bytes of entropy-coded scan data (after each SOS header, up to the next marker)."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, total = 2, 0
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        seg_end = pos + 2 + length
        if marker != 0xDA:  # not SOS: skip the segment
            pos = seg_end
            continue
        # scan data runs until a marker that is neither stuffing (FF00) nor a restart (FFD0-7)
        i = seg_end
        while i + 1 < n:
            if data[i] == 0xFF and data[i + 1] != 0x00 and not 0xD0 <= data[i + 1] <= 0xD7:
                break
            i += 1
        total += i - seg_end
        pos = i
    return total


def webp_payload_bytes(data: bytes) -> int | None:
    """Size of the ``VP8 `` / ``VP8L`` chunk data (the coded bitstream without RIFF framing)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    pos, total, found = 12, 0, False
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if fourcc in (b"VP8 ", b"VP8L"):
            total += size
            found = True
        pos += 8 + size + (size & 1)
    return total if found else None


def avif_payload_bytes(data: bytes) -> int | None:
    """Size of the top-level ``mdat`` box contents (the AV1 OBUs) of an AVIF file."""
    pos, total, found = 0, 0, False
    n = len(data)
    while pos + 8 <= n:
        size, box = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            header = 16
        elif size == 0:
            size = n - pos
        if size < header:
            return None
        if box == b"mdat":
            total += size - header
            found = True
        pos += size
    return total if found else None


# ---- the registry --------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A classical codec: name, display label, quality grid and byte-level functions."""

    name: str
    label: str
    qualities: tuple[int, ...]
    encode: Callable[[np.ndarray, int], bytes]
    decode: Callable[[bytes], np.ndarray] = field(default=decode_pillow)
    payload_bytes: Callable[[bytes], int | None] = field(default=lambda data: None)
    settings: str = ""


# Grids chosen on Kodak to cover ≈0.05–1.5 bpp with ~8 points (docs/evaluation.md).
BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline(
            "jpeg420", "JPEG 4:2:0", (2, 5, 10, 20, 35, 50, 65, 78),
            _jpeg_encoder(2), payload_bytes=jpeg_payload_bytes,
            settings="Pillow/libjpeg, subsampling=4:2:0, optimize=True",
        ),
        Baseline(
            "jpeg444", "JPEG 4:4:4", (2, 5, 10, 20, 35, 50, 65, 75),
            _jpeg_encoder(0), payload_bytes=jpeg_payload_bytes,
            settings="Pillow/libjpeg, subsampling=4:4:4, optimize=True",
        ),
        Baseline(
            "webp", "WebP", (0, 5, 15, 30, 50, 65, 78, 85),
            encode_webp, payload_bytes=webp_payload_bytes,
            settings="Pillow/libwebp lossy, method=6",
        ),
        Baseline(
            "avif", "AVIF", (0, 10, 20, 30, 40, 50, 60, 70),
            avif_encoder(), payload_bytes=avif_payload_bytes,
            settings="Pillow/libavif+aom, speed=6 (default), 4:2:0, max_threads=1",
        ),
    )
}


def get_baseline(name: str) -> Baseline:
    """Look a baseline up by name (``jpeg420``, ``jpeg444``, ``webp``, ``avif``)."""
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None
