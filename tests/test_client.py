"""saic.client (sync + async, HTTP + gRPC, streaming), API key and TLS, and the CLI:
`saic serve` as a real subprocess (port 0, SIGTERM drain) and `saic client ...`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from conftest import MODELS, REPO, encode, make_photo, server_settings

from saic.client import (
    AsyncGrpcClient,
    AsyncHttpClient,
    ClientError,
    CompressItem,
    DecompressItem,
    GrpcClient,
    HttpClient,
)
from saic.server.app import ServerThread


def test_http_client_sync(server, photo, tmp_path: Path) -> None:
    with HttpClient(server.http_url) as c:
        assert c.healthy() and c.ready()
        res = c.compress(photo, quality=60)  # numpy array -> PNG upload
        assert (res.width, res.height, res.quality) == (photo.shape[1], photo.shape[0], 60)
        path = tmp_path / "p.png"
        path.write_bytes(encode(photo))
        assert c.compress(path, quality=60).bitstream == res.bitstream  # same pixels, same bits
        out = c.decompress(res.bitstream)
        assert out.media_type == "image/png" and out.to_array().shape == photo.shape
        score = c.score_si(photo, bitstream=res.bitstream)
        assert score["parts"]["psnr_db"] > 10
        assert c.models()["default"]
        with pytest.raises(ClientError) as e:
            c.decompress(b"\xa5garbage")
        assert e.value.status == 422 and e.value.type and e.value.code == "invalid_bitstream"


def test_http_client_async(server) -> None:
    imgs = [make_photo(24, 40, seed=s) for s in range(6)]

    async def go() -> list[int]:
        async with AsyncHttpClient(server.http_url) as c:
            results = await asyncio.gather(*(c.compress(im, quality=40) for im in imgs))
            back = await c.decompress(results[0].bitstream, format="webp")
            assert back.media_type == "image/webp"
            assert await c.ready()
            return [r.width for r in results]

    assert asyncio.run(go()) == [40] * 6


def test_grpc_client_sync(server, photo) -> None:
    with GrpcClient(server.grpc_target) as g:
        assert g.health() == "SERVING"
        res = g.compress(photo, quality=45)
        up = g.compress_upload(photo, quality=45, chunk_size=777)
        assert up.bitstream == res.bitstream
        assert g.decompress(res.bitstream).to_array().shape == photo.shape
        items = [CompressItem(make_photo(16, 16, seed=i), quality=30, id=f"c{i}") for i in range(3)]
        items += [DecompressItem(res.bitstream, id="d"), CompressItem(b"junk", id="bad")]
        got = {r.id: r for r in g.stream(items)}
        assert set(got) == {"c0", "c1", "c2", "d", "bad"}
        assert got["d"].ok and got["d"].result.width == photo.shape[1]
        assert not got["bad"].ok and got["bad"].error.code == "INVALID_ARGUMENT"
        assert [m.id for m in g.models()]
        with pytest.raises(ClientError) as e:
            g.compress(photo, model="nope")
        assert e.value.code == "NOT_FOUND" and e.value.type == "UnknownModelError"


def test_grpc_client_async(server) -> None:
    async def go() -> list[str]:
        async with AsyncGrpcClient(server.grpc_target) as g:
            assert await g.health() == "SERVING"
            a = await g.compress(make_photo(16, 24), quality=10)

            async def items():  # an async generator of work, as an edge device would produce it
                for i in range(3):
                    yield CompressItem(make_photo(16, 16, seed=i), id=f"c{i}")
                yield DecompressItem(a.bitstream, id="d")

            return sorted([r.id async for r in g.stream(items()) if r.ok])

    assert asyncio.run(go()) == ["c0", "c1", "c2", "d"]


@pytest.fixture(scope="module")
def keyed(registry) -> Iterator[ServerThread]:
    with ServerThread(server_settings(api_key="s3cret", warmup=False), registry) as srv:
        yield srv


def test_api_key(keyed, photo) -> None:
    r = httpx.post(keyed.http_url + "/v1/compress", content=encode(photo))
    assert r.status_code == 401 and r.json()["error"]["type"] == "UnauthenticatedError"
    assert httpx.get(keyed.http_url + "/healthz").status_code == 200  # probes need no key
    assert HttpClient(keyed.http_url, api_key="s3cret").compress(photo).width == photo.shape[1]
    with pytest.raises(ClientError) as e:
        GrpcClient(keyed.grpc_target).compress(photo)
    assert e.value.code == "UNAUTHENTICATED"
    with pytest.raises(ClientError):
        GrpcClient(keyed.grpc_target, api_key="wrong").compress(photo)
    assert GrpcClient(keyed.grpc_target).health() == "SERVING"
    assert GrpcClient(keyed.grpc_target, api_key="s3cret").compress(photo).width == photo.shape[1]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed (makes the test certificate)")
def test_tls(registry, tmp_path: Path, photo) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    with ServerThread(server_settings(tls_cert=cert, tls_key=key, warmup=False), registry) as srv:
        assert srv.http_url.startswith("https://")
        with HttpClient(srv.http_url, verify=ssl.create_default_context(cafile=str(cert))) as c:
            assert c.compress(photo).width == photo.shape[1]
        with GrpcClient(srv.grpc_target, root_certificates=cert.read_bytes()) as g:
            assert g.compress(photo).width == photo.shape[1]
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.http_url.replace("https", "http") + "/healthz")


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def served() -> Iterator[tuple[subprocess.Popen, str, str, list[str]]]:
    """`saic serve` as its own process on free ports, as a user would start it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAIC_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "saic.cli", "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
         "--model-dir", str(MODELS), "--providers", "cpu", "--max-batch-size", "4", "--max-queue-delay-ms", "600"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    lines: list[str] = []
    http_url = grpc_target = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stderr.readline()
        lines.append(line)
        m = re.search(r"serving HTTP on (http://\S+) and gRPC on (\S+)", line)
        if m:
            http_url, grpc_target = m.group(1), m.group(2)
            break
    if not http_url:
        proc.kill()
        pytest.fail("saic serve did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # keep draining the pipe
    yield proc, http_url, grpc_target, lines
    if proc.poll() is None:
        proc.kill()


def test_cli_client_against_served_process(served, tmp_path: Path, capsys) -> None:
    from saic.cli import main

    _, http_url, grpc_target, _ = served
    src = tmp_path / "in.png"
    src.write_bytes(encode(make_photo(40, 64, seed=8)))
    assert main(["client", "--url", http_url, "compress", str(src), "-q", "35"]) == 0
    stream = tmp_path / "in.saic"
    assert stream.read_bytes()[:1] == b"\xa5"
    out = tmp_path / "out.png"
    assert main(["client", "--grpc", grpc_target, "decompress", str(stream), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["client", "--grpc", grpc_target, "compress", str(src), "--upload", "-o", str(tmp_path / "u.saic")]) == 0
    assert (tmp_path / "u.saic").read_bytes() != b""
    capsys.readouterr()
    assert main(["client", "--url", http_url, "score-si", str(src), "--bitstream", str(stream)]) == 0
    assert '"psnr_db"' in capsys.readouterr().out
    assert main(["client", "--url", http_url, "health"]) == 0
    assert main(["client", "--grpc", grpc_target, "models"]) == 0
    assert main(["client", "--url", http_url, "decompress", str(src), "-o", str(tmp_path / "x.png")]) == 1  # PNG is no bitstream
    assert "BadMagicError" in capsys.readouterr().err


def test_serve_drains_on_sigterm(served) -> None:
    """SIGTERM while a request waits in the queue (600 ms batching delay): the drain runs it at
    once and answers it, then the process exits 0."""
    proc, http_url, _, lines = served
    img = encode(make_photo(64, 64, seed=9))
    result: dict[str, int] = {}
    t = threading.Thread(target=lambda: result.update(code=httpx.post(http_url + "/v1/compress", content=img, timeout=60).status_code))
    t.start()
    with httpx.Client() as c:
        t0 = time.monotonic()
        while "saic_queue_depth 1.0" not in c.get(http_url + "/metrics").text:
            assert time.monotonic() - t0 < 20, "request never queued"
    proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert result.get("code") == 200  # accepted before SIGTERM: finished, not dropped
    assert proc.wait(60) == 0
    assert any("draining" in line for line in lines) and any("stopped (drained)" in line for line in lines)
