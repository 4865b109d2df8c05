"""Security properties on real loopback servers: API key on both protocols, TLS on both
protocols, body/message/pixel limits, and no path traversal through any client-supplied name."""

from __future__ import annotations

import inspect
import io
import socket
import ssl
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

import grpc
import httpx
import pytest
from conftest import encode, make_photo, server_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability_support import tls_material

from saic.server.app import ServerThread
from saic.server.proto import codec_pb2 as pb
from saic.server.proto import codec_pb2_grpc as pb_grpc

KEY = "correct horse battery staple"
PNG = encode(make_photo(32, 48, seed=7))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims a huge size (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------- API key
@pytest.fixture(scope="module")
def keyed(registry: Any) -> Iterator[ServerThread]:
    with ServerThread(server_settings(api_key=KEY), registry) as srv:
        yield srv


@pytest.mark.parametrize(
    "headers, ok",
    [
        ({}, False),
        ({"authorization": "Bearer wrong"}, False),
        ({"x-api-key": KEY[:-1]}, False),
        ({"x-api-key": KEY + "x"}, False),
        ({"authorization": "Bearer " + KEY}, True),
        ({"x-api-key": KEY}, True),
    ],
    ids=["none", "wrong-bearer", "prefix", "longer", "bearer", "x-api-key"],
)
def test_http_api_key(keyed: ServerThread, headers: dict[str, str], ok: bool) -> None:
    r = httpx.post(keyed.http_url + "/v1/compress", content=PNG, headers={"content-type": "image/png", **headers}, timeout=60)
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 401 and r.json()["error"]["reason"] == "unauthenticated", r.text
        assert KEY not in r.text


def test_http_probes_need_no_key(keyed: ServerThread) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(keyed.http_url + path, timeout=30).status_code == 200, path
    assert httpx.get(keyed.http_url + "/v1/models", timeout=30).status_code == 401


def test_grpc_api_key(keyed: ServerThread) -> None:
    with grpc.insecure_channel(keyed.grpc_target) as ch:
        stub = pb_grpc.CodecStub(ch)
        for md in [(), (("x-api-key", "nope"),), (("authorization", "Bearer " + KEY[:5]),)]:
            with pytest.raises(grpc.RpcError) as exc:
                stub.ListModels(pb.ListModelsRequest(), metadata=md, timeout=30)
            assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # streaming methods are guarded too
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Stream(iter([pb.StreamRequest(id="1", compress=pb.CompressRequest(image=PNG))]), timeout=30))
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for md in [(("x-api-key", KEY),), (("authorization", "Bearer " + KEY),)]:
            assert stub.Compress(pb.CompressRequest(image=PNG), metadata=md, timeout=60).width == 48
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_api_key_comparison_is_constant_time() -> None:
    """Both protocols compare with hmac.compare_digest (timing-safe), never ==."""
    from saic.server import grpc_server, http

    for fn in (http.ObservedApp._authorized, grpc_server.ApiKeyInterceptor.intercept_service):
        src = inspect.getsource(fn)
        assert "hmac.compare_digest(" in src and "== self" not in src, fn


# ---------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, dict[str, Path]]]:
    paths = tls_material(tmp_path_factory.mktemp("tls"))
    with ServerThread(server_settings(tls_cert=paths["cert"], tls_key=paths["key"]), registry) as srv:
        yield srv, paths


def test_https_serves_and_plain_http_is_refused(tls: tuple[ServerThread, dict[str, Path]]) -> None:
    srv, paths = tls
    assert srv.http_url.startswith("https://")
    r = httpx.post(srv.http_url + "/v1/compress", content=PNG, headers={"content-type": "image/png"}, verify=ssl.create_default_context(cafile=str(paths["ca"])), timeout=60)
    assert r.status_code == 200 and r.headers["x-saic-width"] == "48"
    with pytest.raises(httpx.ConnectError):  # an unknown CA is refused by the client
        httpx.get(srv.http_url + "/healthz", timeout=30)
    plain = srv.http_url.replace("https://", "http://")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        httpx.get(plain + "/healthz", timeout=30)
    # and the TLS handshake offers nothing older than TLS 1.2
    host, port = srv.http_url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(paths["ca"]))
    with socket.create_connection((host, int(port)), timeout=30) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_grpc_tls(tls: tuple[ServerThread, dict[str, Path]]) -> None:
    srv, paths = tls
    creds = grpc.ssl_channel_credentials(root_certificates=paths["ca"].read_bytes())
    with grpc.secure_channel(srv.grpc_target, creds) as ch:
        assert pb_grpc.CodecStub(ch).Compress(pb.CompressRequest(image=PNG), timeout=60).width == 48
    with grpc.insecure_channel(srv.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.CodecStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------- limits
# The session server: max_body_bytes 1,000,000 and max_image_pixels 1,048,576 (conftest.server_settings).
def test_body_limit_by_length_and_by_chunked_stream(http: httpx.Client) -> None:
    big = b"\0" * 1_000_001
    r = http.post("/v1/compress", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["reason"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"\0" * 100_000

    r = http.post("/v1/compress", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["reason"] == "body_too_large"
    files = {"image": ("x.png", big, "image/png")}
    assert http.post("/v1/compress", files=files).status_code == 413


def test_grpc_message_limits(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Compress(pb.CompressRequest(image=b"\0" * 1_200_000), timeout=60)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as exc:  # many small chunks adding up past the limit
        stub.CompressUpload(iter([pb.UploadChunk(data=b"\0" * 200_000) for _ in range(8)]), timeout=60)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("size", [(1025, 1025), (65535, 65535), (1, 2_000_000)])
def test_pixel_limit_before_decoding(http: httpx.Client, stub: Any, size: tuple[int, int]) -> None:
    bomb = png_header_only(*size)
    assert len(bomb) < 200
    r = http.post("/v1/compress", content=bomb, headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["reason"] == "image_too_large", r.text
    with pytest.raises(grpc.RpcError) as exc:
        stub.Compress(pb.CompressRequest(image=bomb), timeout=60)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------- path traversal
TRAVERSALS = ["../../../../etc/passwd", "..%2f..%2fetc%2fpasswd", "/etc/passwd", "saic-small/../saic-small", "~root", "C:\\\\Windows\\\\win.ini", "\0"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_no_path_traversal_in_model_or_format(http: httpx.Client, stub: Any, bitstream: bytes, name: str) -> None:
    r = http.post("/v1/compress", params={"model": name}, content=PNG, headers={"content-type": "image/png"})
    assert r.status_code in (400, 404) and "root:" not in r.text, r.text
    r = http.post("/v1/decompress", params={"format": name}, content=bitstream, headers={"content-type": "application/octet-stream"})
    assert r.status_code in (400, 406) and "root:" not in r.text, r.text
    r = http.post("/v1/decompress", params={"model": name}, content=bitstream, headers={"content-type": "application/octet-stream"})
    assert r.status_code in (400, 404, 409), r.text
    with pytest.raises(grpc.RpcError) as exc:
        stub.Compress(pb.CompressRequest(image=PNG, model=name), timeout=60)
    assert exc.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize(
    "path",
    ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/../../../etc/passwd", "/static/%2e%2e%2f%2e%2e%2fpyproject.toml", "//etc/passwd", "/index.html/../../models/DEFAULT"],
)
def test_no_path_traversal_in_urls(server: Any, path: str) -> None:
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:  # raw: no client-side normalisation
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status in (400, 404), reply[:300]
    for secret in (b"root:", b"[project]", b"saic-small\n"):
        assert secret not in reply
