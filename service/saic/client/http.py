"""HTTP clients (sync and async, httpx) for the saic service's /v1 API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from ._common import BytesLike, ClientError, CompressResult, DecompressResult, ImageLike, as_bytes, image_bytes


@dataclass
class _Req:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] | None = None

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"params": {k: v for k, v in self.params.items() if v is not None}, "headers": self.headers}
        if self.files is not None:
            kw["files"] = self.files
        elif self.content is not None:
            kw["content"] = self.content
        return kw


def _compress_req(image: ImageLike, quality: int | None, target_bpp: float | None, model: str | None, timeout_ms: float | None) -> _Req:
    data, ctype = image_bytes(image)
    headers = {"content-type": ctype}
    if timeout_ms is not None:
        headers["x-saic-timeout-ms"] = str(timeout_ms)
    return _Req("POST", "/v1/compress", {"quality": quality, "target_bpp": target_bpp, "model": model}, data, headers)


def _decompress_req(bitstream: BytesLike, fmt: str, model: str | None, timeout_ms: float | None) -> _Req:
    headers = {"content-type": "application/octet-stream"}
    if timeout_ms is not None:
        headers["x-saic-timeout-ms"] = str(timeout_ms)
    return _Req("POST", "/v1/decompress", {"format": fmt, "model": model}, as_bytes(bitstream), headers)


def _score_req(original: ImageLike, decoded: ImageLike | None, bitstream: BytesLike | None) -> _Req:
    files = {"original": ("original", *image_bytes(original))}
    if decoded is not None:
        files["decoded"] = ("decoded", *image_bytes(decoded))
    if bitstream is not None:
        files["bitstream"] = ("bitstream", as_bytes(bitstream), "application/octet-stream")
    return _Req("POST", "/v1/score-si", files=files)


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code < 400:
        return resp
    try:
        err = resp.json()["error"]
        raise ClientError(err["message"], status=resp.status_code, code=err.get("reason", ""), type=err.get("type", ""))
    except (ValueError, KeyError, TypeError):
        raise ClientError(resp.text or resp.reason_phrase, status=resp.status_code) from None


def _compress_result(resp: httpx.Response) -> CompressResult:
    h = resp.headers
    return CompressResult(
        bitstream=resp.content,
        model=h["x-saic-model"],
        width=int(h["x-saic-width"]),
        height=int(h["x-saic-height"]),
        quality=int(h["x-saic-quality"]),
        bpp=float(h["x-saic-bpp"]),
    )


def _decompress_result(resp: httpx.Response) -> DecompressResult:
    h = resp.headers
    return DecompressResult(
        image=resp.content,
        media_type=h["content-type"],
        width=int(h["x-saic-width"]),
        height=int(h["x-saic-height"]),
        model=h["x-saic-model"],
    )


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class HttpClient:
    """Blocking client.  `HttpClient("http://127.0.0.1:8080").compress("photo.png", quality=60)`."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8080", *, api_key: str | None = None, timeout: float = 60.0, verify: Any = True
    ):
        self._c = httpx.Client(base_url=base_url, timeout=timeout, headers=_headers(api_key), verify=verify)

    def _send(self, req: _Req) -> httpx.Response:
        return _check(self._c.request(req.method, req.path, **req.kwargs()))

    def compress(
        self,
        image: ImageLike,
        *,
        quality: int | None = None,
        target_bpp: float | None = None,
        model: str | None = None,
        timeout_ms: float | None = None,
    ) -> CompressResult:
        return _compress_result(self._send(_compress_req(image, quality, target_bpp, model, timeout_ms)))

    def decompress(
        self, bitstream: BytesLike, *, format: str = "png", model: str | None = None, timeout_ms: float | None = None
    ) -> DecompressResult:
        return _decompress_result(self._send(_decompress_req(bitstream, format, model, timeout_ms)))

    def score_si(
        self, original: ImageLike, *, decoded: ImageLike | None = None, bitstream: BytesLike | None = None
    ) -> dict[str, Any]:
        return self._send(_score_req(original, decoded, bitstream)).json()

    def models(self) -> dict[str, Any]:
        return self._send(_Req("GET", "/v1/models")).json()

    def healthy(self) -> bool:
        return self._c.get("/healthz").status_code == 200

    def ready(self) -> bool:
        return self._c.get("/readyz").status_code == 200

    def metrics(self) -> str:
        return self._send(_Req("GET", "/metrics")).text

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncHttpClient:
    """asyncio client with the same methods as `HttpClient` (awaitable)."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8080", *, api_key: str | None = None, timeout: float = 60.0, verify: Any = True
    ):
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._c = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_headers(api_key), verify=verify, limits=limits)

    async def _send(self, req: _Req) -> httpx.Response:
        return _check(await self._c.request(req.method, req.path, **req.kwargs()))

    async def compress(
        self,
        image: ImageLike,
        *,
        quality: int | None = None,
        target_bpp: float | None = None,
        model: str | None = None,
        timeout_ms: float | None = None,
    ) -> CompressResult:
        return _compress_result(await self._send(_compress_req(image, quality, target_bpp, model, timeout_ms)))

    async def decompress(
        self, bitstream: BytesLike, *, format: str = "png", model: str | None = None, timeout_ms: float | None = None
    ) -> DecompressResult:
        return _decompress_result(await self._send(_decompress_req(bitstream, format, model, timeout_ms)))

    async def score_si(
        self, original: ImageLike, *, decoded: ImageLike | None = None, bitstream: BytesLike | None = None
    ) -> dict[str, Any]:
        return (await self._send(_score_req(original, decoded, bitstream))).json()

    async def models(self) -> dict[str, Any]:
        return (await self._send(_Req("GET", "/v1/models"))).json()

    async def healthy(self) -> bool:
        return (await self._c.get("/healthz")).status_code == 200

    async def ready(self) -> bool:
        return (await self._c.get("/readyz")).status_code == 200

    async def metrics(self) -> str:
        return (await self._send(_Req("GET", "/metrics"))).text

    async def aclose(self) -> None:
        await self._c.aclose()

    async def __aenter__(self) -> "AsyncHttpClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
