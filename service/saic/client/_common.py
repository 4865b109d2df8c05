"""Pieces shared by the HTTP and gRPC clients: results, errors, input coercion, closing."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np

from saic.results import CompressResult, DecompressResult  # noqa: F401 - the clients' result types

C = TypeVar("C")
ImageLike = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", np.ndarray, Any]  # Any: PIL.Image.Image
BytesLike = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


class ClientError(Exception):
    """A request the server refused or could not complete.

    `status`: HTTP status (HTTP clients) or None; `code`: gRPC status name (gRPC clients) or
    the server's short reason (HTTP); `type`: the server's error class (e.g. CorruptError)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "", type: str = ""):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type

    def __repr__(self) -> str:
        return f"ClientError(status={self.status}, code={self.code!r}, type={self.type!r}, message={self.message!r})"


@dataclass(frozen=True)
class CompressItem:
    """One compress request in a bidirectional stream."""

    image: ImageLike
    quality: int | None = None
    target_bpp: float | None = None
    model: str | None = None
    id: str = ""


@dataclass(frozen=True)
class DecompressItem:
    """One decompress request in a bidirectional stream."""

    bitstream: BytesLike
    format: str = "png"
    model: str | None = None
    id: str = ""


@dataclass(frozen=True)
class StreamResult:
    """One response of a bidirectional stream: exactly one of `result` and `error` is set."""

    id: str
    result: CompressResult | DecompressResult | None = None
    error: ClientError | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.error is None


def as_bytes(data: BytesLike) -> bytes:
    """Bytes as they are; a str/Path is a file to read."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return Path(data).read_bytes()


def given(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments that are not None (optional request fields)."""
    return {k: v for k, v in kwargs.items() if v is not None}


def bearer(api_key: str | None) -> dict[str, str]:
    """The authorization header for an API key (none without one)."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def score_parts(original: ImageLike, decoded: ImageLike | None, bitstream: BytesLike | None) -> dict[str, tuple[bytes, str]]:
    """The parts of a score-si request, by field name: (bytes, content type), absent ones left out."""
    parts = {"original": image_bytes(original)}
    if decoded is not None:
        parts["decoded"] = image_bytes(decoded)
    if bitstream is not None:
        parts["bitstream"] = (as_bytes(bitstream), "application/octet-stream")
    return parts


def image_bytes(image: ImageLike) -> tuple[bytes, str]:
    """(encoded bytes, content type): files/bytes are sent as they are (sniffed by the server);
    arrays and PIL images are encoded losslessly as PNG."""
    if isinstance(image, (bytes, bytearray, memoryview, str, os.PathLike)):
        data = as_bytes(image)
        return data, sniff_image_type(data)
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "image/png"
    raise TypeError(f"cannot send {type(image).__name__} as an image: pass bytes, a path, a numpy array or a PIL image")


_SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
]


def sniff_image_type(data: bytes) -> str:
    for sig, mt in _SIGNATURES:
        if data.startswith(sig):
            return mt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    return "application/octet-stream"


class Closing:
    """`with client:` calls `close()` on exit."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClosing:
    """`async with client:` awaits `_aclose()` (the client's close or aclose) on exit."""

    async def _aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: C) -> C:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._aclose()
