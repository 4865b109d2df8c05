"""Property-based fuzzing of request parsing over real sockets (the session's loopback server):
HTTP requests with hostile query strings, headers and bodies, raw bytes on the HTTP port, and
arbitrary bytes / arbitrary field values on every gRPC method.

Property: never a 5xx (except the reserved 501 of classify) / never INTERNAL or UNKNOWN, every
HTTP error has the JSON error body, and the server answers normally afterwards.  The
in-process, coverage-guided counterparts are tests/fuzz/fuzz_http.py and fuzz_decode.py.
"""

from __future__ import annotations

import socket

import grpc
import pytest
from conftest import encode, make_photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saic.codec import bitstream as bs
from saic.server.proto import codec_pb2 as pb

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
PNG = encode(make_photo(24, 32, seed=5))
ENDPOINTS = ["/v1/compress", "/v1/decompress", "/v1/score-si", "/v1/classify"]
CTYPES = [
    None, "image/png", "application/octet-stream", "multipart/form-data", "multipart/form-data; boundary=b",
    "multipart/form-data; boundary=" + "x" * 300, "text/plain", "image/png; charset=\xff", "application/x-saic",
]  # fmt: skip
text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n\0"), max_size=40)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
query_values = st.one_of(
    text, st.sampled_from(["-1", "101", "nan", "inf", "-inf", "1e309", "0", "0.0", "50", "1" * 400, "saic-small", "../x"])
)


def _body(draw: st.DrawFn, bitstream: bytes) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=400))
    if kind == 1:
        base = bytearray(draw(st.sampled_from([PNG, bitstream])))
        for _ in range(draw(st.integers(1, 6))):
            base[draw(st.integers(0, len(base) - 1))] = draw(st.integers(0, 255))
        return bytes(base)
    if kind == 2:  # multipart with boundary "b", hostile part headers and names
        parts = []
        for _ in range(draw(st.integers(0, 6))):
            name = draw(st.sampled_from(["image", "file", "bitstream", "original", "decoded", "", '"', "x" * 200]))
            disp = draw(st.sampled_from([f'form-data; name="{name}"', f'form-data; name="{name}"; filename="../../etc/passwd"', "form-data", "", "attachment"]))
            value = draw(st.sampled_from([PNG, bitstream, b"", b"--b", b"\r\n\r\n"]))
            parts.append(f"--b\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n")
        return b"".join(parts) + draw(st.sampled_from([b"--b--\r\n", b"", b"--b", b"--b--garbage"]))
    if kind == 3:
        return b""
    return draw(st.sampled_from([PNG, bitstream]))


@st.composite
def http_requests(draw: st.DrawFn, bitstream: bytes) -> dict:
    params = draw(st.dictionaries(st.sampled_from(["quality", "target_bpp", "model", "format", "top_k", "x"]), query_values, max_size=3))
    headers = {}
    ctype = draw(st.sampled_from(CTYPES))
    if ctype:
        headers["content-type"] = ctype
    for name in draw(st.lists(st.sampled_from(["accept", "x-saic-timeout-ms", "authorization", "x-api-key", "content-encoding", "expect"]), max_size=3, unique=True)):
        headers[name] = draw(st.one_of(header_text, st.sampled_from(["image/*", "text/html", "0", "-5", "nan", "1e-9", "gzip", "100-continue"])))
    return {
        "method": draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"])),
        "url": draw(st.sampled_from(ENDPOINTS)),
        "params": params,
        "headers": {k: v.encode("latin-1") for k, v in headers.items()},
        "content": _body(draw, bitstream),
    }


def _assert_error_body(r) -> None:  # noqa: ANN001 - httpx.Response
    assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.headers, r.content[:200])
    err = r.json()["error"]
    assert {"type", "reason", "message"} <= set(err), err


