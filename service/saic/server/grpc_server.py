"""gRPC protocol (grpc.aio): a thin translation of protobuf messages onto the data plane.

Errors map through `errors.status_for` to status codes, with the error class in the trailing
metadata key `saic-error-type`.  The server also registers standard health checking
(grpc.health.v1) and server reflection.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import errors as E
from .dataplane import DataPlane
from .metrics import Metrics
from .proto import SERVICE_NAME, codec_pb2 as pb, codec_pb2_grpc as pb_grpc
from .security import ProtobufGuard
from .settings import Settings

log = logging.getLogger("saic.server.grpc")

ERROR_TYPE_KEY = "saic-error-type"
MESSAGE_OVERHEAD = 64 * 1024  # protobuf framing around the largest accepted payload
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _error_message(exc: BaseException) -> pb.Error:
    st = E.status_for(exc)
    return pb.Error(code=st.grpc.value[0], status=st.grpc.name, type=E.error_type(exc), message=E.public_message(exc))


def _compress_response(res: Any) -> pb.CompressResponse:
    return pb.CompressResponse(
        bitstream=res.bitstream, model=res.model, width=res.width, height=res.height, bpp=res.bpp, quality=res.quality
    )


def _decompress_response(res: Any) -> pb.DecompressResponse:
    return pb.DecompressResponse(
        image=res.image, media_type=res.media_type, width=res.width, height=res.height, model=res.model
    )


class CodecServicer(pb_grpc.CodecServicer):
    """saic.v1.Codec on the data plane."""

    def __init__(self, dataplane: DataPlane, metrics: Metrics, settings: Settings):
        self.dp = dataplane
        self.metrics = metrics
        self.settings = settings

    # ------------------------------------------------------------------ plumbing
    async def _observe(
        self, endpoint: str, context: grpc.aio.ServicerContext, size_in: int, work: Callable[[], Awaitable[Any]]
    ) -> Any:
        m = self.metrics
        m.inflight.labels("grpc").inc()
        m.received_bytes.labels("grpc").inc(size_in)
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            resp = await work()
            m.sent_bytes.labels("grpc").inc(resp.ByteSize())
            return resp
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            st = E.status_for(exc)
            code = st.grpc
            if st is E.INTERNAL:
                log.exception("%s failed", endpoint)
            context.set_trailing_metadata(((ERROR_TYPE_KEY, E.error_type(exc)),))
            await context.abort(st.grpc, E.public_message(exc))
        finally:
            m.inflight.labels("grpc").dec()
            m.requests.labels(endpoint, "grpc", code.name).inc()
            m.request_duration.labels(endpoint, "grpc").observe(time.perf_counter() - start)

    # ------------------------------------------------------------------ unary
    async def Compress(self, request: pb.CompressRequest, context: grpc.aio.ServicerContext) -> pb.CompressResponse:
        return await self._observe("compress", context, request.ByteSize(), lambda: self._compress(request, context))

    async def _compress(self, req: pb.CompressRequest, context: grpc.aio.ServicerContext) -> pb.CompressResponse:
        res = await self.dp.compress(
            req.image,
            quality=req.quality if req.HasField("quality") else None,
            target_bpp=req.target_bpp if req.HasField("target_bpp") else None,
            model=req.model or None,
            timeout=context.time_remaining(),
        )
        return _compress_response(res)

    async def Decompress(self, request: pb.DecompressRequest, context: grpc.aio.ServicerContext) -> pb.DecompressResponse:
        return await self._observe("decompress", context, request.ByteSize(), lambda: self._decompress(request, context))

    async def _decompress(self, req: pb.DecompressRequest, context: grpc.aio.ServicerContext) -> pb.DecompressResponse:
        res = await self.dp.decompress(
            req.bitstream, fmt=req.format or None, model=req.model or None, timeout=context.time_remaining()
        )
        return _decompress_response(res)

    async def ScoreSI(self, request: pb.ScoreSIRequest, context: grpc.aio.ServicerContext) -> pb.ScoreSIResponse:
        async def work() -> pb.ScoreSIResponse:
            which = request.WhichOneof("reconstruction")
            result = await self.dp.score_si(
                request.original,
                decoded=request.decoded if which == "decoded" else None,
                bitstream=request.bitstream if which == "bitstream" else None,
                timeout=context.time_remaining(),
            )
            resp = pb.ScoreSIResponse(
                parts={k: v for k, v in result["parts"].items() if v is not None},
                semantic_available=result.get("semantic") is not None,
                note=result.get("note", ""),
                json=json.dumps(result),
            )
            if result.get("si") is not None:
                resp.si = float(result["si"])
            return resp

        return await self._observe("score_si", context, request.ByteSize(), work)

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        async def work() -> pb.ClassifyResponse:
            result = await self.dp.classify(
                request.bitstream, top_k=request.top_k or 5, model=request.model or None, timeout=context.time_remaining()
            )
            return pb.ClassifyResponse(
                labels=[pb.Label(label=lb["name"], probability=lb["probability"]) for lb in result["labels"]],
                model=result.get("model", ""),
            )

        return await self._observe("classify", context, request.ByteSize(), work)

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        async def work() -> pb.ListModelsResponse:
            return pb.ListModelsResponse(
                models=[
                    pb.ModelInfo(
                        id=i.id,
                        sha256=i.sha256,
                        tag=i.tag,
                        quality_min=i.quality_range[0],
                        quality_max=i.quality_range[1],
                        bpp_min=i.bpp_range[0] if i.bpp_range else 0.0,
                        bpp_max=i.bpp_range[1] if i.bpp_range else 0.0,
                        providers=list(i.providers),
                        precision=i.precision,
                        is_default=i.is_default,
                    )
                    for i in self.dp.models()
                ]
            )

        return await self._observe("models", context, 0, work)

    # ------------------------------------------------------------------ streaming
    async def CompressUpload(
        self, request_iterator: AsyncIterator[pb.UploadChunk], context: grpc.aio.ServicerContext
    ) -> pb.CompressResponse:
        received = 0

        async def work() -> pb.CompressResponse:
            nonlocal received
            params: pb.CompressParams | None = None
            buf = bytearray()
            # a client that trickles chunks holds a stream and its buffer: the upload gets the
            # request timeout (or the client's deadline, if sooner), like an HTTP body does
            limit = min(t for t in (context.time_remaining(), self.settings.request_timeout_s) if t is not None)
            try:
                async with asyncio.timeout(limit):
                    async for chunk in request_iterator:
                        received += chunk.ByteSize()
                        if chunk.HasField("params"):
                            if params is not None:
                                raise E.InvalidParameterError("params may only be sent once, in the first chunk")
                            params = chunk.params
                        buf += chunk.data
                        if len(buf) > self.settings.max_body_bytes:
                            raise E.PayloadTooLargeError(f"upload larger than {self.settings.max_body_bytes} bytes")
            except TimeoutError:
                raise E.DeadlineExceededError(f"upload not complete within {limit:.3g} s") from None
            p = params or pb.CompressParams()
            res = await self.dp.compress(
                bytes(buf),
                quality=p.quality if p.HasField("quality") else None,
                target_bpp=p.target_bpp if p.HasField("target_bpp") else None,
                model=p.model or None,
                timeout=context.time_remaining(),
            )
            return _compress_response(res)

        resp = await self._observe("compress_upload", context, 0, work)
        self.metrics.received_bytes.labels("grpc").inc(received)
        return resp

    async def Stream(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        """Items are processed concurrently (at most `max_stream_inflight` per stream); a failed
        item yields an `Error` response and the stream continues."""
        out: asyncio.Queue[pb.StreamResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.settings.max_stream_inflight)
        tasks: set[asyncio.Task] = set()
        m = self.metrics

        async def handle(msg: pb.StreamRequest) -> None:
            op = msg.WhichOneof("op") or "none"
            endpoint = f"stream_{op}"
            start = time.perf_counter()
            m.inflight.labels("grpc").inc()
            m.received_bytes.labels("grpc").inc(msg.ByteSize())
            code = grpc.StatusCode.OK
            try:
                if op == "compress":
                    resp = pb.StreamResponse(id=msg.id, compress=await self._compress(msg.compress, context))
                elif op == "decompress":
                    resp = pb.StreamResponse(id=msg.id, decompress=await self._decompress(msg.decompress, context))
                else:
                    raise E.InvalidParameterError("stream item has neither 'compress' nor 'decompress'")
            except Exception as exc:
                code = E.status_for(exc).grpc
                resp = pb.StreamResponse(id=msg.id, error=_error_message(exc))
            finally:
                slots.release()
                m.inflight.labels("grpc").dec()
                m.requests.labels(endpoint, "grpc", code.name).inc()
                m.request_duration.labels(endpoint, "grpc").observe(time.perf_counter() - start)
            m.sent_bytes.labels("grpc").inc(resp.ByteSize())
            await out.put(resp)

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    await slots.acquire()
                    t = asyncio.ensure_future(handle(msg))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                await out.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (resp := await out.get()) is not None:
                yield resp
            await reader  # surfaces an error of the request stream itself
        finally:
            reader.cancel()
            for t in list(tasks):
                t.cancel()


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <key>` or `x-api-key: <key>` (health and reflection exempt)."""

    def __init__(self, api_key: str):
        self._key = api_key.encode()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        md = dict(details.invocation_metadata or ())
        given = str(md.get("x-api-key") or str(md.get("authorization", "")).removeprefix("Bearer "))
        if hmac.compare_digest(given.encode(), self._key):
            return handler

        async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
            context.set_trailing_metadata(((ERROR_TYPE_KEY, "UnauthenticatedError"),))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")

        kinds = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        make = kinds[(handler.request_streaming, handler.response_streaming)]
        return make(deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def create_grpc_server(dataplane: DataPlane, metrics: Metrics, settings: Settings) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """The grpc.aio server with the Codec service, health checking and reflection (not started)."""
    limit = settings.max_body_bytes + MESSAGE_OVERHEAD
    interceptors: list[grpc.aio.ServerInterceptor] = [ProtobufGuard()]  # undecodable messages -> INVALID_ARGUMENT
    if settings.api_key:
        interceptors.append(ApiKeyInterceptor(settings.api_key.get_secret_value()))
    server = grpc.aio.server(
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.max_inflight_requests,  # beyond: RESOURCE_EXHAUSTED at once
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_CodecServicer_to_server(CodecServicer(dataplane, metrics, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    return server, health_servicer


def bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Bind the configured address (TLS when configured); returns the port (useful with port 0)."""
    addr = f"{settings.host}:{settings.grpc_port}"
    if settings.tls_cert and settings.tls_key:
        creds = grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())])
        port = server.add_secure_port(addr, creds)
    else:
        port = server.add_insecure_port(addr)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {addr}")
    return port


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
