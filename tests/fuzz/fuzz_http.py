"""atheris harness: HTTP request parsing of the saic app (query strings, headers, raw and
multipart bodies, chunked delivery) driven in-process through ASGI with the shipped model.

The fuzzer's bytes are `ENDPOINT CTYPE QUERY [\\n HEADER: VALUE]* \\0 BODY` (ENDPOINT and CTYPE
one byte each; see `request_from_bytes`); multipart bodies use the fixed boundary `saicfuzz` so the fuzzer can
reach the form parser.  Allowed outcomes: any status below 500 (501 on the reserved
/v1/classify), with a JSON `{"error": {...}}` body for every error status.  A 5xx, a
non-JSON error, an exception escaping the app, or no response at all is a crash.
Run:  python tests/fuzz/run.py http -max_total_time=60 -timeout=20
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

MODELS = Path(__file__).resolve().parents[2] / "models"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "golden.saic"
BOUNDARY = "saicfuzz"
ENDPOINTS = [
    ("POST", "/v1/compress"),
    ("POST", "/v1/decompress"),
    ("POST", "/v1/score-si"),
    ("POST", "/v1/classify"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/"),
    ("PUT", "/v1/compress"),
    ("GET", "/v1/../v1/models"),
]
CONTENT_TYPES = [
    b"",
    b"image/png",
    b"application/octet-stream",
    f"multipart/form-data; boundary={BOUNDARY}".encode(),
    b"multipart/form-data",
    b"image/jpeg",
    b"text/plain",
    b"application/x-saic",
]
MAX_PIXELS = 1 << 16


class Harness:
    """One event loop, one data plane (batching on, tiny limits), one ASGI app, reused per input."""

    def __init__(self) -> None:
        from saic.server.dataplane import DataPlane
        from saic.server.http import create_app
        from saic.server.metrics import Metrics
        from saic.server.settings import Settings
        from saic.codec.registry import ModelRegistry

        settings = Settings(
            model_dir=MODELS, providers="cpu", warmup=False, max_image_pixels=MAX_PIXELS, max_body_bytes=200_000,
            max_batch_size=4, max_queue_delay_ms=0, request_timeout_s=20, api_key=None, tls_cert=None, tls_key=None,
        )  # fmt: skip
        registry = ModelRegistry(MODELS, providers=["CPUExecutionProvider"], threads=1, max_pixels=MAX_PIXELS)
        self.loop = asyncio.new_event_loop()
        metrics = Metrics(process_metrics=False)
        self.dataplane = DataPlane(settings, registry, metrics)
        self.loop.run_until_complete(self.dataplane.start())
        self.app = create_app(self.dataplane, settings, metrics)

    def request(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        return self.loop.run_until_complete(asyncio.wait_for(self._request(method, path, query, headers, body), 60))

    async def _request(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }  # fmt: skip
        half = len(body) // 2
        chunks = [
            {"type": "http.request", "body": body[:half], "more_body": True},
            {"type": "http.request", "body": body[half:], "more_body": False},
        ]
        gone = asyncio.Event()  # the client stays until the response is complete

        async def receive() -> dict[str, Any]:
            if chunks:
                return chunks.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        status: list[int] = []
        resp_headers: dict[bytes, bytes] = {}
        out = bytearray()

        async def send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status.append(msg["status"])
                resp_headers.update((k.lower(), v) for k, v in msg.get("headers", []))
            elif msg["type"] == "http.response.body":
                out.extend(msg.get("body", b""))
                if not msg.get("more_body"):
                    gone.set()

        await self.app(scope, receive, send)
        assert status, "the app returned without a response"
        return status[0], resp_headers, bytes(out)


@functools.lru_cache(maxsize=1)
def harness() -> Harness:
    return Harness()


def request_from_bytes(data: bytes) -> tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes]:
    """Fuzzer bytes -> (method, path, query, headers, body)."""
    sel = data[:2].ljust(2, b"\0")
    method, path = ENDPOINTS[sel[0] % len(ENDPOINTS)]
    ctype = CONTENT_TYPES[sel[1] % len(CONTENT_TYPES)]
    head, _, body = data[2:].partition(b"\0")
    lines = head.split(b"\n")
    query = lines[0][:512]
    headers = [(b"host", b"fuzz"), (b"content-length", str(len(body)).encode())]
    if ctype:
        headers.append((b"content-type", ctype))
    for line in lines[1:16]:
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if sep and name and name not in (b"content-length", b"host"):
            headers.append((name, value.strip()))
    return method, path, query, headers, body


def prepare() -> None:
    """Build everything once (run.py calls this inside atheris' import instrumentation)."""
    harness()


def check(data: bytes) -> None:
    method, path, query, headers, body = request_from_bytes(data)
    status, resp_headers, out = harness().request(method, path, query, headers, body)
    classify = path == "/v1/classify" and status == 501
    assert status < 500 or classify, (status, out[:300])
    ctype = resp_headers.get(b"content-type", b"")
    if status >= 400 and ctype.startswith(b"application/json"):
        err = json.loads(out)["error"]
        assert {"type", "reason", "message"} <= set(err), err
    elif status >= 400:
        raise AssertionError(f"error {status} without a JSON error body: {ctype!r} {out[:200]!r}")


def _png(h: int, w: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _multipart(parts: dict[str, bytes]) -> bytes:
    out = b""
    for name, value in parts.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def seeds() -> list[bytes]:
    """One valid request per endpoint and body kind (indices into ENDPOINTS and CONTENT_TYPES)."""
    png, golden = _png(24, 40), GOLDEN.read_bytes()
    mp = 3  # multipart content type
    return [
        bytes([0, 1]) + b"quality=30\0" + png,
        bytes([0, 1]) + b"target_bpp=0.5\nx-saic-timeout-ms: 5000\0" + png,
        bytes([0, mp]) + b"model=saic-small\0" + _multipart({"image": png}),
        bytes([1, 2]) + b"format=webp\naccept: image/webp\0" + golden,
        bytes([1, mp]) + b"\0" + _multipart({"bitstream": golden}),
        bytes([2, mp]) + b"\0" + _multipart({"original": png, "decoded": png}),
        bytes([2, mp]) + b"\0" + _multipart({"original": _png(96, 160), "bitstream": golden}),
        bytes([3, 2]) + b"top_k=3\0" + golden,
        bytes([4, 0]) + b"\0",
        bytes([6, 0]) + b"\0",
    ]
