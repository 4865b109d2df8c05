"""saic.codec.bitstream: round trips, the golden vector, and a typed error for every malformation."""

from __future__ import annotations

import hashlib
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saic.codec import bitstream as bs
from saic.codec.errors import (
    BadMagicError,
    BitstreamError,
    CorruptError,
    ImageTooLargeError,
    TruncatedError,
    UnsupportedVersionError,
)

# The example of docs/bitstream.md: model tag 3c7e, 64x64, quality 40, one 50-byte substream.
PAYLOAD = (hashlib.sha256(b"saic example 1").digest() + hashlib.sha256(b"saic example 2").digest())[:50]
GOLDEN = bytes.fromhex(
    "a5103c7e3f3f2832fbc5ecec93754d134f50aee162d6f77ecd3879f841baa39183f1"
    "2ce75ba93e3e0f48cd38dec42a3b24a335a8a6ad6077857ff217"
)
DOC = Path(__file__).resolve().parents[1] / "docs" / "bitstream.md"


def multi_stream() -> bytes:
    return bs.pack(0xBEEF, 768, 512, 100, [b"", b"\x01" * 200, b"xyz", bytes(range(256)) * 2])


def with_crc(body: bytes) -> bytes:
    return body + bs.crc16(body).to_bytes(2, "big")


# ----------------------------------------------------------------------------- round trips

substreams = st.lists(st.binary(max_size=300), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    tag=st.integers(0, 0xFFFF),
    width=st.integers(1, bs.MAX_SIDE),
    height=st.integers(1, bs.MAX_SIDE),
    quality=st.integers(0, 100),
    subs=substreams,
    downscale=st.sampled_from(bs.DOWNSCALES),
)
def test_round_trip(tag: int, width: int, height: int, quality: int, subs: list[bytes], downscale: int) -> None:
    data = bs.pack(tag, width, height, quality, subs, downscale)
    out = bs.unpack(data)
    h = out.header
    assert (h.version, h.model_tag, h.width, h.height, h.quality) == (1, tag, width, height, quality)
    assert h.downscale == downscale
    assert h.coded_size == ((height + 1) // 2, (width + 1) // 2) if downscale == 2 else (height, width)
    assert out.substreams == tuple(subs)
    assert h.header_bytes == len(data) - sum(map(len, subs)) - 2
    assert out.overhead_bytes == len(data) - sum(map(len, subs))
    assert bs.read_header(data) == h
    assert bs.read_header(data[: h.header_bytes]) == h  # peeking needs the header only
    assert bs.unpack(data, max_pixels=width * height) == out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 300))
