"""gRPC clients (sync and asyncio) for saic.v1.Codec, including client streaming (chunked
upload) and bidirectional streaming (many items over one stream)."""

from __future__ import annotations

import itertools
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence

import grpc

from saic.server.proto import codec_pb2 as pb
from saic.server.proto import codec_pb2_grpc as pb_grpc

from ._common import (
    BytesLike,
    ClientError,
    CompressItem,
    CompressResult,
    DecompressItem,
    DecompressResult,
    ImageLike,
    StreamResult,
    as_bytes,
    image_bytes,
)

ERROR_TYPE_KEY = "saic-error-type"
DEFAULT_CHUNK = 1 << 20
_MAX_MESSAGE = 256 * 1024 * 1024


def _error(exc: grpc.RpcError) -> ClientError:
    etype = ""
    try:
        etype = dict(exc.trailing_metadata() or ()).get(ERROR_TYPE_KEY, "")
    except Exception:  # noqa: BLE001 - some RpcErrors carry no metadata
        pass
    return ClientError(exc.details() or "", code=exc.code().name, type=str(etype))


def _compress_req(image: ImageLike, quality: int | None, target_bpp: float | None, model: str | None) -> pb.CompressRequest:
    data, ctype = image_bytes(image)
    req = pb.CompressRequest(image=data, content_type=ctype, model=model or "")
    if quality is not None:
        req.quality = quality
    if target_bpp is not None:
        req.target_bpp = target_bpp
    return req


def _chunks(image: ImageLike, quality: int | None, target_bpp: float | None, model: str | None, chunk_size: int) -> Iterator[pb.UploadChunk]:
    data, ctype = image_bytes(image)
    params = pb.CompressParams(model=model or "", content_type=ctype)
    if quality is not None:
        params.quality = quality
    if target_bpp is not None:
        params.target_bpp = target_bpp
    yield pb.UploadChunk(params=params, data=data[:chunk_size])
    for i in range(chunk_size, len(data), chunk_size):
        yield pb.UploadChunk(data=data[i : i + chunk_size])


def _stream_req(item: CompressItem | DecompressItem, n: int) -> pb.StreamRequest:
    rid = item.id or str(n)
    if isinstance(item, CompressItem):
        return pb.StreamRequest(id=rid, compress=_compress_req(item.image, item.quality, item.target_bpp, item.model))
    if isinstance(item, DecompressItem):
        return pb.StreamRequest(
            id=rid, decompress=pb.DecompressRequest(bitstream=as_bytes(item.bitstream), format=item.format, model=item.model or "")
        )
    raise TypeError(f"stream items are CompressItem or DecompressItem, not {type(item).__name__}")


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


def _score_req(original: ImageLike, decoded: ImageLike | None, bitstream: BytesLike | None) -> pb.ScoreSIRequest:
    req = pb.ScoreSIRequest(original=image_bytes(original)[0])
    if decoded is not None:
        req.decoded = image_bytes(decoded)[0]
    if bitstream is not None:
        req.bitstream = as_bytes(bitstream)
    return req


def _metadata(api_key: str | None) -> Sequence[tuple[str, str]] | None:
    return (("authorization", f"Bearer {api_key}"),) if api_key else None


def _options() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]


