"""One-call API: `saic.compress(image, quality=...)` / `saic.decompress(data)`."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from . import bitstream
from .errors import InvalidParameterError
from .registry import ModelRegistry

_registry: ModelRegistry | None = None
_lock = threading.Lock()

DEFAULT_QUALITY = 50


def registry() -> ModelRegistry:
    """The process-wide registry over $SAIC_MODEL_DIR (or the repo's models/), loaded once."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = ModelRegistry()
        return _registry


def compress(
    image: Any,
    quality: int | None = None,
    target_bpp: float | None = None,
    model: str | None = None,
    downscale: int = 1,
) -> bytes:
    """Compress an image (HxW[xC] ndarray or PIL image) at a quality in [0, 100] or a bpp cap.

    With target_bpp, returns the highest quality whose whole bitstream fits the cap, at full or
    half resolution (low caps: whichever decodes closer; see CodecModel.compress_to_bpp).
    downscale=2 (with a quality) codes a half-resolution copy: about a quarter of the bits,
    decoded back to full size."""
    from .image import to_rgb8

    if quality is not None and target_bpp is not None:
        raise InvalidParameterError("give quality or target_bpp, not both")
    if target_bpp is not None and downscale != 1:
        raise InvalidParameterError("target_bpp chooses the resolution itself: give downscale with a quality")
    m = registry().get(model)
    rgb = to_rgb8(image)
    if target_bpp is not None:
        return m.compress_to_bpp(rgb, float(target_bpp))
    return m.compress_batch([rgb], [DEFAULT_QUALITY if quality is None else quality], downscales=[downscale])[0]


def decompress(data: bytes, model: str | None = None) -> np.ndarray:
    """Bitstream -> HxWx3 uint8.  The model is found from the bitstream's tag unless given."""
    reg = registry()
    m = reg.get(model) if model else reg.for_tag(bitstream.read_header(data).model_tag)
    return m.decompress_batch([data])[0]
