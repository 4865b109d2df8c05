"""gRPC clients (sync and asyncio) for saic.v1.Codec, including client streaming (chunked
upload) and bidirectional streaming (many items over one stream)."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, TypeVar

import grpc

from saic.server.proto import codec_pb2 as pb
from saic.server.proto import codec_pb2_grpc as pb_grpc

from ._common import (
    AsyncClosing,
    BytesLike,
    ClientError,
    Closing,
    CompressItem,
    CompressResult,
    DecompressItem,
    DecompressResult,
    ImageLike,
    StreamResult,
    as_bytes,
    bearer,
    given,
    image_bytes,
    score_parts,
)

ERROR_TYPE_KEY = "saic-error-type"
DEFAULT_CHUNK = 1 << 20
_MAX_MESSAGE = 256 * 1024 * 1024
T = TypeVar("T")
Item = CompressItem | DecompressItem


def _error(exc: grpc.RpcError) -> ClientError:
    etype = ""
    try:
        etype = dict(exc.trailing_metadata() or ()).get(ERROR_TYPE_KEY, "")
    except Exception:  # noqa: BLE001 - some RpcErrors carry no metadata
        pass
    return ClientError(exc.details() or "", code=exc.code().name, type=str(etype))


@contextlib.contextmanager
def _rpc_errors() -> Iterator[None]:
    """Raise a failed call's grpc.RpcError as a ClientError."""
    try:
        yield
    except grpc.RpcError as exc:
        raise _error(exc) from None


def _compress_req(image: ImageLike, quality: int | None, target_bpp: float | None, model: str | None) -> pb.CompressRequest:
    data, ctype = image_bytes(image)
    return pb.CompressRequest(image=data, content_type=ctype, model=model or "", **given(quality=quality, target_bpp=target_bpp))


def _decompress_req(bitstream: BytesLike, fmt: str, model: str | None) -> pb.DecompressRequest:
    return pb.DecompressRequest(bitstream=as_bytes(bitstream), format=fmt, model=model or "")


def _chunks(image: ImageLike, quality: int | None, target_bpp: float | None, model: str | None, chunk_size: int) -> Iterator[pb.UploadChunk]:
    data, ctype = image_bytes(image)
    params = pb.CompressParams(model=model or "", content_type=ctype, **given(quality=quality, target_bpp=target_bpp))
    yield pb.UploadChunk(params=params, data=data[:chunk_size])
    for i in range(chunk_size, len(data), chunk_size):
        yield pb.UploadChunk(data=data[i : i + chunk_size])


def _stream_req(item: Item, n: int) -> pb.StreamRequest:
    rid = item.id or str(n)
    if isinstance(item, CompressItem):
        return pb.StreamRequest(id=rid, compress=_compress_req(item.image, item.quality, item.target_bpp, item.model))
    if isinstance(item, DecompressItem):
        return pb.StreamRequest(id=rid, decompress=_decompress_req(item.bitstream, item.format, item.model))
    raise TypeError(f"stream items are CompressItem or DecompressItem, not {type(item).__name__}")


async def _stream_reqs(items: Iterable[Item] | AsyncIterable[Item]) -> AsyncIterator[pb.StreamRequest]:
    """Numbered stream requests from a sync or async iterable of items."""
    if not isinstance(items, AsyncIterable):
        for n, it in enumerate(items):
            yield _stream_req(it, n)
        return
    n = 0
    async for it in items:
        yield _stream_req(it, n)
        n += 1


def _score_req(original: ImageLike, decoded: ImageLike | None, bitstream: BytesLike | None) -> pb.ScoreSIRequest:
    req = pb.ScoreSIRequest()
    for name, (data, _) in score_parts(original, decoded, bitstream).items():
        setattr(req, name, data)  # in order: the last of decoded/bitstream wins their oneof
    return req


def _compress_result(r: pb.CompressResponse) -> CompressResult:
    return CompressResult(r.bitstream, r.model, r.width, r.height, r.quality, r.bpp)


def _decompress_result(r: pb.DecompressResponse) -> DecompressResult:
    return DecompressResult(r.image, r.media_type, r.width, r.height, r.model)


def _stream_result(r: pb.StreamResponse) -> StreamResult:
    which = r.WhichOneof("result")
    if which == "compress":
        return StreamResult(r.id, result=_compress_result(r.compress))
    if which == "decompress":
        return StreamResult(r.id, result=_decompress_result(r.decompress))
    e = r.error
    return StreamResult(r.id, error=ClientError(e.message, code=e.status, type=e.type))


def _same(r: T) -> T:
    return r


def _model_list(r: pb.ListModelsResponse) -> list[pb.ModelInfo]:
    return list(r.models)


