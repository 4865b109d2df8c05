"""Hardening against hostile peers that the protocol libraries leave to us.

* `ProtobufGuard` (gRPC interceptor): bytes that are not a valid protobuf message of the
  method's request type are answered INVALID_ARGUMENT.  Without it grpc.aio answers UNKNOWN
  with "Unexpected <class 'google.protobuf.message.DecodeError'>", which leaks an internal
  class name and reads like a server fault.
* `SlowClientGuardH11` (uvicorn protocol): closes connections that have not sent complete
  request headers within `header_timeout_s` (slowloris), or that trickle a body for longer
  than the request timeout; uvicorn itself has no such timeouts.

The API key check (constant-time, `hmac.compare_digest`) lives with each protocol
(`http.ObservedApp`, `grpc_server.ApiKeyInterceptor`); TLS is set up in `app`/`grpc_server`.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from saic.codec.errors import InvalidInputError


class InvalidProtobufError(InvalidInputError):
    """A gRPC request message that does not parse as the method's request type."""


class _Undecodable:
    """Stands in for a request message that failed to parse (the deserializer must not raise)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except (DecodeError, ValueError, TypeError) as exc:  # RuntimeWarning-free: protobuf raises DecodeError
            return _Undecodable(f"request is not a valid protobuf message ({type(exc).__name__})")

    return parse


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for msg in requests:
        if isinstance(msg, _Undecodable):
            raise InvalidProtobufError(msg.reason)
        yield msg


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming behaviour is an async generator, or a coroutine that writes via context.write."""
    if inspect.isawaitable(result):
        await result
        return
    async for resp in result:
        yield resp


class ProtobufGuard(grpc.aio.ServerInterceptor):
    """Undecodable request messages -> INVALID_ARGUMENT (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserializer = _tolerant(handler.request_deserializer)
        serializer = handler.response_serializer

        async def abort(context: grpc.aio.ServicerContext, reason: str) -> None:
            context.set_trailing_metadata((("saic-error-type", InvalidProtobufError.__name__),))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)

        if not handler.request_streaming and not handler.response_streaming:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await abort(context, request.reason)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)

        if not handler.request_streaming:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await abort(context, request.reason)
                async for resp in _responses(inner_us(request, context)):
                    yield resp

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)

        if not handler.response_streaming:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_su(_checked(requests), context)
                except InvalidProtobufError as exc:
                    await abort(context, str(exc))

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)

        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for resp in _responses(inner_ss(_checked(requests), context)):
                    yield resp
            except InvalidProtobufError as exc:
                await abort(context, str(exc))

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)


# ---------------------------------------------------------------------------- slow clients (HTTP)
HEADER_TIMEOUT_S = 10.0  # request headers must be complete this long after the connection (or last response)


def slow_client_guard(header_timeout_s: float = HEADER_TIMEOUT_S, body_timeout_s: float = 30.0) -> type:
    """A uvicorn h11 protocol class bounding how long a client may take to send a request:
    headers within `header_timeout_s` (from connect, or from the first byte of a further request
    on a kept-alive connection; idle keep-alive is uvicorn's own timeout), the body
    within `body_timeout_s` after the headers (the server passes its request timeout: an
    upload slower than the request deadline could never be answered in time).  Past either,
    the connection is closed; a handler waiting for the body sees a disconnect (499)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class SlowClientGuardH11(H11Protocol):
        _guard_timer: asyncio.TimerHandle | None = None
        _guard_kind: str | None = None  # "headers" or "body": what the armed timer bounds

        def _arm(self, seconds: float, kind: str) -> None:
            self._disarm()
            self._guard_timer = self.loop.call_later(seconds, self._too_slow)
            self._guard_kind = kind

        def _disarm(self) -> None:
            if self._guard_timer is not None:
                self._guard_timer.cancel()
            self._guard_timer = self._guard_kind = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _too_slow(self) -> None:
            kind = self._guard_kind
            self._guard_timer = self._guard_kind = None
            if self.transport.is_closing():
                return
            if (kind == "headers" and self._waiting_for_headers()) or (
                kind == "body" and self.conn.their_state is h11.SEND_BODY
            ):
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout_s, "headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers() and self._guard_kind != "headers":
                self._arm(header_timeout_s, "headers")  # first bytes of a further request on a kept-alive connection
            super().data_received(data)
            if self.transport.is_closing() or self._waiting_for_headers():
                return
            if self.conn.their_state is h11.SEND_BODY:  # headers done, body still coming
                if self._guard_kind != "body":
                    self._arm(body_timeout_s, "body")
            else:  # the whole request is in: it is the app's now
                self._disarm()

    return SlowClientGuardH11