def _credentials(root_certificates: bytes | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


class GrpcClient:
    """Blocking client.  `GrpcClient("127.0.0.1:50051").compress("photo.png", quality=60)`.

    `timeout` (seconds) becomes each call's gRPC deadline unless a call passes its own."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = 60.0,
    ):
        self._channel = (
            grpc.secure_channel(target, _credentials(root_certificates), options=_options())
            if tls or root_certificates
            else grpc.insecure_channel(target, options=_options())
        )
        self._stub = pb_grpc.CodecStub(self._channel)
        self._md = _metadata(api_key)
        self.timeout = timeout

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def compress(
        self,
        image: ImageLike,
        *,
        quality: int | None = None,
        target_bpp: float | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> CompressResult:
        try:
            r = self._stub.Compress(_compress_req(image, quality, target_bpp, model), timeout=self._t(timeout), metadata=self._md)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _compress_result(r)

    def decompress(
        self, bitstream: BytesLike, *, format: str = "png", model: str | None = None, timeout: float | None = None
    ) -> DecompressResult:
        req = pb.DecompressRequest(bitstream=as_bytes(bitstream), format=format, model=model or "")
        try:
            r = self._stub.Decompress(req, timeout=self._t(timeout), metadata=self._md)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _decompress_result(r)

    def score_si(self, original: ImageLike, *, decoded: ImageLike | None = None, bitstream: BytesLike | None = None,
                 timeout: float | None = None) -> pb.ScoreSIResponse:
        try:
            return self._stub.ScoreSI(_score_req(original, decoded, bitstream), timeout=self._t(timeout), metadata=self._md)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def models(self) -> list[pb.ModelInfo]:
        try:
            return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self._t(None), metadata=self._md).models)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def compress_upload(
        self,
        image: ImageLike,
        *,
        quality: int | None = None,
        target_bpp: float | None = None,
        model: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        timeout: float | None = None,
    ) -> CompressResult:
        """Client streaming: the image goes up in `chunk_size` pieces (for images near the message limit)."""
        try:
            r = self._stub.CompressUpload(
                _chunks(image, quality, target_bpp, model, chunk_size), timeout=self._t(timeout), metadata=self._md
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _compress_result(r)

    def stream(self, items: Iterable[CompressItem | DecompressItem], *, timeout: float | None = None) -> Iterator[StreamResult]:
        """Bidirectional streaming: results arrive as they are ready (match them by `id`)."""
        reqs = (_stream_req(it, n) for n, it in zip(itertools.count(), items))
        try:
            for r in self._stub.Stream(reqs, timeout=self._t(timeout), metadata=self._md):
                yield _stream_result(r)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def health(self, service: str = "") -> str:
        """Standard grpc.health.v1 check: 'SERVING', 'NOT_SERVING', ..."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._t(None))
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGrpcClient:
    """grpc.aio client with the same methods as `GrpcClient` (awaitable; `stream` is an async iterator)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = 60.0,
    ):
        self._channel = (
            grpc.aio.secure_channel(target, _credentials(root_certificates), options=_options())
            if tls or root_certificates
            else grpc.aio.insecure_channel(target, options=_options())
        )
        self._stub = pb_grpc.CodecStub(self._channel)
        self._md = _metadata(api_key)
        self.timeout = timeout

    def _t(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def compress(
        self,
        image: ImageLike,
        *,
        quality: int | None = None,
        target_bpp: float | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> CompressResult:
        try:
            r = await self._stub.Compress(
                _compress_req(image, quality, target_bpp, model), timeout=self._t(timeout), metadata=self._md
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _compress_result(r)

    async def decompress(
        self, bitstream: BytesLike, *, format: str = "png", model: str | None = None, timeout: float | None = None
    ) -> DecompressResult:
        req = pb.DecompressRequest(bitstream=as_bytes(bitstream), format=format, model=model or "")
        try:
            r = await self._stub.Decompress(req, timeout=self._t(timeout), metadata=self._md)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _decompress_result(r)

    async def score_si(self, original: ImageLike, *, decoded: ImageLike | None = None,
                       bitstream: BytesLike | None = None, timeout: float | None = None) -> pb.ScoreSIResponse:
        try:
            return await self._stub.ScoreSI(_score_req(original, decoded, bitstream), timeout=self._t(timeout), metadata=self._md)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    async def models(self) -> list[pb.ModelInfo]:
        try:
            r = await self._stub.ListModels(pb.ListModelsRequest(), timeout=self._t(None), metadata=self._md)
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return list(r.models)

    async def compress_upload(
        self,
        image: ImageLike,
        *,
        quality: int | None = None,
        target_bpp: float | None = None,
        model: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        timeout: float | None = None,
    ) -> CompressResult:
        try:
            r = await self._stub.CompressUpload(
                _chunks(image, quality, target_bpp, model, chunk_size), timeout=self._t(timeout), metadata=self._md
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return _compress_result(r)

    async def stream(
        self, items: Iterable[CompressItem | DecompressItem] | AsyncIterable[CompressItem | DecompressItem],
        *, timeout: float | None = None,
    ) -> AsyncIterator[StreamResult]:
        async def reqs() -> AsyncIterator[pb.StreamRequest]:
            n = 0
            if isinstance(items, AsyncIterable):
                async for it in items:
                    yield _stream_req(it, n)
                    n += 1
            else:
                for it in items:
                    yield _stream_req(it, n)
                    n += 1

        call = self._stub.Stream(reqs(), timeout=self._t(timeout), metadata=self._md)
        try:
            async for r in call:
                yield _stream_result(r)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    async def health(self, service: str = "") -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            r = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._t(None))
        except grpc.RpcError as exc:
            raise _error(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncGrpcClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