def test_http_requests_never_5xx(http, bitstream) -> None:
    @FUZZ
    @given(http_requests(bitstream))
    def run(req: dict) -> None:
        r = http.request(**req)
        assert r.status_code < 500 or (req["url"] == "/v1/classify" and r.status_code == 501), (req, r.status_code, r.text[:300])
        if r.status_code >= 400:
            _assert_error_body(r)

    run()
    assert http.get("/readyz").status_code == 200


@FUZZ
@given(junk=st.binary(max_size=300), prefix=st.sampled_from([b"", b"POST /v1/compress HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n"]))
def test_raw_bytes_on_the_http_port(server, junk: bytes, prefix: bytes) -> None:
    """Any bytes: the server answers 4xx or closes; it never hangs the connection past the header
    timeout and keeps serving others."""
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(prefix + junk + b"\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    if reply:
        status = int(reply.split(b" ", 2)[1])
        assert status < 500 or b"/v1/classify" in prefix + junk, reply[:300]


# ---------------------------------------------------------------------------- gRPC
METHODS = {
    "/saic.v1.Codec/Compress": "unary",
    "/saic.v1.Codec/Decompress": "unary",
    "/saic.v1.Codec/ScoreSI": "unary",
    "/saic.v1.Codec/ListModels": "unary",
    "/saic.v1.Codec/CompressUpload": "client_stream",
    "/saic.v1.Codec/Stream": "bidi",
}
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


@FUZZ
@given(method=st.sampled_from(sorted(METHODS)), messages=st.lists(st.binary(max_size=200), min_size=0, max_size=3))
def test_grpc_arbitrary_bytes_never_internal(grpc_channel, method: str, messages: list[bytes]) -> None:
    kind = METHODS[method]
    try:
        if kind == "unary":
            grpc_channel.unary_unary(method)(messages[0] if messages else b"", timeout=30)
        elif kind == "client_stream":
            grpc_channel.stream_unary(method)(iter(messages), timeout=30)
        else:
            for _ in grpc_channel.stream_stream(method)(iter(messages), timeout=30):
                pass
    except grpc.RpcError as exc:
        assert exc.code() not in BAD_CODES, (method, messages, exc.code(), exc.details())


@st.composite
def grpc_compress(draw: st.DrawFn, bitstream: bytes) -> pb.CompressRequest:
    req = pb.CompressRequest(image=_body(draw, bitstream), model=draw(text))
    choice = draw(st.integers(0, 3))
    if choice == 1:
        req.quality = draw(st.integers(-(2**31), 2**31 - 1))
    elif choice == 2:
        req.target_bpp = draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
    elif choice == 3:
        req.quality, req.target_bpp = 50, 1.0
    return req


def test_grpc_field_values_never_internal(stub, bitstream) -> None:
    @FUZZ
    @given(req=grpc_compress(bitstream), fmt=text, stream_body=st.sampled_from([b"", bitstream[:-1], bitstream + b"\0"]))
    def run(req: pb.CompressRequest, fmt: str, stream_body: bytes) -> None:
        for call in (
            lambda: stub.Compress(req, timeout=30),
            lambda: stub.Decompress(pb.DecompressRequest(bitstream=stream_body or req.image, format=fmt, model=req.model), timeout=30),
        ):
            try:
                call()
            except grpc.RpcError as exc:
                assert exc.code() not in BAD_CODES, (req, exc.code(), exc.details())

    run()


def test_forged_bitstreams_over_both_protocols(http, stub, bitstream) -> None:
    """Valid CRC, hostile header values: huge sizes are refused before any allocation."""
    tag = bs.read_header(bitstream).model_tag
    for w, h in [(65536, 65536), (17, 65536), (1025, 1025)]:  # the test server allows 1,048,576 pixels
        forged = bs.pack(tag, w, h, 50, [b"\0" * 8])
        r = http.post("/v1/decompress", content=forged, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 413 and r.json()["error"]["reason"] == "image_too_large", r.text
        with pytest.raises(grpc.RpcError) as exc:
            stub.Decompress(pb.DecompressRequest(bitstream=forged), timeout=30)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
