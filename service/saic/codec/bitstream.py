"""saic bitstream v1: the container around the entropy-coded substreams.

Pure bytes (no numpy, no model): the server peeks at headers to route and to enforce
limits before it loads or allocates anything.  The format is canonical (minimal varints,
the "multi" flag exactly when there are 2+ substreams), so `pack(unpack(b)) == b` for every
accepted `b`.  Byte layout, rationale and examples: docs/bitstream.md.

Every malformed input raises a `BitstreamError` subclass, or `ImageTooLargeError` when the
caller's `max_pixels` is exceeded; never another exception type.
"""

from __future__ import annotations

import binascii
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import BadMagicError, CorruptError, ImageTooLargeError, TruncatedError, UnsupportedVersionError

MAGIC = 0xA5
VERSION = 1
FLAG_MULTI = 0x01  # more than one substream
FLAG_HALF = 0x02  # coded at half resolution (ceil(W/2) x ceil(H/2)); the decoder upsamples to W x H
KNOWN_FLAGS = FLAG_MULTI | FLAG_HALF  # the other 2 flag bits are reserved (must be 0)
DOWNSCALES = (1, 2)
MAX_SIDE = 65536
MAX_QUALITY = 100
MAX_SUBSTREAMS = 256
MAX_VARINT = 2**32 - 1
VARINT_MAX_BYTES = 5
CRC_BYTES = 2


@dataclass(frozen=True)
class Header:
    version: int
    model_tag: int
    width: int
    height: int
    quality: int
    header_bytes: int  # bytes before the first substream (everything but substreams and CRC)
    downscale: int = 1  # 2: the latent codes a half-resolution image (FLAG_HALF)

    @property
    def coded_size(self) -> tuple[int, int]:
        """(height, width) of the image the latent codes: the output size, or half of it rounded up."""
        return coded_size(self.height, self.width, self.downscale)


@dataclass(frozen=True)
class Bitstream:
    header: Header
    substreams: tuple[bytes, ...]

    @property
    def overhead_bytes(self) -> int:
        """Container bytes that carry no entropy-coded data: header + CRC."""
        return self.header.header_bytes + CRC_BYTES


def coded_size(height: int, width: int, downscale: int) -> tuple[int, int]:
    """(height, width) coded for an output of height x width at this downscale (1 or 2)."""
    return -(-height // downscale), -(-width // downscale)


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor)."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, minimal length."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"varint value {value} outside [0, 2**32 - 1]")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def pack(
    model_tag: int, width: int, height: int, quality: int, substreams: Sequence[bytes], downscale: int = 1
) -> bytes:
    """Wrap entropy-coded substreams in a v1 container.  ValueError/TypeError on bad arguments
    (programmer errors: callers validate client input before they get here).  width x height is
    the output size; with downscale=2 the substreams code a half-resolution image."""
    model_tag = _checked("model_tag", model_tag, 0, 0xFFFF)
    width = _checked("width", width, 1, MAX_SIDE)
    height = _checked("height", height, 1, MAX_SIDE)
    quality = _checked("quality", quality, 0, MAX_QUALITY)
    if downscale not in DOWNSCALES:
        raise ValueError(f"downscale={downscale!r} not in {DOWNSCALES}")
    if isinstance(substreams, (bytes, bytearray, memoryview)):
        raise TypeError("substreams must be a sequence of bytes objects, not a single bytes object")
    subs = list(substreams)
    if not 1 <= len(subs) <= MAX_SUBSTREAMS:
        raise ValueError(f"need 1..{MAX_SUBSTREAMS} substreams, got {len(subs)}")
    for i, s in enumerate(subs):
        if not isinstance(s, (bytes, bytearray, memoryview)):
            raise TypeError(f"substream {i} is {type(s).__name__}, expected bytes")
    multi = len(subs) > 1
    flags = (FLAG_MULTI if multi else 0) | (FLAG_HALF if downscale == 2 else 0)
    out = bytearray((MAGIC, VERSION << 4 | flags))
    out += model_tag.to_bytes(2, "big")
    out += encode_varint(width - 1) + encode_varint(height - 1)
    out.append(quality)
    if multi:
        out += encode_varint(len(subs) - 1)
    for s in subs:
        out += encode_varint(len(s))
    for s in subs:
        out += s
    out += crc16(out).to_bytes(CRC_BYTES, "big")
    return bytes(out)