def test_arbitrary_bytes_only_typed_errors_and_canonical(junk: bytes, cut: int) -> None:
    """Random or spliced input either fails with a BitstreamError or is a canonical stream."""
    for data in (junk, GOLDEN[:cut] + junk, bytes([0xA5, 0x10]) + junk):
        try:
            out = bs.unpack(data)
        except BitstreamError:
            continue
        h = out.header
        assert bs.pack(h.model_tag, h.width, h.height, h.quality, out.substreams, h.downscale) == data


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**28, 2**32 - 1])
def test_varint(value: int) -> None:
    enc = bs.encode_varint(value)
    assert len(enc) == max(1, -(-value.bit_length() // 7))
    assert bs._Reader(memoryview(enc)).varint("x") == value


def test_golden_vector_and_doc_example() -> None:
    assert bs.pack(0x3C7E, 64, 64, 40, [PAYLOAD]) == GOLDEN
    out = bs.unpack(GOLDEN)
    assert out.header == bs.Header(1, 0x3C7E, 64, 64, 40, 8)
    assert out.substreams == (PAYLOAD,)
    assert out.overhead_bytes == 10 and len(GOLDEN) == 60
    assert bs.crc16(b"123456789") == 0x29B1  # the CRC-16/CCITT-FALSE check value
    block = re.search(r"```text\n# example 64x64\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/bitstream.md lost its hex example"
    doc_hex = "".join(re.findall(r"^[0-9a-f]{4}: ((?:[0-9a-f]{2} ?)+)", block.group(1), re.M))
    assert bytes.fromhex(doc_hex) == GOLDEN


def test_overhead_64x64_single_substream() -> None:
    data = bs.pack(0x1234, 64, 64, 50, [bytes(50)])
    assert bs.unpack(data).overhead_bytes <= 10
    assert len(data) - 50 == bs.unpack(data).overhead_bytes


# ----------------------------------------------------------------------------- malformed


def test_empty_and_bad_magic() -> None:
    with pytest.raises(TruncatedError):
        bs.unpack(b"")
    with pytest.raises(TruncatedError):
        bs.read_header(b"")
    for data in (b"\x89PNG\r\n\x1a\n", b"\x00", GOLDEN.replace(b"\xa5", b"\xa4", 1)):
        with pytest.raises(BadMagicError):
            bs.unpack(data)


@pytest.mark.parametrize("version", [0, 2, 15])
def test_unknown_version(version: int) -> None:
    data = bytearray(GOLDEN)
    data[1] = version << 4
    with pytest.raises(UnsupportedVersionError, match="version"):
        bs.unpack(with_crc(bytes(data[:-2])))


def test_half_resolution_flag() -> None:
    """Flag bit 1 marks a half-resolution stream: same size fields, one flag bit more."""
    data = bs.pack(0x3C7E, 64, 64, 40, [PAYLOAD], downscale=2)
    assert data[1] == 0x12 and data[2:-2] == GOLDEN[2:-2]
    h = bs.unpack(data).header
    assert (h.width, h.height, h.downscale, h.coded_size) == (64, 64, 2, (32, 32))
    assert bs.Header(1, 0, 7, 5, 0, 8, 2).coded_size == (3, 4)
    with pytest.raises(ValueError, match="downscale"):
        bs.pack(0x3C7E, 64, 64, 40, [PAYLOAD], downscale=4)


@pytest.mark.parametrize("flags", [0x4, 0x8, 0xF, 0x6])
def test_reserved_flags(flags: int) -> None:
    data = bytearray(GOLDEN)
    data[1] = 0x10 | flags
    with pytest.raises(UnsupportedVersionError, match="reserved"):
        bs.unpack(with_crc(bytes(data[:-2])))


@pytest.mark.parametrize("stream", [GOLDEN, multi_stream()], ids=["single", "multi"])
def test_every_prefix_is_truncated(stream: bytes) -> None:
    for n in range(len(stream)):
        with pytest.raises(TruncatedError):
            bs.unpack(stream[:n])
    header_bytes = bs.read_header(stream).header_bytes
    for n in range(header_bytes):
        with pytest.raises(TruncatedError):
            bs.read_header(stream[:n])


def test_truncation_message_names_the_missing_part() -> None:
    with pytest.raises(TruncatedError, match="missing 1 bytes .*CRC"):
        bs.unpack(GOLDEN[:-1])
    with pytest.raises(TruncatedError, match="substream 0"):
        bs.unpack(GOLDEN[:20])
    with pytest.raises(TruncatedError, match="height"):
        bs.unpack(GOLDEN[:5])


@pytest.mark.parametrize("stream", [GOLDEN, multi_stream()], ids=["single", "multi"])
def test_every_single_bit_flip_is_a_bitstream_error(stream: bytes) -> None:
    for i in range(len(stream)):
        for bit in range(8):
            data = bytearray(stream)
            data[i] ^= 1 << bit
            with pytest.raises(BitstreamError):
                bs.unpack(bytes(data))


def test_trailing_bytes_and_crc_mismatch() -> None:
    with pytest.raises(CorruptError, match="trailing"):
        bs.unpack(GOLDEN + b"\x00")
    bad = bytearray(GOLDEN)
    bad[-1] ^= 0xFF
    with pytest.raises(CorruptError, match="CRC"):
        bs.unpack(bytes(bad))


def header(width_m1: bytes, height_m1: bytes, rest: bytes = b"\x28\x00") -> bytes:
    return bytes([0xA5, 0x10, 0, 0]) + width_m1 + height_m1 + rest


@pytest.mark.parametrize(
    "data, error, match",
    [
        (header(b"\x80\x80\x04", b"\x00"), CorruptError, "65536 per side"),  # width 65537
        (header(b"\x00", b"\xff\xff\xff\xff\x10"), CorruptError, "32 bits"),
        (header(b"\x80\x00", b"\x00"), CorruptError, "overlong"),
        (header(b"\xff\xff\xff\xff\xff\x01", b"\x00"), CorruptError, "longer than 5"),
        (bytes([0xA5, 0x10, 0, 0, 0xFF, 0xFF]), TruncatedError, "width"),
        (header(b"\x00", b"\x00", b"\x65\x00"), CorruptError, "quality 101"),
        (bytes([0xA5, 0x11, 0, 0, 0, 0, 50, 0]), CorruptError, "with 1 substreams"),  # multi with K=1
        (bytes([0xA5, 0x11, 0, 0, 0, 0, 50, 0x80, 0x02]), CorruptError, "with 257 substreams"),
        (bytes([0xA5, 0x11, 0, 0, 0, 0, 50, 0x01, 0x05]), TruncatedError, "length of substream 1"),
    ],
)
def test_malformed_headers(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        bs.read_header(data)
    with pytest.raises(error, match=match):
        bs.unpack(data)


def test_absurd_dimensions_rejected_before_allocation() -> None:
    data = header(bs.encode_varint(65535), bs.encode_varint(65535))  # 65536 x 65536, nothing else
    tracemalloc.start()
    t0 = time.perf_counter()
    for fn in (bs.read_header, bs.unpack):
        with pytest.raises(ImageTooLargeError, match="65536x65536"):
            fn(data, max_pixels=int(1e8))
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 64 * 1024
    assert bs.read_header(data + b"\x00", max_pixels=65536**2).width == 65536  # the limit is the caller's


def test_huge_substream_lengths_with_tiny_data() -> None:
    big = bs.encode_varint(2**32 - 1)
    data = bytes([0xA5, 0x11, 0, 0, 0, 0, 50, 0xFF, 0x01]) + big * 256 + b"tiny"
    tracemalloc.start()
    with pytest.raises(TruncatedError, match="substream 0 of 256"):
        bs.unpack(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 256 * 1024


def test_pack_rejects_programmer_errors() -> None:
    ok = dict(model_tag=1, width=64, height=64, quality=50, substreams=[b"x"])
    for key, bad in [
        ("model_tag", 0x10000),
        ("model_tag", -1),
        ("width", 0),
        ("height", 65537),
        ("quality", 101),
        ("substreams", []),
        ("substreams", [b""] * 257),
    ]:
        with pytest.raises(ValueError):
            bs.pack(**{**ok, key: bad})
    for key, bad in [("quality", 50.0), ("substreams", b"abc"), ("substreams", ["abc"])]:
        with pytest.raises(TypeError):
            bs.pack(**{**ok, key: bad})