class _Base:
    """Channel, stub and per-call options; subclasses pick the grpc API (sync or aio) and make the calls."""

    _grpc: Any = grpc

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = 60.0,
    ):
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
        if tls or root_certificates:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = self._grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = self._grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.CodecStub(self._channel)
        self._md = tuple(bearer(api_key).items()) or None
        self.timeout = timeout

    def _kw(self, timeout: float | None, auth: bool = True) -> dict[str, Any]:
        """A call's deadline (the client's unless given) and API key metadata."""
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._md if auth else None}

    def _health(self, service: str) -> tuple[Callable[..., Any], Any, Callable[[Any], str]]:
        """(rpc, request, parse) of a standard grpc.health.v1 check (sent without the API key)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        status_name = health_pb2.HealthCheckResponse.ServingStatus.Name
        rpc = health_pb2_grpc.HealthStub(self._channel).Check
        return rpc, health_pb2.HealthCheckRequest(service=service), lambda r: status_name(r.status)


class GrpcClient(_Base, Closing):
    """Blocking client.  `GrpcClient("127.0.0.1:50051").compress("photo.png", quality=60)`.

    `timeout` (seconds) becomes each call's gRPC deadline unless a call passes its own."""

    def _call(self, rpc: Callable[..., Any], request: Any, parse: Callable[[Any], T], timeout: float | None = None,
              auth: bool = True) -> T:
        with _rpc_errors():
            return parse(rpc(request, **self._kw(timeout, auth)))

    def compress(self, image: ImageLike, *, quality: int | None = None, target_bpp: float | None = None,
                 model: str | None = None, timeout: float | None = None) -> CompressResult:
        return self._call(self._stub.Compress, _compress_req(image, quality, target_bpp, model), _compress_result, timeout)

    def decompress(self, bitstream: BytesLike, *, format: str = "png", model: str | None = None,
                   timeout: float | None = None) -> DecompressResult:
        return self._call(self._stub.Decompress, _decompress_req(bitstream, format, model), _decompress_result, timeout)

    def score_si(self, original: ImageLike, *, decoded: ImageLike | None = None, bitstream: BytesLike | None = None,
                 timeout: float | None = None) -> pb.ScoreSIResponse:
        return self._call(self._stub.ScoreSI, _score_req(original, decoded, bitstream), _same, timeout)

    def models(self) -> list[pb.ModelInfo]:
        return self._call(self._stub.ListModels, pb.ListModelsRequest(), _model_list)

    def compress_upload(self, image: ImageLike, *, quality: int | None = None, target_bpp: float | None = None,
                        model: str | None = None, chunk_size: int = DEFAULT_CHUNK,
                        timeout: float | None = None) -> CompressResult:
        """Client streaming: the image goes up in `chunk_size` pieces (for images near the message limit)."""
        chunks = _chunks(image, quality, target_bpp, model, chunk_size)
        return self._call(self._stub.CompressUpload, chunks, _compress_result, timeout)

    def stream(self, items: Iterable[Item], *, timeout: float | None = None) -> Iterator[StreamResult]:
        """Bidirectional streaming: results arrive as they are ready (match them by `id`)."""
        reqs = (_stream_req(it, n) for n, it in enumerate(items))
        with _rpc_errors():
            for r in self._stub.Stream(reqs, **self._kw(timeout)):
                yield _stream_result(r)

    def health(self, service: str = "") -> str:
        """Standard grpc.health.v1 check: 'SERVING', 'NOT_SERVING', ..."""
        return self._call(*self._health(service), auth=False)

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcClient(_Base, AsyncClosing):
    """grpc.aio client with the same methods as `GrpcClient` (awaitable; `stream` is an async iterator)."""

    _grpc = grpc.aio

    async def _call(self, rpc: Callable[..., Any], request: Any, parse: Callable[[Any], T], timeout: float | None = None,
                    auth: bool = True) -> T:
        with _rpc_errors():
            return parse(await rpc(request, **self._kw(timeout, auth)))

    async def compress(self, image: ImageLike, *, quality: int | None = None, target_bpp: float | None = None,
                       model: str | None = None, timeout: float | None = None) -> CompressResult:
        return await self._call(self._stub.Compress, _compress_req(image, quality, target_bpp, model), _compress_result, timeout)

    async def decompress(self, bitstream: BytesLike, *, format: str = "png", model: str | None = None,
                         timeout: float | None = None) -> DecompressResult:
        return await self._call(self._stub.Decompress, _decompress_req(bitstream, format, model), _decompress_result, timeout)

    async def score_si(self, original: ImageLike, *, decoded: ImageLike | None = None,
                       bitstream: BytesLike | None = None, timeout: float | None = None) -> pb.ScoreSIResponse:
        return await self._call(self._stub.ScoreSI, _score_req(original, decoded, bitstream), _same, timeout)

    async def models(self) -> list[pb.ModelInfo]:
        return await self._call(self._stub.ListModels, pb.ListModelsRequest(), _model_list)

    async def compress_upload(self, image: ImageLike, *, quality: int | None = None, target_bpp: float | None = None,
                              model: str | None = None, chunk_size: int = DEFAULT_CHUNK,
                              timeout: float | None = None) -> CompressResult:
        chunks = _chunks(image, quality, target_bpp, model, chunk_size)
        return await self._call(self._stub.CompressUpload, chunks, _compress_result, timeout)

    async def stream(self, items: Iterable[Item] | AsyncIterable[Item], *,
                     timeout: float | None = None) -> AsyncIterator[StreamResult]:
        call = self._stub.Stream(_stream_reqs(items), **self._kw(timeout))
        with _rpc_errors():
            async for r in call:
                yield _stream_result(r)

    async def health(self, service: str = "") -> str:
        return await self._call(*self._health(service), auth=False)

    async def close(self) -> None:
        await self._channel.close()

    _aclose = close
