"""The generated gRPC modules (`codec_pb2`, `codec_pb2_grpc`).

The code is generated at build/install time by setup.py.  If it is missing (e.g. a source
checkout put on PYTHONPATH without installing) or older than the .proto of a source
checkout, it is generated here on first import, which needs grpcio-tools.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

from . import protogen

_HERE = Path(__file__).resolve().parent
_OUT = _HERE / "_proto"


def _source_proto_root() -> Path | None:
    env = os.environ.get("SAIC_PROTO_DIR")
    for cand in ([Path(env)] if env else []) + [_HERE.parents[2] / "protos"]:
        if (cand / protogen.PROTO_REL).is_file():
            return cand
    return None


def _is_stale(src: Path | None) -> bool:
    stamp = _OUT / protogen.STAMP
    if not (_OUT / "saic" / "v1" / "codec_pb2_grpc.py").is_file() or not stamp.is_file():
        return True
    return src is not None and stamp.read_text().strip() != protogen.proto_sha256(src)


def _load() -> tuple[ModuleType, ModuleType]:
    src = _source_proto_root()
    if "saic.server._proto.saic.v1.codec_pb2" not in sys.modules and _is_stale(src):
        if src is None:
            shipped = _OUT / "saic" / "v1"
            if not (shipped / "codec.proto").is_file():
                raise ImportError("saic gRPC code is missing and no codec.proto was found; reinstall saic")
            src = _OUT.parent / "_proto_src"
            (src / "saic" / "v1").mkdir(parents=True, exist_ok=True)
            (src / protogen.PROTO_REL).write_bytes((shipped / "codec.proto").read_bytes())
        protogen.generate(src, _OUT)
        importlib.invalidate_caches()
    pb2 = importlib.import_module("saic.server._proto.saic.v1.codec_pb2")
    pb2_grpc = importlib.import_module("saic.server._proto.saic.v1.codec_pb2_grpc")
    return pb2, pb2_grpc


codec_pb2, codec_pb2_grpc = _load()
SERVICE_NAME: str = codec_pb2.DESCRIPTOR.services_by_name["Codec"].full_name

__all__ = ["codec_pb2", "codec_pb2_grpc", "SERVICE_NAME"]
