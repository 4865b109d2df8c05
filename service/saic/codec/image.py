"""Untrusted images -> HxWx3 uint8 RGB, the only pixel format the codec takes.

One documented conversion for every input kind, so the same picture compresses the same
whether it arrives as a file, a PIL image or an array (docs/bitstream.md, "Input images"):

- EXIF orientation is applied (`ImageOps.exif_transpose`), for bytes and PIL images.
- Grayscale (1, L, I;16*, I, F; ndarray HxW or HxWx1) is replicated to 3 channels.
- 16-bit samples (uint16 arrays, I;16 images) become 8-bit by rounding x/257:
  `(x + 128) // 257` (0 -> 0, 65535 -> 255).  Mode I (32-bit int) is clipped to
  [0, 65535] first.  16-bit-per-channel colour PNG/TIFF are reduced to their high byte by
  Pillow's decoder (it has no 16-bit RGB mode).
- Floats (arrays, mode F) are taken as [0, 1] and become `floor(255 * x + 0.5)`; values that
  do not round into [0, 255] (e.g. 0-255 data stored as float) or are not finite are rejected.
- Alpha (RGBA, LA, PA, P or L/RGB with a tRNS colour; HxWx4 arrays) is composited over
  white after reduction to 8 bits: `(c * a + 255 * (255 - a) + 127) // 255`.
- Palette -> RGB, CMYK/YCbCr/RGBX -> RGB via Pillow.  Embedded ICC profiles are ignored
  (samples are taken as sRGB).  Multi-frame files (GIF, TIFF, animated WebP): first frame.
- Anything else (other dtypes or shapes, zero-size, unknown modes, non-images) raises
  `InvalidImageError`; more than `max_pixels` raises `ImageTooLargeError`.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError, InvalidParameterError, SaicError

# Formats we parse: the common ones.  Everything else (EPS -> Ghostscript, PSD, ICO, ...) is
# refused before any plugin-specific parsing, which keeps the attack surface small.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "TIFF", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 64 * 2**20  # to_rgb8(bytes) without an explicit limit (below Pillow's bomb warning)

# Our max_pixels check is the authoritative one; Pillow's warning (above ~89 MP, raised inside
# Image.open before we can check) would only let hostile uploads spam the server log.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Responses: lossless unless JPEG is asked for; PNG/WebP effort kept low for latency.
_OUTPUT: dict[str, tuple[str, dict[str, Any]]] = {
    "png": ("PNG", {"compress_level": 1}),
    "webp": ("WEBP", {"lossless": True, "quality": 0, "method": 0}),
    "jpeg": ("JPEG", {"quality": 95, "subsampling": 0}),
    "jpg": ("JPEG", {"quality": 95, "subsampling": 0}),
}

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "PA"}
_VIA_RGB_MODES = {"P", "CMYK", "YCbCr", "RGBX"}
_UINT16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8.  The size declared in the file header is checked
    against `max_pixels` before any pixel is decoded."""
    if not data:
        raise InvalidImageError("empty image data")
    try:
        with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as im:
            _check_size(im.width, im.height, max_pixels)
            im.load()
            return _pil_to_rgb8(im)
    except Image.DecompressionBombError as exc:  # Pillow's own limit, hit inside open()
        raise ImageTooLargeError(f"image too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"not an image in a supported format ({', '.join(INPUT_FORMATS)})") from exc
    except (SaicError, MemoryError):
        raise
    except Exception as exc:  # Pillow raises many types on malformed files (OSError, SyntaxError, struct.error, ...)
        raise InvalidImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from exc


def to_rgb8(image: np.ndarray | Image.Image | bytes, max_pixels: int | None = None) -> np.ndarray:
    """An ndarray, PIL image or encoded bytes -> HxWx3 uint8 (C-contiguous; may share
    memory with a uint8 HxWx3 input).  `max_pixels` None: no limit, except
    `DEFAULT_MAX_PIXELS` for bytes, which are decoded with `decode_image`."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    if isinstance(image, Image.Image):
        _check_size(image.width, image.height, max_pixels)
        try:
            return _pil_to_rgb8(image)
        except (SaicError, MemoryError):
            raise
        except Exception as exc:  # a lazily opened, broken file fails here
            raise InvalidImageError(f"cannot convert image: {type(exc).__name__}: {exc}") from exc
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            _check_size(image.shape[1], image.shape[0], max_pixels)
        return _array_to_rgb8(image)
    raise InvalidImageError(
        f"unsupported image type {type(image).__name__}: pass a numpy array, a PIL image or encoded image bytes"
    )


def encode_image(rgb: np.ndarray, fmt: str = "png") -> bytes:
    """HxWx3 uint8 -> PNG, WebP (both lossless) or JPEG (quality 95, 4:4:4) bytes."""
    try:
        pil_format, options = _OUTPUT[fmt.lower()]
    except (KeyError, AttributeError):
        raise InvalidParameterError(f"unsupported output format {fmt!r}: use png, webp or jpeg") from None
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        raise ValueError("encode_image needs an HxWx3 uint8 array")
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format=pil_format, **options)
    return buf.getvalue()


# ----------------------------------------------------------------------------- internals


def _check_size(width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"zero-size image ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"image size {width}x{height} = {width * height} pixels exceeds the limit {max_pixels}")


def _pil_to_rgb8(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        arr = np.asarray(im.convert("RGBA"))
    elif mode == "RGB":
        arr = np.asarray(im)
    elif mode in ("1", "L"):
        arr = np.asarray(im.convert("L"))
    elif mode in _UINT16_MODES:
        arr = np.asarray(im).astype(np.uint16)  # native byte order
    elif mode == "I":
        arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    elif mode == "F":
        arr = np.asarray(im)
    elif mode in _VIA_RGB_MODES:
        arr = np.asarray(im.convert("RGB"))
    else:
        raise InvalidImageError(f"unsupported image mode {mode!r}")
    return _array_to_rgb8(arr)


def _array_to_rgb8(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidImageError(
            f"expected an HxW, HxWx1, HxWx3 or HxWx4 (channels-last) array, got shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImageError(f"zero-size image (shape {arr.shape})")
    arr = _to_uint8(arr)
    if arr.shape[2] == 4:
        rgb, a = arr[..., :3].astype(np.uint16), arr[..., 3:].astype(np.uint16)
        arr = ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)  # max 65152: fits uint16
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InvalidImageError("float image contains NaN or infinity")
        with np.errstate(over="ignore"):  # huge values become inf and are rejected below
            q = np.floor(arr.astype(np.float32) * 255 + 0.5)
        lo, hi = float(q.min()), float(q.max())
        if lo < 0 or hi > 255:
            raise InvalidImageError(
                f"float image values must lie in [0, 1]; got [{lo / 255:.4g}, {hi / 255:.4g}] "
                "(for 0-255 data pass uint8)"
            )
        return q.astype(np.uint8)
    raise InvalidImageError(f"unsupported array dtype {arr.dtype}: pass uint8, uint16 or float in [0, 1]")
