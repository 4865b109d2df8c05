"""atheris harness: `image.decode_image` on arbitrary bytes.

Allowed outcomes: InvalidImageError, ImageTooLargeError, or a C-contiguous HxWx3 uint8
array within the pixel limit.  Anything else (another exception type, a hang) is a crash.
Run (docs/bitstream.md, "Fuzzing"):  python tests/fuzz/run.py image -max_total_time=60 -timeout=10
"""

from __future__ import annotations

import io
import numpy as np
from PIL import Image

from saic.codec.errors import ImageTooLargeError, InvalidImageError
from saic.codec.image import decode_image

MAX_PIXELS = 1 << 16  # small: keeps each run fast, the code paths are the same


def check(data: bytes) -> None:
    try:
        rgb = decode_image(data, MAX_PIXELS)
    except (InvalidImageError, ImageTooLargeError):
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    assert 0 < rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS


def seeds() -> list[bytes]:
    """One small real file per accepted format and per interesting mode."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    out = []
    for im, fmt, opts in [
        (rgb, "PNG", {}),
        (rgb.convert("RGBA"), "PNG", {}),
        (rgb.convert("P"), "PNG", {"transparency": 0}),
        (Image.fromarray(np.arange(120, dtype=np.uint16).reshape(12, 10) * 500), "PNG", {}),
        (rgb, "JPEG", {}),
        (rgb.convert("CMYK"), "JPEG", {}),
        (rgb, "WEBP", {}),
        (rgb, "AVIF", {}),
        (rgb, "TIFF", {"compression": "tiff_lzw"}),
        (Image.fromarray(np.linspace(0, 1, 120, dtype=np.float32).reshape(12, 10)), "TIFF", {}),
        (rgb, "BMP", {}),
        (rgb.convert("P"), "GIF", {}),
    ]:
        buf = io.BytesIO()
        try:
            im.save(buf, format=fmt, **opts)
        except (KeyError, OSError):  # a Pillow without that codec
            continue
        out.append(buf.getvalue())
    return out

