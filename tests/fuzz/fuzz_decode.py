"""atheris harness: the whole decode path (container, entropy decoding, synthesis) of the shipped
model on well-formed containers with a valid CRC around fuzzer-chosen substreams, size and
quality: what an attacker who recomputes the CRC can send.

Allowed outcomes: an `InvalidInputError` (CorruptError, ...), or an HxWx3 uint8 image of
exactly the size the header announces.  Anything else (another exception, a Rust panic from
the range coder, a hang) is a crash.
Run:  python tests/fuzz/run.py decode -max_total_time=60 -timeout=20
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from saic.codec import bitstream as bs
from saic.codec.errors import InvalidInputError

MODELS = Path(__file__).resolve().parents[2] / "models"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "golden.saic"
MAX_SIDE = 128  # keeps one run cheap; the code paths do not depend on the size
PREFIX = 5  # width (1 byte), height (1 byte), quality, substream count, split point


@functools.lru_cache(maxsize=1)
def model():  # noqa: ANN201 - CodecModel
    from saic.codec.registry import ModelRegistry

    return ModelRegistry(MODELS, providers=["CPUExecutionProvider"], threads=1, max_pixels=MAX_SIDE * MAX_SIDE).get()


def stream_from_bytes(data: bytes) -> bytes:
    """Fuzzer bytes -> a canonical container with a valid CRC and the model's tag."""
    head = data[:PREFIX].ljust(PREFIX, b"\0")
    width, height = 1 + head[0] % MAX_SIDE, 1 + head[1] % MAX_SIDE
    quality, k, downscale = head[2] % 101, 1 + head[3] % 4, 2 if head[3] & 0x80 else 1
    body = data[PREFIX:]
    cuts = sorted({0, len(body)} | {(head[4] * (i + 1) * 131) % (len(body) + 1) for i in range(k - 1)})
    subs = [body[a:b] for a, b in zip(cuts, cuts[1:])] or [b""]
    while len(subs) < k:
        subs.append(b"")
    return bs.pack(model().tag, width, height, quality, subs[:k], downscale)


def prepare() -> None:
    """Build everything once (run.py calls this inside atheris' import instrumentation)."""
    model()


def check(data: bytes) -> None:
    stream = stream_from_bytes(data)
    header = bs.read_header(stream)
    try:
        out = model().decompress_batch([stream])[0]
    except InvalidInputError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (header.height, header.width, 3), (out.shape, header)


def seeds() -> list[bytes]:
    """The golden stream's real substreams at its real size, and at other sizes/qualities."""
    golden = bs.unpack(GOLDEN.read_bytes())
    h = golden.header
    payload = b"".join(golden.substreams)
    out = [bytes([(h.width - 1) % MAX_SIDE, (h.height - 1) % MAX_SIDE, h.quality, 0, 0]) + payload]
    out += [bytes([63, 63, q, 0, 0]) + payload for q in (0, 100)]
    out += [bytes([7, 200, 50, 2, 17]) + payload[:300], bytes(5), b"\xff" * 40]
    half = bs.unpack((GOLDEN.parent / "golden_half.saic").read_bytes())
    out.append(bytes([half.header.width - 1, half.header.height - 1, half.header.quality, 0x80, 0]) + half.substreams[0])
    return out
