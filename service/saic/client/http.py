"""HTTP clients (sync and async, httpx) for the saic service's /v1 API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import httpx

from ._common import (
    AsyncClosing,
    BytesLike,
    ClientError,
    Closing,
    CompressResult,
    DecompressResult,
    ImageLike,
    as_bytes,
    bearer,
    given,
    image_bytes,
    score_parts,
)

T = TypeVar("T")


@dataclass
class _Req:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] | None = None

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"params": given(**self.params), "headers": self.headers}
        if self.files is not None:
            kw["files"] = self.files
        elif self.content is not None:
            kw["content"] = self.content
        return kw


def _post(path: str, params: dict[str, Any], content: bytes, ctype: str, timeout_ms: float | None) -> _Req:
    """A POST of raw bytes; `timeout_ms` becomes the server-side deadline header."""
    headers = {"content-type": ctype}
    if timeout_ms is not None:
        headers["x-saic-timeout-ms"] = str(timeout_ms)
    return _Req("POST", path, params, content, headers)


def _compress_req(image: ImageLike, quality: int | None, target_bpp: float | None, model: str | None, timeout_ms: float | None) -> _Req:
    data, ctype = image_bytes(image)
    return _post("/v1/compress", {"quality": quality, "target_bpp": target_bpp, "model": model}, data, ctype, timeout_ms)


def _decompress_req(bitstream: BytesLike, fmt: str, model: str | None, timeout_ms: float | None) -> _Req:
    return _post("/v1/decompress", {"format": fmt, "model": model}, as_bytes(bitstream), "application/octet-stream", timeout_ms)


def _score_req(original: ImageLike, decoded: ImageLike | None, bitstream: BytesLike | None) -> _Req:
    files = {name: (name, data, ctype) for name, (data, ctype) in score_parts(original, decoded, bitstream).items()}
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
    h = _check(resp).headers
    return CompressResult(
        resp.content, h["x-saic-model"], int(h["x-saic-width"]), int(h["x-saic-height"]),
        int(h["x-saic-quality"]), float(h["x-saic-bpp"]),
    )


def _decompress_result(resp: httpx.Response) -> DecompressResult:
    h = _check(resp).headers
    return DecompressResult(resp.content, h["content-type"], int(h["x-saic-width"]), int(h["x-saic-height"]), h["x-saic-model"])


def _json(resp: httpx.Response) -> Any:
    return _check(resp).json()


def _text(resp: httpx.Response) -> str:
    return _check(resp).text


def _ok(resp: httpx.Response) -> bool:
    """Health probes: 200 or not (no error raised)."""
    return resp.status_code == 200


class HttpClient(Closing):
    """Blocking client.  `HttpClient("http://127.0.0.1:8080").compress("photo.png", quality=60)`."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8080", *, api_key: str | None = None, timeout: float = 60.0, verify: Any = True
    ):
        self._c = httpx.Client(base_url=base_url, timeout=timeout, headers=bearer(api_key), verify=verify)

    def _call(self, req: _Req, parse: Callable[[httpx.Response], T]) -> T:
        return parse(self._c.request(req.method, req.path, **req.kwargs()))

    def compress(self, image: ImageLike, *, quality: int | None = None, target_bpp: float | None = None,
                 model: str | None = None, timeout_ms: float | None = None) -> CompressResult:
        return self._call(_compress_req(image, quality, target_bpp, model, timeout_ms), _compress_result)

    def decompress(self, bitstream: BytesLike, *, format: str = "png", model: str | None = None,
                   timeout_ms: float | None = None) -> DecompressResult:
        return self._call(_decompress_req(bitstream, format, model, timeout_ms), _decompress_result)

    def score_si(self, original: ImageLike, *, decoded: ImageLike | None = None,
                 bitstream: BytesLike | None = None) -> dict[str, Any]:
        return self._call(_score_req(original, decoded, bitstream), _json)

    def models(self) -> dict[str, Any]:
        return self._call(_Req("GET", "/v1/models"), _json)

    def healthy(self) -> bool:
        return self._call(_Req("GET", "/healthz"), _ok)

    def ready(self) -> bool:
        return self._call(_Req("GET", "/readyz"), _ok)

    def metrics(self) -> str:
        return self._call(_Req("GET", "/metrics"), _text)

    def close(self) -> None:
        self._c.close()


class AsyncHttpClient(AsyncClosing):
    """asyncio client with the same methods as `HttpClient` (awaitable)."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8080", *, api_key: str | None = None, timeout: float = 60.0, verify: Any = True
    ):
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._c = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=bearer(api_key), verify=verify, limits=limits)

    async def _call(self, req: _Req, parse: Callable[[httpx.Response], T]) -> T:
        return parse(await self._c.request(req.method, req.path, **req.kwargs()))

    async def compress(self, image: ImageLike, *, quality: int | None = None, target_bpp: float | None = None,
                       model: str | None = None, timeout_ms: float | None = None) -> CompressResult:
        return await self._call(_compress_req(image, quality, target_bpp, model, timeout_ms), _compress_result)

    async def decompress(self, bitstream: BytesLike, *, format: str = "png", model: str | None = None,
                         timeout_ms: float | None = None) -> DecompressResult:
        return await self._call(_decompress_req(bitstream, format, model, timeout_ms), _decompress_result)

    async def score_si(self, original: ImageLike, *, decoded: ImageLike | None = None,
                       bitstream: BytesLike | None = None) -> dict[str, Any]:
        return await self._call(_score_req(original, decoded, bitstream), _json)

    async def models(self) -> dict[str, Any]:
        return await self._call(_Req("GET", "/v1/models"), _json)

    async def healthy(self) -> bool:
        return await self._call(_Req("GET", "/healthz"), _ok)

    async def ready(self) -> bool:
        return await self._call(_Req("GET", "/readyz"), _ok)

    async def metrics(self) -> str:
        return await self._call(_Req("GET", "/metrics"), _text)

    async def aclose(self) -> None:
        await self._c.aclose()

    _aclose = aclose
