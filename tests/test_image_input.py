"""saic.codec.image: every conversion rule on real Pillow-encoded bytes, and hostile input."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from saic.codec.errors import ImageTooLargeError, InvalidImageError, InvalidParameterError
from saic.codec.image import decode_image, encode_image, to_rgb8

LIMIT = 1 << 24
DATA = Path(os.environ.get("SAIC_DATA_DIR", Path(__file__).resolve().parents[1] / "../shared/data"))
RNG = np.random.default_rng(0)


def encoded(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def over_white(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    c, a = c.astype(np.int64), a.astype(np.int64)
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def png_with_ihdr_size(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR is edited to declare another size (CRC fixed up)."""
    png = bytearray(encoded(Image.new("RGB", (8, 8), (10, 20, 30)), "PNG"))
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- file formats


@pytest.mark.parametrize("fmt, options", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {})])
def test_lossless_formats_exact(fmt: str, options: dict) -> None:
    out = decode_image(encoded(Image.fromarray(RGB), fmt, **options), LIMIT)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


def test_png_gray_replicated() -> None:
    gray = RGB[..., 0]
    out = decode_image(encoded(Image.fromarray(gray, "L"), "PNG"), LIMIT)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_png_rgba_and_la_over_white() -> None:
    rgba = RNG.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    out = decode_image(encoded(Image.fromarray(rgba, "RGBA"), "PNG"), LIMIT)
    np.testing.assert_array_equal(out, over_white(rgba[..., :3], rgba[..., 3:]))
    assert (out[0, 0] == 255).all() and (out[0, 1] == rgba[0, 1, :3]).all()

    la = Image.fromarray(rgba[..., :2].copy(), "LA")
    out = decode_image(encoded(la, "PNG"), LIMIT)
    expect = over_white(rgba[..., :1], rgba[..., 1:2])
    np.testing.assert_array_equal(out, np.repeat(expect, 3, axis=2))


def test_png_16bit_gray_rounds() -> None:
    x = np.array([[0, 128, 129, 257, 32767, 65406, 65535]], dtype=np.uint16)
    im = Image.fromarray(x)
    assert im.mode == "I;16"
    out = decode_image(encoded(im, "PNG"), LIMIT)
    assert out[0, :, 0].tolist() == [0, 0, 1, 1, 127, 254, 255]
    assert (out[..., 0] == out[..., 2]).all()


def test_png_16bit_rgb_keeps_high_byte() -> None:
    """Hand-written 48-bit PNG: Pillow's decoder has no 16-bit RGB mode and keeps the high byte."""
    px = np.array([[[0x12FF, 0xAB01, 0xFFFF], [0, 0x0180, 0x7F7F]]], dtype=">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in px)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    assert decode_image(png, LIMIT).tolist() == [[[0x12, 0xAB, 0xFF], [0, 1, 0x7F]]]


def test_palette_with_and_without_transparency() -> None:
    p = Image.fromarray(RGB).quantize(8)
    expect = np.asarray(p.convert("RGB"))
    np.testing.assert_array_equal(decode_image(encoded(p, "PNG"), LIMIT), expect)
    out = decode_image(encoded(p, "PNG", transparency=int(np.asarray(p)[0, 0])), LIMIT)
    assert (out[0, 0] == 255).all()
    index = np.asarray(p)
    opaque = index != index[0, 0]
    np.testing.assert_array_equal(out[opaque], expect[opaque])


def test_gif_first_frame_and_transparency() -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, LIMIT)[0, 0].tolist() == [255, 0, 0]


def test_jpeg_cmyk_to_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    cmyk.paste((0, 255, 255, 0), (0, 0, 8, 16))  # left half: full magenta + yellow = red
    out = decode_image(encoded(cmyk, "JPEG", quality=95), LIMIT).astype(int)
    assert np.abs(out[:, 12:] - 255).max() <= 3  # no ink: white
    assert np.abs(out[:, :4] - [255, 0, 0]).max() <= 8


def test_jpeg_and_avif_lossy() -> None:
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    out = decode_image(encoded(Image.fromarray(smooth), "JPEG", quality=95), LIMIT)
    assert out.shape == (32, 32, 3) and np.abs(out.astype(int) - smooth).mean() < 3
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    out = decode_image(encoded(Image.fromarray(smooth), "AVIF", quality=95), LIMIT)
    assert out.shape == (32, 32, 3) and np.abs(out.astype(int) - smooth).mean() < 6


def test_tiff_float_mode_f() -> None:
    x = np.array([[0.0, 0.5, 1.0, 0.2]], dtype=np.float32)
    im = Image.fromarray(x)
    assert im.mode == "F"
    out = decode_image(encoded(im, "TIFF"), LIMIT)
    assert out[0, :, 1].tolist() == [0, 128, 255, 51]


def test_exif_orientation_applied() -> None:
    im = Image.fromarray(RGB)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encoded(im, "PNG", exif=exif)
    np.testing.assert_array_equal(decode_image(data, LIMIT), np.rot90(RGB, k=-1))
    np.testing.assert_array_equal(to_rgb8(Image.open(io.BytesIO(data))), np.rot90(RGB, k=-1))


