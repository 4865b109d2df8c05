"""Error types raised by the server, and THE table mapping every error type to an HTTP status
and a gRPC status code.  Both protocols call `status_for`; nothing else decides codes."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from starlette.requests import ClientDisconnect

from saic.codec import errors as ce


class ServerError(ce.SaicError):
    """Base of errors raised by the server itself (not by the codec)."""


class EmptyBodyError(ce.InvalidInputError):
    """The request carried no payload."""


class UnsupportedMediaTypeError(ce.InvalidInputError):
    """A Content-Type the endpoint does not accept (e.g. text/plain for an image)."""


class NotAcceptableError(ce.InvalidInputError):
    """An output format the server cannot produce."""


class PayloadTooLargeError(ce.InvalidInputError):
    """A body above `max_body_bytes`."""


class QueueFullError(ServerError):
    """The batcher queue is at `max_queue_size` (backpressure: retry later)."""


class DeadlineExceededError(ServerError):
    """The request's deadline passed before its result was ready."""


class DrainingError(ServerError):
    """The server is shutting down and accepts no new work."""


class ClientGoneError(ServerError):
    """The client disconnected or cancelled; the result would go nowhere."""


class UnauthenticatedError(ServerError):
    """Missing or wrong API key."""


class NotImplementedYetError(ServerError):
    """An API that is reserved but not provided by this build (e.g. classify before semantics)."""


@dataclass(frozen=True)
class Status:
    http: int
    grpc: grpc.StatusCode
    reason: str  # short stable label, also the `reason` of saic_rejected_requests_total


# The one table.  Order matters: the first class in the exception's MRO that is listed wins,
# so specific types sit next to their bases.
TABLE: dict[type[BaseException], Status] = {
    EmptyBodyError: Status(400, grpc.StatusCode.INVALID_ARGUMENT, "empty_body"),
    UnsupportedMediaTypeError: Status(415, grpc.StatusCode.INVALID_ARGUMENT, "unsupported_media_type"),
    NotAcceptableError: Status(406, grpc.StatusCode.INVALID_ARGUMENT, "not_acceptable"),
    PayloadTooLargeError: Status(413, grpc.StatusCode.RESOURCE_EXHAUSTED, "body_too_large"),
    ce.ImageTooLargeError: Status(413, grpc.StatusCode.INVALID_ARGUMENT, "image_too_large"),
    ce.InvalidImageError: Status(422, grpc.StatusCode.INVALID_ARGUMENT, "invalid_image"),
    ce.BitstreamError: Status(422, grpc.StatusCode.INVALID_ARGUMENT, "invalid_bitstream"),
    ce.UnknownModelError: Status(404, grpc.StatusCode.NOT_FOUND, "unknown_model"),
    ce.ModelMismatchError: Status(409, grpc.StatusCode.FAILED_PRECONDITION, "model_mismatch"),
    ce.InvalidParameterError: Status(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_parameter"),
    ce.InvalidInputError: Status(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_input"),
    QueueFullError: Status(429, grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_full"),
    DeadlineExceededError: Status(504, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
    DrainingError: Status(503, grpc.StatusCode.UNAVAILABLE, "draining"),
    ClientGoneError: Status(499, grpc.StatusCode.CANCELLED, "cancelled"),
    ClientDisconnect: Status(499, grpc.StatusCode.CANCELLED, "cancelled"),  # Starlette: client left mid-upload
    UnauthenticatedError: Status(401, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
    NotImplementedYetError: Status(501, grpc.StatusCode.UNIMPLEMENTED, "not_implemented"),
    ce.ModelLoadError: Status(503, grpc.StatusCode.UNAVAILABLE, "model_unavailable"),
}
INTERNAL = Status(500, grpc.StatusCode.INTERNAL, "internal")


def status_for(exc: BaseException) -> Status:
    """HTTP and gRPC status for an exception (INTERNAL for anything not in the table)."""
    for cls in type(exc).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return INTERNAL


def public_message(exc: BaseException) -> str:
    """What the client may see: our own messages verbatim, nothing from unexpected exceptions."""
    if status_for(exc) is INTERNAL:
        return "internal server error"
    return str(exc) or type(exc).__name__


def error_type(exc: BaseException) -> str:
    return type(exc).__name__ if status_for(exc) is not INTERNAL else "InternalError"
