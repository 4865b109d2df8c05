"""Python clients for the saic service: HTTP and gRPC, sync and asyncio.

    from saic.client import HttpClient, GrpcClient
    with HttpClient("http://127.0.0.1:8080") as c:
        res = c.compress("photo.png", quality=60)          # CompressResult(bitstream, bpp, ...)
        png = c.decompress(res.bitstream).image
    with GrpcClient("127.0.0.1:50051") as g:
        for r in g.stream([CompressItem("a.png"), CompressItem("b.png")]):
            print(r.id, r.result.bpp if r.ok else r.error)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._common import ClientError, CompressItem, CompressResult, DecompressItem, DecompressResult, StreamResult
from .http import AsyncHttpClient, HttpClient

if TYPE_CHECKING:
    from .grpc import AsyncGrpcClient, GrpcClient

__all__ = [
    "AsyncGrpcClient",
    "AsyncHttpClient",
    "ClientError",
    "CompressItem",
    "CompressResult",
    "DecompressItem",
    "DecompressResult",
    "GrpcClient",
    "HttpClient",
    "StreamResult",
]


def __getattr__(name: str) -> Any:  # gRPC (and its generated code) only when asked for
    if name in ("GrpcClient", "AsyncGrpcClient"):
        from . import grpc as _grpc

        return getattr(_grpc, name)
    raise AttributeError(name)
