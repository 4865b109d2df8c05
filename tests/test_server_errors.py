"""Every bad input gets a clear 4xx / gRPC status over both protocols, and the server keeps
serving afterwards."""

from __future__ import annotations

import struct
import zlib

import grpc
import pytest
from conftest import encode, make_photo, metric_value

from saic.codec import bitstream as bs
from saic.server.proto import codec_pb2 as pb

INV = grpc.StatusCode.INVALID_ARGUMENT


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR (with a correct CRC) claims width x height."""
    data = bytearray(encode(make_photo(1, 1)))
    ihdr = 8  # after the signature: length(4) 'IHDR'(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


@pytest.fixture(scope="module")
def cases(photo_png: bytes, bitstream: bytes, registry) -> dict[str, tuple[str, bytes, dict, int, grpc.StatusCode, str]]:
    """name -> (op, body, params, HTTP status, gRPC code, error type)."""
    tag = registry.get().tag
    flipped = bytearray(bitstream)
    flipped[len(flipped) // 2] ^= 0x55
    other_tag = (tag + 1) % 65536
    foreign = bs.pack(other_tag, 32, 32, 50, [b"\x00" * 8])
    return {
        "non_image": ("compress", b"hello, I am text", {}, 422, INV, "InvalidImageError"),
        "truncated_image": ("compress", photo_png[: len(photo_png) // 2], {}, 422, INV, "InvalidImageError"),
        "huge_image_dimensions": ("compress", png_claiming(40000, 40000), {}, 413, INV, "ImageTooLargeError"),
        "empty_image": ("compress", b"", {}, 400, INV, "EmptyBodyError"),
        "wrong_model": ("compress", photo_png, {"model": "no-such-model"}, 404, grpc.StatusCode.NOT_FOUND, "UnknownModelError"),
        "quality_out_of_range": ("compress", photo_png, {"quality": 101}, 400, INV, "InvalidParameterError"),
        "quality_and_bpp": ("compress", photo_png, {"quality": 5, "target_bpp": 1.0}, 400, INV, "InvalidParameterError"),
        "negative_bpp": ("compress", photo_png, {"target_bpp": -1.0}, 400, INV, "InvalidParameterError"),
        "corrupt_bitstream": ("decompress", bytes(flipped), {}, 422, INV, "CorruptError"),
        "truncated_bitstream": ("decompress", bitstream[:-7], {}, 422, INV, "TruncatedError"),
        "not_a_bitstream": ("decompress", b"\x00" * 64, {}, 422, INV, "BadMagicError"),
        "empty_bitstream": ("decompress", b"", {}, 400, INV, "EmptyBodyError"),
        "huge_bitstream_dimensions": (
            "decompress", bs.pack(tag, 60000, 60000, 50, [b"\x00" * 8]), {}, 413, INV, "ImageTooLargeError"),
        "bitstream_of_unloaded_model": (
            "decompress", foreign, {}, 409, grpc.StatusCode.FAILED_PRECONDITION, "ModelMismatchError"),
        "decompress_wrong_model": (
            "decompress", bitstream, {"model": "no-such-model"}, 404, grpc.StatusCode.NOT_FOUND, "UnknownModelError"),
        "decompress_bad_format": ("decompress", bitstream, {"format": "gif"}, 406, INV, "NotAcceptableError"),
    }


NAMES = [
    "non_image", "truncated_image", "huge_image_dimensions", "empty_image", "wrong_model", "quality_out_of_range",
    "quality_and_bpp", "negative_bpp", "corrupt_bitstream", "truncated_bitstream", "not_a_bitstream",
    "empty_bitstream", "huge_bitstream_dimensions", "bitstream_of_unloaded_model", "decompress_wrong_model",
    "decompress_bad_format",
]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_http(http, cases, name: str) -> None:
    op, body, params, status, _, etype = cases[name]
    ctype = "image/png" if op == "compress" else "application/octet-stream"
    r = http.post(f"/v1/{op}", content=body, params=params, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == etype and err["message"] and err["reason"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_grpc(stub, cases, name: str) -> None:
    op, body, params, _, code, etype = cases[name]
    with pytest.raises(grpc.RpcError) as e:
        if op == "compress":
            stub.Compress(pb.CompressRequest(image=body, **params), timeout=30)
        else:
            stub.Decompress(pb.DecompressRequest(bitstream=body, **params), timeout=30)
    assert e.value.code() == code, e.value.details()
    assert dict(e.value.trailing_metadata())["saic-error-type"] == etype
    assert e.value.details()


def test_http_only_cases(http, server, photo_png) -> None:
    r = http.post("/v1/compress", content=b"plain words", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = http.post("/v1/compress?quality=abc", content=photo_png, headers={"content-type": "image/png"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidParameterError"
    too_big = b"\0" * (server.server.settings.max_body_bytes + 1)
    r = http.post("/v1/compress", content=too_big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["reason"] == "body_too_large"

    def chunked():  # no Content-Length: the limit is enforced while streaming
        for _ in range(server.server.settings.max_body_bytes // 65536 + 2):
            yield b"\0" * 65536

    r = http.post("/v1/compress", content=chunked(), headers={"content-type": "image/png"})
    assert r.status_code == 413
    r = http.post("/v1/score-si", files={"original": photo_png, "decoded": encode(make_photo(10, 10))})
    assert r.status_code == 400 and "reconstruction" in r.json()["error"]["message"]
    r = http.post("/v1/score-si", files={"original": photo_png})
    assert r.status_code == 400
    r = http.post("/v1/score-si", content=photo_png, headers={"content-type": "image/png"})
    assert r.status_code == 415


def test_oversized_grpc_message(stub, server) -> None:
    too_big = b"\0" * (server.server.settings.max_body_bytes + 128 * 1024)
    with pytest.raises(grpc.RpcError) as e:
        stub.Compress(pb.CompressRequest(image=too_big), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_still_serving_after_bad_inputs(http, stub, photo_png) -> None:
    r = http.post("/v1/compress", content=photo_png, headers={"content-type": "image/png"})
    assert r.status_code == 200
    d = stub.Decompress(pb.DecompressRequest(bitstream=r.content), timeout=60)
    assert d.width == int(r.headers["x-saic-width"])
    text = http.get("/metrics").text
    assert metric_value(text, "saic_requests_total", endpoint="decompress", protocol="http", code="422") >= 3
    assert metric_value(text, "saic_requests_total", endpoint="compress", protocol="grpc", code="INVALID_ARGUMENT") >= 3
    assert metric_value(text, "saic_inflight_requests", protocol="grpc") == 0
