"""`saic serve` and `saic client ...`.

`serve` flags are generated from `Settings` (one flag per field, e.g. --max-batch-size), so
CLI, environment (`SAIC_MAX_BATCH_SIZE`) and docs never drift apart.  Flags override the
environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from saic.codec.cli import read_input, write_output

STREAM_SUFFIX = ".saic"


def register(sub: argparse._SubParsersAction) -> None:
    _register_serve(sub)
    _register_client(sub)


# ---------------------------------------------------------------------------- serve
def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """argparse type/choices for a Settings field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, {"choices": list(typing.get_args(annotation))}
    if args and typing.get_origin(annotation) is not typing.Literal:
        return _flag_type(args[0])
    if annotation is SecretStr:
        return str, {}
    if annotation in (int, float, str, Path):
        return annotation, {}
    return str, {}


def _register_serve(sub: argparse._SubParsersAction) -> None:
    from .settings import Settings

    p = sub.add_parser(
        "serve",
        help="run the HTTP + gRPC service",
        description="Serve the codec over HTTP (FastAPI) and gRPC on one event loop. Every flag is also an "
        "environment variable SAIC_<FLAG> (e.g. SAIC_MAX_BATCH_SIZE); flags win. Port 0 picks a free port "
        "(the log line 'saic serving HTTP on ...' shows it). SIGTERM drains, then exits.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_ = (field.description or "") + f" [env SAIC_{name.upper()}]"
        if field.annotation is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            typ, extra = _flag_type(field.annotation)
            p.add_argument(flag, dest=name, type=typ, default=None, help=help_, **extra)
    p.set_defaults(func=_serve)


EX_CONFIG = 78  # sysexits.h: bad configuration (missing/corrupt model, unreadable TLS files, port in use)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from saic.codec.errors import ModelLoadError

    from .settings import Settings

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:  # one line per bad field, no traceback
        print(f"saic serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from .app import run

    try:
        return run(settings)
    except (ModelLoadError, OSError) as exc:  # operator errors: say what is wrong, not where in the code
        logging.getLogger("saic.server").critical("cannot start: %s: %s", type(exc).__name__, exc)
        return EX_CONFIG


# ---------------------------------------------------------------------------- client
def _register_client(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "client",
        help="call a running saic service (HTTP or gRPC)",
        description="Talk to a running service. HTTP by default (--url); --grpc TARGET uses gRPC instead.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8080", help="HTTP base URL (default %(default)s)")
    p.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this target instead of HTTP")
    p.add_argument("--api-key", help="API key, if the server requires one")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
    p.add_argument("--cacert", type=Path, help="CA certificate (PEM) for a TLS server")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    c = acts.add_parser("compress", help="image -> .saic bitstream")
    c.add_argument("input", help="image file or - for stdin")
    c.add_argument("-o", "--output", help="output file (default: INPUT.saic; - for stdout)")
    rate = c.add_mutually_exclusive_group()
    rate.add_argument("-q", "--quality", type=int)
    rate.add_argument("-b", "--target-bpp", type=float)
    c.add_argument("-m", "--model")
    c.add_argument("--upload", action="store_true", help="gRPC only: client-streaming chunked upload")
    c.set_defaults(func=_client_compress)

    d = acts.add_parser("decompress", help=".saic bitstream -> image")
    d.add_argument("input", help=".saic file or - for stdin")
    d.add_argument("-o", "--output", help="output file (default: INPUT.<format>; - for stdout)")
    d.add_argument("--format", default="png", help="png (default), webp or jpeg")
    d.add_argument("-m", "--model", help="fail unless the bitstream is this model's")
    d.set_defaults(func=_client_decompress)

    s = acts.add_parser("score-si", help="semantic information of a reconstruction (JSON)")
    s.add_argument("original")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--decoded", help="decoded image file")
    g.add_argument("--bitstream", help=".saic file (the server decodes it)")
    s.set_defaults(func=_client_score)

    m = acts.add_parser("models", help="list the served models (JSON)")
    m.set_defaults(func=_client_models)
    h = acts.add_parser("health", help="liveness and readiness")
    h.set_defaults(func=_client_health)


def _client(args: argparse.Namespace) -> Any:
    cacert = args.cacert.read_bytes() if args.cacert else None
    if args.grpc:
        from saic.client.grpc import GrpcClient

        return GrpcClient(args.grpc, api_key=args.api_key, timeout=args.timeout, root_certificates=cacert)
    from saic.client import HttpClient

    import ssl

    verify = ssl.create_default_context(cafile=str(args.cacert)) if cacert else True
    return HttpClient(args.url, api_key=args.api_key, timeout=args.timeout, verify=verify)


def _guarded(fn: Any) -> Any:
    def wrapper(args: argparse.Namespace) -> int:
        from saic.client import ClientError

        try:
            return fn(args)
        except ClientError as exc:
            where = exc.status if exc.status is not None else exc.code
            print(f"error: {where} {exc.type}: {exc.message}", file=sys.stderr)
            return 1

    return wrapper


@_guarded
def _client_compress(args: argparse.Namespace) -> int:
    data = read_input(args.input)
    with _client(args) as c:
        kw = {"quality": args.quality, "target_bpp": args.target_bpp, "model": args.model}
        res = c.compress_upload(data, **kw) if (args.upload and args.grpc) else c.compress(data, **kw)
    out = args.output or ("-" if args.input == "-" else str(Path(args.input).with_suffix(STREAM_SUFFIX)))
    write_output(out, res.bitstream)
    print(
        f"{args.input}: {res.width}x{res.height} -> {len(res.bitstream)} bytes, {res.bpp:.4f} bpp, "
        f"quality {res.quality}, model {res.model} -> {out}",
        file=sys.stderr,
    )
    return 0


@_guarded
def _client_decompress(args: argparse.Namespace) -> int:
    data = read_input(args.input)
    with _client(args) as c:
        res = c.decompress(data, format=args.format, model=args.model)
    out = args.output or ("-" if args.input == "-" else str(Path(args.input).with_suffix("." + args.format)))
    write_output(out, res.image)
    print(f"{args.input}: {res.width}x{res.height} {res.media_type} -> {out}", file=sys.stderr)
    return 0


@_guarded
def _client_score(args: argparse.Namespace) -> int:
    with _client(args) as c:
        kw = {"decoded": read_input(args.decoded)} if args.decoded else {"bitstream": read_input(args.bitstream)}
        res = c.score_si(read_input(args.original), **kw)
    print(res.json if args.grpc else json.dumps(res, indent=2))
    return 0


@_guarded
def _client_models(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.grpc:
            from google.protobuf.json_format import MessageToDict

            print(json.dumps([MessageToDict(m) for m in c.models()], indent=2))
        else:
            print(json.dumps(c.models(), indent=2))
    return 0


@_guarded
def _client_health(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.grpc:
            status = c.health()
            print(f"grpc health: {status}")
            return 0 if status == "SERVING" else 1
        alive, ready = c.healthy(), c.ready()
        print(f"alive: {alive}, ready: {ready}")
        return 0 if alive and ready else 1