def read_header(data: bytes, max_pixels: int | None = None) -> Header:
    """Parse and validate the header only (no CRC, payload not required): for peeking."""
    return _parse_header(memoryview(data), max_pixels)[0]


def unpack(data: bytes, max_pixels: int | None = None) -> Bitstream:
    """Parse and fully validate a bitstream (header, exact length, CRC)."""
    view = memoryview(data)
    header, lengths = _parse_header(view, max_pixels)
    expected = header.header_bytes + sum(lengths) + CRC_BYTES
    if len(view) < expected:
        raise TruncatedError(
            f"bitstream has {len(view)} bytes, the header announces {expected}: "
            f"missing {expected - len(view)} bytes ({_missing_part(len(view), header.header_bytes, lengths)})"
        )
    if len(view) > expected:
        raise CorruptError(f"{len(view) - expected} trailing bytes after the {expected}-byte bitstream")
    body = view[:-CRC_BYTES]
    stored = int.from_bytes(view[-CRC_BYTES:], "big")
    actual = crc16(body)
    if stored != actual:
        raise CorruptError(f"CRC mismatch: stored {stored:04x}, computed {actual:04x}")
    subs, pos = [], header.header_bytes
    for n in lengths:
        subs.append(bytes(view[pos : pos + n]))
        pos += n
    return Bitstream(header, tuple(subs))


# ----------------------------------------------------------------------------- internals


def _checked(name: str, value: int, lo: int, hi: int) -> int:
    value = operator.index(value)  # TypeError for floats/str; accepts numpy integers
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} outside [{lo}, {hi}]")
    return value


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def byte(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise TruncatedError(f"bitstream ends after {self.pos} bytes, inside the {what}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self, what: str) -> int:
        value = 0
        for i in range(VARINT_MAX_BYTES):
            b = self.byte(what)
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if i and not b:
                    raise CorruptError(f"overlong (non-minimal) varint in the {what}")
                if value > MAX_VARINT:
                    raise CorruptError(f"varint over 32 bits in the {what}")
                return value
        raise CorruptError(f"varint longer than {VARINT_MAX_BYTES} bytes in the {what}")


def _parse_header(data: memoryview, max_pixels: int | None) -> tuple[Header, tuple[int, ...]]:
    r = _Reader(data)
    magic = r.byte("magic byte")
    if magic != MAGIC:
        raise BadMagicError(f"not a saic bitstream (first byte {magic:02x}, expected {MAGIC:02x})")
    vf = r.byte("version/flags byte")
    version, flags = vf >> 4, vf & 0x0F
    if version != VERSION:
        raise UnsupportedVersionError(f"bitstream format version {version}; this build reads version {VERSION}")
    if flags & ~KNOWN_FLAGS:
        raise UnsupportedVersionError(f"reserved flag bits set ({flags:#x}): written by a newer saic")
    model_tag = r.byte("model tag") << 8
    model_tag |= r.byte("model tag")
    width = r.varint("width") + 1
    height = r.varint("height") + 1
    if width > MAX_SIDE or height > MAX_SIDE:
        raise CorruptError(f"image size {width}x{height} exceeds the format's {MAX_SIDE} per side")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"image size {width}x{height} = {width * height} pixels exceeds the limit {max_pixels}")
    quality = r.byte("quality byte")
    if quality > MAX_QUALITY:
        raise CorruptError(f"quality {quality} > {MAX_QUALITY}")
    k = 1
    if flags & FLAG_MULTI:
        k = r.varint("substream count") + 1
        if not 2 <= k <= MAX_SUBSTREAMS:
            raise CorruptError(f"multi-substream flag with {k} substreams (must be 2..{MAX_SUBSTREAMS})")
    lengths = tuple(r.varint(f"length of substream {i}") for i in range(k))
    downscale = 2 if flags & FLAG_HALF else 1
    return Header(version, model_tag, width, height, quality, r.pos, downscale), lengths


def _missing_part(size: int, start: int, lengths: tuple[int, ...]) -> str:
    """Name the section in which a too-short stream ends."""
    for i, n in enumerate(lengths):
        start += n
        if size < start:
            return f"stream ends inside substream {i} of {len(lengths)}"
    return "stream ends inside the CRC"
