"""HTTP protocol (FastAPI): a thin translation of requests onto the data plane.

Bodies are either raw bytes (with their Content-Type) or multipart/form-data.  Errors are
mapped by `errors.status_for` and returned as `{"error": {"type", "reason", "message"}}`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any, Awaitable, Callable, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saic.codec.errors import InvalidInputError, InvalidParameterError

from . import errors as E
from .dataplane import FORMATS, MEDIA_TYPES, DataPlane, check_format
from .demo import mount_demo
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .settings import Settings

T = TypeVar("T")

ENDPOINTS = {
    "/v1/compress": "compress",
    "/v1/decompress": "decompress",
    "/v1/score-si": "score_si",
    "/v1/classify": "classify",
    "/v1/models": "models",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
    "/": "demo",
}
UNAUTHENTICATED_PATHS = {"/healthz", "/readyz", "/metrics", "/"}  # "/": the demo page (no data; its calls carry the key)
TIMEOUT_HEADER = "x-saic-timeout-ms"
IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/avif", "image/tiff", "image/bmp", "image/gif"]


# ---------------------------------------------------------------------------- schemas
class ErrorBody(BaseModel):
    type: str = Field(description="error class, e.g. CorruptError")
    reason: str = Field(description="stable short code, e.g. invalid_bitstream")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelInfoOut(BaseModel):
    id: str
    sha256: str
    tag: int
    quality_range: tuple[int, int]
    bpp_range: tuple[float, float] | None
    providers: list[str]
    precision: str = Field(description="fp32 or fp16 analysis/synthesis graphs")
    is_default: bool


class ModelsOut(BaseModel):
    models: list[ModelInfoOut]
    default: str


class LabelOut(BaseModel):
    name: str = Field(description="tiny10 class name, e.g. dog")
    probability: float = Field(ge=0, le=1)


class ClassifyOut(BaseModel):
    labels: list[LabelOut] = Field(description="top-k classes, most likely first (probabilities of the full softmax)")
    model: str = Field(description="codec model that wrote the bitstream")
    head: str = Field(description="compressed-domain head that classified it")


class ScoreOut(BaseModel):
    si: float | None = Field(description="semantic information; null while semantics are unavailable")
    parts: dict[str, float | None]
    semantic: dict[str, Any] | None
    note: str
    model: str | None = None


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorResponse} for c in codes}


def _binary_body(types: list[str], field: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "content": {t: binary for t in types}
            | {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {field: {"type": "string", "format": "binary"}}}
                }
            },
        }
    }


# ---------------------------------------------------------------------------- ASGI middleware
class ObservedApp:
    """Outermost ASGI layer: API key, body-size limit, in-flight gauge, bytes, request count/latency."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, api_key: str | None = None, max_inflight: int | None = None
    ):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.max_inflight = max_inflight  # API requests at once (probes exempt); bounds bodies held in memory
        self._inflight = 0

    def _authorized(self, scope: Scope) -> bool:
        if not self.api_key or scope["path"] in UNAUTHENTICATED_PATHS:
            return True
        headers = dict(scope.get("headers", []))
        given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ")
        return hmac.compare_digest(given, self.api_key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.metrics
        endpoint = ENDPOINTS.get(scope["path"], "other")
        start = time.perf_counter()
        status = {"code": 500}
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                m.received_bytes.labels("http").inc(len(msg.get("body", b"")))
                if received > self.max_body_bytes:
                    raise E.PayloadTooLargeError(f"body larger than {self.max_body_bytes} bytes")
            return msg

        async def counting_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            elif msg["type"] == "http.response.body":
                m.sent_bytes.labels("http").inc(len(msg.get("body", b"")))
            await send(msg)

        m.inflight.labels("http").inc()
        counted = scope["path"] not in UNAUTHENTICATED_PATHS
        self._inflight += counted
        try:
            length = dict(scope.get("headers", [])).get(b"content-length")
            if self.max_inflight is not None and counted and self._inflight > self.max_inflight:
                m.rejected.labels("too_many_inflight").inc()
                exc = E.QueueFullError(f"more than {self.max_inflight} requests in flight; retry later")
                await error_response(exc)(scope, receive, counting_send)
            elif not self._authorized(scope):
                await error_response(E.UnauthenticatedError("missing or wrong API key"))(scope, receive, counting_send)
            elif length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                exc = E.PayloadTooLargeError(f"body of {int(length)} bytes exceeds the limit of {self.max_body_bytes}")
                await error_response(exc)(scope, receive, counting_send)
            else:
                await self.app(scope, counting_receive, counting_send)
        finally:
            self._inflight -= counted
            m.inflight.labels("http").dec()
            m.requests.labels(endpoint, "http", str(status["code"])).inc()
            m.request_duration.labels(endpoint, "http").observe(time.perf_counter() - start)


def error_response(exc: BaseException) -> JSONResponse:
    st = E.status_for(exc)
    body = {"error": {"type": E.error_type(exc), "reason": st.reason, "message": E.public_message(exc)}}
    headers = {"Retry-After": "1"} if st.http in (429, 503) else None
    return JSONResponse(body, status_code=st.http, headers=headers)


# ---------------------------------------------------------------------------- helpers
async def _until_disconnect(request: Request) -> None:
    """Return when the client has gone (after the body was read, receive() only reports that)."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def _unless_client_gone(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so dropping its queued batch item) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        raise E.ClientGoneError("client disconnected")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def _timeout_s(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise InvalidParameterError(f"{TIMEOUT_HEADER} must be a number of milliseconds") from None
    if not ms > 0:
        raise InvalidParameterError(f"{TIMEOUT_HEADER} must be positive")
    return ms / 1000.0


async def _payload(request: Request, fields: tuple[str, ...], accept: Callable[[str], bool]) -> bytes:
    """Raw body, or the first present multipart field of `fields` (or the only file sent)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        parts = await _form(request)
        for f in fields:
            if f in parts:
                return parts[f]
        if len(parts) == 1:
            return next(iter(parts.values()))
        raise E.EmptyBodyError(f"multipart body has none of the fields {', '.join(fields)}")
    if ctype and not accept(ctype):
        raise E.UnsupportedMediaTypeError(f"Content-Type {ctype!r} is not accepted here")
    return await request.body()


async def _form(request: Request) -> dict[str, bytes]:
    form = await request.form(max_files=4, max_fields=16)
    out: dict[str, bytes] = {}
    try:
        for key, value in form.multi_items():
            out[key] = await value.read() if isinstance(value, UploadFile) else value.encode()
    finally:
        await form.close()
    return out


def _is_image_type(ctype: str) -> bool:
    return ctype.startswith("image/") or ctype == "application/octet-stream"


def _is_bitstream_type(ctype: str) -> bool:
    return ctype in ("application/octet-stream", "application/x-saic", "application/vnd.saic")


def _accept_format(request: Request, fmt: str | None) -> str:
    """?format= wins; else the first Accept media type we can produce; else PNG."""
    if fmt:
        return check_format(fmt)
    accept = request.headers.get("accept", "")
    if not accept:
        return "png"
    for part in accept.split(","):
        mt = part.split(";")[0].strip().lower()
        if mt in MEDIA_TYPES:
            return MEDIA_TYPES[mt]
        if mt in ("*/*", "image/*", ""):
            return "png"
    raise E.NotAcceptableError(f"cannot produce any of {accept!r}; available: {', '.join(FORMATS.values())}")


# ---------------------------------------------------------------------------- the app
def create_app(dataplane: DataPlane, settings: Settings, metrics: Metrics) -> ASGIApp:
    """The FastAPI app wrapped in the metrics/limits ASGI layer."""
    app = FastAPI(
        title="saic",
        version="1",
        summary="Semantic-assisted learned image compression service",
        description="Compress images to saic bitstreams, decompress them, and score reconstructions. "
        "The same operations are available over gRPC (protos/saic/v1/codec.proto).",
    )
    @app.exception_handler(Exception)
    async def _any_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(InvalidParameterError(msgs))

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (malformed multipart -> 400, 404, 405) in our error format, not {"detail"}."""
        if exc.status_code == 400:
            return error_response(InvalidInputError(str(exc.detail)))
        reason = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else "http_error"
        body = {"error": {"type": "HTTPException", "reason": reason, "message": str(exc.detail)}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    for cls in E.TABLE:  # our typed errors: the one table decides the status
        app.add_exception_handler(cls, _any_error)  # type: ignore[arg-type]

    @app.post(
        "/v1/compress",
        summary="Compress an image",
        response_class=Response,
        responses={
            200: {
                "content": {"application/octet-stream": {}},
                "description": "the saic bitstream",
                "headers": {
                    "X-Saic-Bpp": {"description": "bits per pixel", "schema": {"type": "number"}},
                    "X-Saic-Width": {"schema": {"type": "integer"}},
                    "X-Saic-Height": {"schema": {"type": "integer"}},
                    "X-Saic-Model": {"schema": {"type": "string"}},
                    "X-Saic-Quality": {"schema": {"type": "integer"}},
                },
            },
            **_error_responses(400, 401, 404, 406, 413, 415, 422, 429, 503, 504),
        },
        openapi_extra=_binary_body(IMAGE_TYPES + ["application/octet-stream"], "image"),
    )
    async def compress(
        request: Request,
        quality: int | None = Query(None, ge=0, le=100, description="0..100, higher = more bits (default 50); exclusive with target_bpp"),
        target_bpp: float | None = Query(None, gt=0, description="highest quality whose bitstream is at most this many bpp (low caps: full or half resolution, whichever decodes closer)"),
        model: str | None = Query(None, description="model id (default: the server's default model)"),
    ) -> Response:
        data = await _payload(request, ("image", "file"), _is_image_type)
        res = await _unless_client_gone(
            request,
            dataplane.compress(data, quality=quality, target_bpp=target_bpp, model=model, timeout=_timeout_s(request)),
        )
        headers = {
            "X-Saic-Bpp": f"{res.bpp:.6f}",
            "X-Saic-Width": str(res.width),
            "X-Saic-Height": str(res.height),
            "X-Saic-Model": res.model,
            "X-Saic-Quality": str(res.quality),
        }
        return Response(res.bitstream, media_type="application/octet-stream", headers=headers)

    @app.post(
        "/v1/decompress",
        summary="Decompress a bitstream to an image",
        response_class=Response,
        responses={
            200: {"content": {t: {} for t in FORMATS.values()}, "description": "the decoded image (PNG by default)"},
            **_error_responses(400, 401, 404, 406, 409, 413, 415, 422, 429, 503, 504),
        },
        openapi_extra=_binary_body(["application/octet-stream"], "bitstream"),
    )
    async def decompress(
        request: Request,
        format: str | None = Query(None, description="png (default), webp or jpeg; else taken from Accept"),
        model: str | None = Query(None, description="fail with 409 unless the bitstream is this model's"),
    ) -> Response:
        fmt = _accept_format(request, format)
        data = await _payload(request, ("bitstream", "file"), _is_bitstream_type)
        res = await _unless_client_gone(
            request, dataplane.decompress(data, fmt=fmt, model=model, timeout=_timeout_s(request))
        )
        headers = {"X-Saic-Width": str(res.width), "X-Saic-Height": str(res.height), "X-Saic-Model": res.model}
        return Response(res.image, media_type=res.media_type, headers=headers)

    @app.post(
        "/v1/score-si",
        summary="Semantic information of a reconstruction",
        response_model=ScoreOut,
        responses=_error_responses(400, 401, 409, 413, 415, 422, 429, 503, 504),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["original"],
                            "properties": {
                                "original": {"type": "string", "format": "binary"},
                                "decoded": {"type": "string", "format": "binary"},
                                "bitstream": {"type": "string", "format": "binary"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def score_si(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            raise E.UnsupportedMediaTypeError("send multipart/form-data with 'original' and 'decoded' or 'bitstream'")
        parts = await _form(request)
        if "original" not in parts:
            raise E.EmptyBodyError("missing multipart field 'original'")
        return await _unless_client_gone(
            request,
            dataplane.score_si(
                parts["original"],
                decoded=parts.get("decoded"),
                bitstream=parts.get("bitstream"),
                timeout=_timeout_s(request),
            ),
        )

    @app.post(
        "/v1/classify",
        summary="Top-k tiny10 labels from a bitstream, computed in the compressed domain (no pixels decoded)",
        response_model=ClassifyOut,
        responses=_error_responses(400, 401, 404, 409, 413, 415, 422, 429, 501, 503, 504),
        openapi_extra=_binary_body(["application/octet-stream"], "bitstream"),
    )
    async def classify(
        request: Request,
        top_k: int = Query(5, ge=1, le=100, description="number of labels (capped at the number of classes)"),
        model: str | None = Query(None, description="fail with 409 unless the bitstream is this model's"),
    ) -> dict[str, Any]:
        data = await _payload(request, ("bitstream", "file"), _is_bitstream_type)
        return await _unless_client_gone(
            request, dataplane.classify(data, top_k=top_k, model=model, timeout=_timeout_s(request))
        )

    @app.get("/v1/models", summary="Loaded models", response_model=ModelsOut)
    async def models() -> dict[str, Any]:
        infos = dataplane.models()
        return {
            "models": [
                {**i.__dict__, "providers": list(i.providers)} for i in infos
            ],
            "default": next(i.id for i in infos if i.is_default),
        }

    @app.get("/healthz", summary="Liveness: the process serves HTTP")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="Readiness: models loaded, warm-up done, not draining", responses={503: {}})
    async def readyz() -> JSONResponse:
        ok = dataplane.ready and dataplane.batcher.accepting
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "models": list(dataplane.registry.models)},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    mount_demo(app)  # GET / -> the web demo (demo.py)
    return ObservedApp(app, metrics, settings.max_body_bytes, api_key, settings.max_inflight_requests)
