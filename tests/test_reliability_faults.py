"""Faults against a real `saic serve` subprocess (real sockets, the shipped model on CPU):
bad models at start, SIGTERM during load, clients that vanish or crawl, a missing GPU provider.

Each test starts its own server, so each costs a few seconds; timeouts are generous because
CI's 2 cores are shared.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import encode, make_photo, metric_value
from reliability_support import MODELS, ServerProcess, run_server_expecting_exit

from saic.server.proto import codec_pb2 as pb
from saic.server.proto import codec_pb2_grpc as pb_grpc

EX_CONFIG = 78
PNG_SMALL = encode(make_photo(64, 64, seed=3))
PNG_MID = encode(make_photo(384, 384, seed=4))


def _copy_model(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(MODELS, root)
    return root


def _metrics(srv: ServerProcess) -> str:
    return httpx.get(srv.http_url + "/metrics", timeout=30).text


def _wait_for(cond, timeout: float = 60, every: float = 0.05) -> bool:  # noqa: ANN001 - a zero-arg predicate
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return False


def _assert_clean_log(srv: ServerProcess) -> None:
    assert "Traceback" not in srv.log, srv.log
    assert "Exception in ASGI application" not in srv.log, srv.log


# ---------------------------------------------------------------------------- bad models at start
def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_with_matching_hashes(model: Path) -> None:
    """A truncated ONNX file whose manifest hashes were updated: passes the hash check, fails to load."""
    import hashlib

    onnx = model / "synthesis.onnx"
    onnx.write_bytes(onnx.read_bytes()[:4096])
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"]["synthesis.onnx"] = hashlib.sha256(onnx.read_bytes()).hexdigest()
    files = manifest["files"]
    combined = hashlib.sha256("".join(f"{k}:{files[k]}\n" for k in sorted(files)).encode()).hexdigest()
    manifest["sha256"], manifest["tag"] = combined, int(combined[:4], 16)
    (model / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, expect",
    [
        ("missing_dir", "does not exist"),
        ("missing_file", "missing synthesis.onnx"),
        ("flipped_byte", "sha256 does not match the manifest"),
        ("bad_manifest", "saic-small: manifest.json is unreadable"),
        ("bad_onnx", "model saic-small at"),
    ],
)
def test_bad_model_at_start_is_one_clear_line_and_exit_78(tmp_path: Path, damage: str, expect: str) -> None:
    root = _copy_model(tmp_path)
    model = root / "saic-small"
    if damage == "missing_dir":
        root = tmp_path / "nowhere"
    elif damage == "missing_file":
        (model / "synthesis.onnx").unlink()
    elif damage == "flipped_byte":
        _flip_byte(model / "synthesis.onnx")
    elif damage == "bad_manifest":
        (model / "manifest.json").write_text("{not json")
    elif damage == "bad_onnx":
        _truncate_with_matching_hashes(model)
    t0 = time.monotonic()
    rc, log = run_server_expecting_exit(model_dir=root)
    assert rc == EX_CONFIG, log
    assert "Traceback" not in log, log
    critical = [ln for ln in log.splitlines() if "CRITICAL" in ln]
    assert len(critical) == 1 and "cannot start" in critical[0] and expect in critical[0], log
    assert time.monotonic() - t0 < 60  # fails fast: no retry loop inside the process


# ---------------------------------------------------------------------------- SIGTERM during load
def test_sigterm_finishes_inflight_requests_and_refuses_new_ones() -> None:
    n_http, n_grpc = 6, 2
    with ServerProcess("--max-batch-size", "1", "--max-queue-delay-ms", "0", "--drain-timeout-s", "120") as srv:
        results: list[int | str] = []

        def http_call() -> int:
            return httpx.post(srv.http_url + "/v1/compress", content=PNG_MID, headers={"content-type": "image/png"}, timeout=120).status_code

        def grpc_call() -> str:
            with grpc.insecure_channel(srv.grpc_target) as ch:
                try:
                    pb_grpc.CodecStub(ch).Compress(pb.CompressRequest(image=PNG_MID), timeout=120)
                    return "OK"
                except grpc.RpcError as exc:
                    return exc.code().name

        pool = ThreadPoolExecutor(n_http + n_grpc)
        futures = [pool.submit(http_call) for _ in range(n_http)] + [pool.submit(grpc_call) for _ in range(n_grpc)]
        done = 0.0

        def all_admitted() -> bool:
            nonlocal done
            text = _metrics(srv)
            inflight = metric_value(text, "saic_inflight_requests") - 1  # minus this /metrics request
            done = metric_value(text, "saic_requests_total", endpoint="compress")
            return inflight + done >= n_http + n_grpc

        # Every request in the server, most still queued behind the one batch worker: SIGTERM.
        assert _wait_for(all_admitted, 90), srv.log
        time.sleep(0.2)  # past body reading and admission
        srv.signal(signal.SIGTERM)
        assert done <= n_http + n_grpc - 3, f"only {n_http + n_grpc - done} requests left to drain: test too weak"
        assert _wait_for(lambda: "draining" in srv.log, 30), srv.log

        # New work during the drain is refused at once (503 / UNAVAILABLE) or the port is closed.
        refused_http = []
        t0 = time.monotonic()
        try:
            r = httpx.post(srv.http_url + "/v1/compress", content=PNG_SMALL, headers={"content-type": "image/png"}, timeout=30)
            refused_http.append(r.status_code)
            assert r.status_code == 503 and r.json()["error"]["reason"] == "draining", r.text
            assert r.headers.get("retry-after")
        except httpx.ConnectError:
            refused_http.append("closed")
        assert time.monotonic() - t0 < 5, "a refusal must be fast"
        with grpc.insecure_channel(srv.grpc_target) as ch:
            with pytest.raises(grpc.RpcError) as exc:
                pb_grpc.CodecStub(ch).Compress(pb.CompressRequest(image=PNG_SMALL), timeout=30)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE

        results = [f.result(timeout=180) for f in futures]
        rc = srv.wait(120)
        pool.shutdown()
    assert results == [200] * n_http + ["OK"] * n_grpc, (results, srv.log)
    assert rc == 0, srv.log
    assert "stopped (drained)" in srv.log
    _assert_clean_log(srv)


# ---------------------------------------------------------------------------- vanishing clients
def _raw_http(srv: ServerProcess) -> socket.socket:
    host, port = srv.http_url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def test_client_disconnects_mid_upload_and_while_waiting() -> None:
    with ServerProcess("--max-batch-size", "1") as srv:
        # 1. gone in the middle of the body
        s = _raw_http(srv)
        s.sendall(b"POST /v1/compress HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 200000\r\n\r\n")
        s.sendall(PNG_MID[:5000])
        time.sleep(0.3)
        s.close()
        # 2. whole request sent, gone while it is queued/computed: several at once keep the queue busy
        for _ in range(4):
            s = _raw_http(srv)
            head = f"POST /v1/compress HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: {len(PNG_MID)}\r\n\r\n"
            s.sendall(head.encode() + PNG_MID)
            s.close()
        text = ""

        def settled() -> bool:
            nonlocal text
            text = _metrics(srv)
            gone = metric_value(text, "saic_requests_total", endpoint="compress", code="499")
            # the /metrics request itself is the one in flight
            return gone >= 5 and metric_value(text, "saic_inflight_requests", protocol="http") == 1

        assert _wait_for(settled, 90), text
        assert metric_value(text, "saic_requests_total", code="500") == 0
        # the server is fine afterwards
        r = httpx.post(srv.http_url + "/v1/compress", content=PNG_SMALL, headers={"content-type": "image/png"}, timeout=60)
        assert r.status_code == 200
        _assert_clean_log(srv)


def test_grpc_cancel_mid_stream_and_mid_call() -> None:
    with ServerProcess("--max-batch-size", "1") as srv:
        with grpc.insecure_channel(srv.grpc_target) as ch:
            stub = pb_grpc.CodecStub(ch)
            # unary call cancelled by its deadline while queued/computing
            fut = stub.Compress.future(pb.CompressRequest(image=PNG_MID), timeout=120)
            time.sleep(0.2)
            fut.cancel()

            # bidirectional stream: read one answer, then walk away with items still in flight
            def items():  # noqa: ANN202
                for i in range(8):
                    yield pb.StreamRequest(id=str(i), compress=pb.CompressRequest(image=PNG_MID))
                time.sleep(60)  # keep the request side open: the client cancels, not the half-close

            call = stub.Stream(items(), timeout=120)
            first = next(call)
            assert first.WhichOneof("result") in ("compress", "error")
            call.cancel()

            def settled() -> bool:
                return metric_value(_metrics(srv), "saic_inflight_requests", protocol="grpc") == 0

            assert _wait_for(settled, 90), _metrics(srv)
            # and the server still answers, on the same channel
            res = stub.Compress(pb.CompressRequest(image=PNG_SMALL), timeout=60)
            assert res.width == 64
        _assert_clean_log(srv)


# ---------------------------------------------------------------------------- slow clients
def test_slow_clients_do_not_starve_others_and_are_cut_off() -> None:
    """50 connections trickling headers or bodies byte by byte: a normal client is still served,
    and the server closes the trickling ones (headers: 10 s; body: the request timeout)."""
    with ServerProcess("--request-timeout-s", "6") as srv:
        stop = threading.Event()
        cut_off: list[float] = []
        socks: list[socket.socket] = []

        def trickle(body: bool) -> None:
            s = _raw_http(srv)
            socks.append(s)
            t0 = time.monotonic()
            head = b"POST /v1/compress HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
            data = PNG_SMALL if body else head
            if body:
                s.sendall(head)
            for i in range(len(data)):
                if stop.is_set():
                    return
                try:
                    s.sendall(data[i : i + 1])
                except OSError:
                    cut_off.append(time.monotonic() - t0)
                    return
                time.sleep(0.2)

        threads = [threading.Thread(target=trickle, args=(i % 2 == 0,), daemon=True) for i in range(50)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        try:
            t0 = time.monotonic()
            r = httpx.post(srv.http_url + "/v1/compress", content=PNG_SMALL, headers={"content-type": "image/png"}, timeout=60)
            elapsed = time.monotonic() - t0
            assert r.status_code == 200
            assert elapsed < 20, f"a normal request took {elapsed:.1f}s next to 50 slow clients"
            assert httpx.get(srv.http_url + "/readyz", timeout=10).status_code == 200
            for t in threads:
                t.join(60)
            assert len(cut_off) == 50, f"only {len(cut_off)} of 50 slow connections were closed by the server"
            assert max(cut_off) < 40, cut_off
        finally:
            stop.set()
            for s in socks:
                s.close()
        _assert_clean_log(srv)


# ---------------------------------------------------------------------------- execution provider
def test_unavailable_gpu_provider_falls_back_to_cpu_and_metric_says_so() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback path is not exercised")
    with ServerProcess("--providers", "cuda") as srv:
        text = _metrics(srv)
        models = httpx.get(srv.http_url + "/v1/models", timeout=30).json()["models"]
        for m in models:  # every loaded model fell back, and says so
            assert m["providers"] == ["CPUExecutionProvider"]
            assert metric_value(text, "saic_execution_provider_info", model=m["id"], provider="CPUExecutionProvider") == 1
            assert metric_value(text, "saic_execution_provider_info", model=m["id"], provider="CUDAExecutionProvider") == 0
        r = httpx.post(srv.http_url + "/v1/compress", content=PNG_SMALL, headers={"content-type": "image/png"}, timeout=60)
        assert r.status_code == 200
