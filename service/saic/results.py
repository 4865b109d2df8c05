"""Results of the service's compress/decompress calls, shared by the server's data plane and
the clients (kept free of server and transport imports)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CompressResult:
    bitstream: bytes
    model: str
    width: int
    height: int
    quality: int
    bpp: float


@dataclass(frozen=True)
class DecompressResult:
    image: bytes
    media_type: str
    width: int
    height: int
    model: str

    def to_array(self) -> np.ndarray:
        """The decoded image as HxWx3 uint8."""
        from PIL import Image

        with Image.open(io.BytesIO(self.image)) as im:
            return np.asarray(im.convert("RGB"))
