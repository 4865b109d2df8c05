"""atheris harness: `bitstream.unpack` / `read_header` on arbitrary bytes.

Allowed outcomes: a BitstreamError or ImageTooLargeError, or a stream that re-packs to the
exact input bytes (the format is canonical).  Anything else is a crash.
Run (docs/bitstream.md, "Fuzzing"):  python tests/fuzz/run.py bitstream -max_total_time=60
"""

from __future__ import annotations

from saic.codec.bitstream import pack, read_header, unpack
from saic.codec.errors import BitstreamError, ImageTooLargeError

MAX_PIXELS = 1 << 24


def check(data: bytes) -> None:
    try:
        header = read_header(data, MAX_PIXELS)
    except (BitstreamError, ImageTooLargeError):
        header = None
    try:
        out = unpack(data, MAX_PIXELS)
    except (BitstreamError, ImageTooLargeError):
        return
    h = out.header
    assert header == h, "read_header and unpack disagree"
    assert pack(h.model_tag, h.width, h.height, h.quality, out.substreams, h.downscale) == data, "not canonical"


def seeds() -> list[bytes]:
    return [
        pack(0x3C7E, 64, 64, 40, [bytes(range(50))]),
        pack(0xBEEF, 768, 512, 100, [b"", b"\x01" * 200, b"xyz", bytes(range(256))]),
        pack(0, 65536, 1, 0, [b""] * 256),
        pack(0x1234, 97, 33, 20, [b"\x07" * 40, b"ab"], downscale=2),
    ]

