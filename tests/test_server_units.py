"""Small pieces of saic.server without a running server: settings precedence, the error table,
proto generation, pixel scoring."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import REPO, make_photo

from saic.codec import errors as ce
from saic.server import errors as E
from saic.server import protogen, scoring
from saic.server.settings import Settings


def test_settings_env_then_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIC_MAX_BATCH_SIZE", "3")
    monkeypatch.setenv("SAIC_API_KEY", "zq-secret-1")
    monkeypatch.setenv("SAIC_PROVIDERS", "cpu")
    s = Settings()
    assert s.max_batch_size == 3 and s.api_key.get_secret_value() == "zq-secret-1" and s.ort_providers() == ["CPUExecutionProvider"]
    assert "zq-secret-1" not in repr(s)  # secrets stay out of logs
    monkeypatch.setenv("SAIC_PRECISION", "fp16")
    monkeypatch.setenv("SAIC_TILE", "512")
    monkeypatch.setenv("SAIC_PROVIDERS", "tensorrt")
    opts = Settings().model_options()  # what every CodecModel of the server is built with
    assert opts["precision"] == "fp16" and opts["tile"] == 512 and opts["spinning"] is False
    assert opts["providers"][-1] == "CPUExecutionProvider"  # TensorRT/CUDA only where onnxruntime has them
    with pytest.raises(ValueError):
        Settings(precision="int8")

    from saic.server import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-batch-size", "5", "--http-port", "0", "--no-warmup"])
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    s = Settings(**overrides)
    assert (s.max_batch_size, s.http_port, s.warmup, s.api_key.get_secret_value()) == (5, 0, False, "zq-secret-1")
    with pytest.raises(ValueError):
        Settings(tls_cert=Path("c.pem"))  # a certificate needs its key


def test_every_client_error_is_4xx_and_maps_to_grpc() -> None:
    for cls in [c for c in vars(ce).values() if isinstance(c, type) and issubclass(c, ce.InvalidInputError)]:
        st = E.status_for(cls("x"))
        assert 400 <= st.http < 500, cls
        assert st.grpc not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), cls
    assert E.status_for(E.QueueFullError()).http == 429
    assert E.status_for(E.QueueFullError()).grpc == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert E.status_for(ce.CorruptError()).reason == "invalid_bitstream"  # subclass finds its base
    assert E.status_for(RuntimeError("secret detail")).http == 500
    assert E.public_message(RuntimeError("secret detail")) == "internal server error"


def test_protogen_generates_an_importable_package(tmp_path: Path) -> None:
    out = tmp_path / "pkgroot" / "_proto"
    files = protogen.generate(REPO / "protos", out)
    names = {f.relative_to(out).as_posix() for f in files}
    assert {"saic/v1/codec_pb2.py", "saic/v1/codec_pb2_grpc.py", "saic/v1/codec.proto", "PROTO_SHA256"} <= names
    grpc_src = (out / "saic/v1/codec_pb2_grpc.py").read_text()
    assert "from . import codec_pb2" in grpc_src and "from saic.v1" not in grpc_src
    assert (out / protogen.STAMP).read_text().strip() == protogen.proto_sha256(REPO / "protos")
    # imports in a fresh interpreter as a package of its own
    code = "import _proto.saic.v1.codec_pb2_grpc as g; print(g.CodecServicer.__name__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=out.parent, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "CodecServicer" in r.stdout, r.stderr


def test_pixel_scores_match_eval_metrics() -> None:
    metrics = pytest.importorskip("saic.eval.metrics", reason="saic.eval.metrics needs scipy")
    rng = np.random.default_rng(0)
    for shape in [(48, 80), (162, 170), (9, 30)]:  # 3 scales, 5 scales, window skipped on one axis
        a = make_photo(*shape, seed=shape[0])
        b = np.clip(a.astype(int) + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
        assert scoring.psnr(a, b) == pytest.approx(metrics.psnr(a, b), abs=1e-12)
        assert scoring.ms_ssim(a, b) == pytest.approx(metrics.ms_ssim(a, b), abs=1e-10)


def test_score_without_semantics_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "semantic_scorer", lambda: (None, "no classifier here"))
    a = make_photo(32, 32)
    r = scoring.score_si(a, a)
    assert r["si"] is None and r["semantic"] is None and "no classifier here" in r["note"]
    assert r["parts"]["psnr_db"] is None and r["parts"]["ms_ssim"] == pytest.approx(1.0)
    with pytest.raises(ce.InvalidInputError):
        scoring.score_si(a, make_photo(16, 32))


def test_http_listener_disables_nagle() -> None:
    """Accepted HTTP connections must have TCP_NODELAY, or every keep-alive response's body waits
    ~40 ms for the client's delayed ACK (asyncio only sets it when the socket's proto is TCP)."""
    import socket

    from saic.server.app import listen_tcp

    lsock = listen_tcp("127.0.0.1", 0)
    with lsock, socket.create_connection(lsock.getsockname()) as client:
        conn, _ = lsock.accept()
        with conn:
            assert conn.proto == socket.IPPROTO_TCP
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert client.fileno() >= 0


def test_service_never_imports_torch() -> None:
    code = (
        "import sys, saic.server.app, saic.server.cli, saic.client, saic.client.grpc, saic.cli\n"
        "saic.cli.build_parser()\n"
        "assert 'torch' not in sys.modules, [m for m in sys.modules if m.startswith('torch')][:5]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