# ----------------------------------------------------------------------------- hostile bytes


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n", bytes(1000), encoded(Image.fromarray(RGB), "PPM")],
    ids=["empty", "text", "png-signature-only", "zeros", "ppm-not-accepted"],
)
def test_non_images(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(data, LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_truncated(fmt: str) -> None:
    noisy = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noisy), fmt)
    for cut in (len(data) // 2, len(data) - 64):  # cut into the pixel data
        with pytest.raises(InvalidImageError):
            decode_image(data[:cut], LIMIT)


def test_decompression_bomb_rejected_before_decoding() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLargeError):  # Pillow's own bomb limit, hit inside Image.open
        decode_image(png_with_ihdr_size(50000, 50000), LIMIT)
    with pytest.raises(ImageTooLargeError, match="5000x5000"):  # ours: below Pillow's, above the caller's
        decode_image(png_with_ihdr_size(5000, 5000), max_pixels=1_000_000)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(InvalidImageError):  # within the limit: the truncated pixel data fails to decode
        decode_image(png_with_ihdr_size(500, 500), max_pixels=1_000_000)


def test_zero_size_png() -> None:
    with pytest.raises(InvalidImageError):
        decode_image(png_with_ihdr_size(0, 8), LIMIT)


# ----------------------------------------------------------------------------- arrays and PIL objects


def test_array_shapes_and_dtypes() -> None:
    gray = RGB[..., 1]
    rep = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(to_rgb8(gray), rep)
    np.testing.assert_array_equal(to_rgb8(gray[..., None]), rep)
    np.testing.assert_array_equal(to_rgb8(RGB[:, ::-1]), RGB[:, ::-1])
    assert to_rgb8(RGB[:, ::-1]).flags.c_contiguous
    np.testing.assert_array_equal(to_rgb8(RGB.astype(np.uint16) * 257), RGB)
    np.testing.assert_array_equal(to_rgb8(RGB / 255.0), RGB)
    np.testing.assert_array_equal(to_rgb8((RGB / 255.0).astype(np.float16)), RGB)
    alpha = RNG.integers(0, 256, (5, 7, 1), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([RGB, alpha], axis=2)), over_white(RGB, alpha))
    assert to_rgb8(np.array([[1.0 + 1e-3, -1e-3]]))[0].tolist() == [[255] * 3, [0] * 3]  # rounding slack


@pytest.mark.parametrize(
    "bad, match",
    [
        (RGB.astype(np.float32), r"\[0, 1\]"),  # 0-255 data as float
        (np.full((2, 2), np.nan), "NaN"),
        (RGB.astype(np.int64), "dtype int64"),
        (RGB > 0, "dtype bool"),
        (np.zeros((5, 7, 2), np.uint8), "shape"),
        (np.zeros((3, 5, 7), np.uint8), "channels-last"),
        (np.zeros(5, np.uint8), "shape"),
        (np.zeros((0, 7, 3), np.uint8), "zero-size"),
        ([[1, 2], [3, 4]], "unsupported image type list"),
    ],
)
def test_bad_arrays(bad: object, match: str) -> None:
    with pytest.raises(InvalidImageError, match=match):
        to_rgb8(bad)  # type: ignore[arg-type]


def test_pil_modes() -> None:
    assert to_rgb8(Image.new("1", (2, 2), 1))[0, 0].tolist() == [255] * 3
    assert to_rgb8(Image.new("I", (2, 2), 70000))[0, 0].tolist() == [255] * 3  # clipped to 16 bits
    assert to_rgb8(Image.new("YCbCr", (2, 2), (255, 128, 128)))[0, 0].tolist() == [255] * 3
    with pytest.raises(InvalidImageError, match="mode 'LAB'"):
        to_rgb8(Image.new("LAB", (2, 2)))


def test_limits_and_bytes_input() -> None:
    data = encoded(Image.fromarray(RGB), "PNG")
    np.testing.assert_array_equal(to_rgb8(data), RGB)
    for image in (data, Image.fromarray(RGB), RGB):
        with pytest.raises(ImageTooLargeError):
            to_rgb8(image, max_pixels=34)
        assert to_rgb8(image, max_pixels=35).shape == (5, 7, 3)


# ----------------------------------------------------------------------------- output


@pytest.mark.parametrize("fmt", ["png", "webp", "PNG"])
def test_encode_lossless_round_trip(fmt: str) -> None:
    np.testing.assert_array_equal(decode_image(encode_image(RGB, fmt), LIMIT), RGB)


def test_encode_jpeg_and_errors() -> None:
    smooth = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    data = encode_image(smooth, "jpeg")
    assert data[:2] == b"\xff\xd8"
    assert np.abs(decode_image(data, LIMIT).astype(int) - smooth).max() <= 3
    with pytest.raises(InvalidParameterError):
        encode_image(RGB, "gif")
    with pytest.raises(ValueError):
        encode_image(RGB.astype(np.float32), "png")


# ----------------------------------------------------------------------------- real data


def test_real_kodak_and_grayscale_jpeg() -> None:
    kodim = DATA / "kodak" / "kodim01.png"
    gray = DATA / "tiny10" / "train" / "bird" / "n01855672_75.JPEG"
    if not (kodim.exists() and gray.exists()):
        pytest.skip(f"real data not found under {DATA} (set SAIC_DATA_DIR)")
    out = decode_image(kodim.read_bytes(), LIMIT)
    assert out.shape == (512, 768, 3)
    np.testing.assert_array_equal(out, np.asarray(Image.open(kodim).convert("RGB")))
    out = decode_image(gray.read_bytes(), LIMIT)
    assert out.shape == (64, 64, 3) and (out[..., 0] == out[..., 2]).all()
