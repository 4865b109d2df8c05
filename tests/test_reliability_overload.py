"""Overload beyond capacity: a tiny queue, a burst of HTTP and gRPC requests.  Excess requests
get a fast 429 / RESOURCE_EXHAUSTED (with Retry-After), never a timeout or a 5xx, and the
server serves normally once the burst is over.  (bench/load.py measures the same at length.)"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
from conftest import encode, make_photo, metric_value, server_settings

from saic.server.app import ServerThread
from saic.server.proto import codec_pb2 as pb
from saic.server.proto import codec_pb2_grpc as pb_grpc

PNG = encode(make_photo(128, 128, seed=11))


def test_burst_beyond_capacity_is_refused_fast_and_recovers(registry: Any) -> None:
    settings = server_settings(max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0, batch_workers=1)
    with ServerThread(settings, registry) as srv, httpx.Client(base_url=srv.http_url, timeout=120) as http:
        channel = grpc.insecure_channel(srv.grpc_target)
        stub = pb_grpc.CodecStub(channel)

        def http_call(_: int) -> tuple[str, float, str]:
            t0 = time.monotonic()
            r = http.post("/v1/compress", content=PNG, headers={"content-type": "image/png"})
            extra = r.headers.get("retry-after", "") if r.status_code == 429 else ""
            if r.status_code >= 400:
                assert r.json()["error"]["reason"] in ("queue_full",), r.text
            return str(r.status_code), time.monotonic() - t0, extra

        def grpc_call(_: int) -> tuple[str, float, str]:
            t0 = time.monotonic()
            try:
                stub.Compress(pb.CompressRequest(image=PNG), timeout=120)
                return "OK", time.monotonic() - t0, ""
            except grpc.RpcError as exc:
                return exc.code().name, time.monotonic() - t0, exc.details()

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(http_call, range(24))) + list(pool.map(grpc_call, range(8)))
            burst = [pool.submit(http_call, i) for i in range(16)] + [pool.submit(grpc_call, i) for i in range(8)]
            results += [f.result() for f in burst]

        codes = [c for c, _, _ in results]
        assert set(codes) <= {"200", "429", "OK", "RESOURCE_EXHAUSTED"}, codes
        refused = [(c, dt, extra) for c, dt, extra in results if c in ("429", "RESOURCE_EXHAUSTED")]
        served = [dt for c, dt, _ in results if c in ("200", "OK")]
        assert refused and served, codes
        assert all(extra for c, _, extra in refused if c == "429"), "429 without Retry-After"
        # A refusal costs a decode and a queue check, not a wait for capacity.
        assert max(dt for _, dt, _ in refused) < max(2.0, 0.5 * max(served)), refused

        text = http.get("/metrics").text
        assert metric_value(text, "saic_rejected_requests_total", reason="queue_full") == len(refused)

        # Load gone: everything is served again.
        for _ in range(3):
            assert http.post("/v1/compress", content=PNG, headers={"content-type": "image/png"}).status_code == 200
            assert stub.Compress(pb.CompressRequest(image=PNG), timeout=60).width == 128
        channel.close()


def test_inflight_cap_refuses_before_reading_bodies(registry: Any) -> None:
    """Clients that open requests and stall (bodies never sent) hold at most max_inflight_requests
    slots; the next request is refused at once, probes still answer, and slots free up again."""
    import socket

    settings = server_settings(max_inflight_requests=4)
    with ServerThread(settings, registry) as srv, httpx.Client(base_url=srv.http_url, timeout=60) as http:
        host, port = srv.http_url.removeprefix("http://").rsplit(":", 1)
        stalled = []
        for _ in range(4):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(b"POST /v1/compress HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 500000\r\n\r\n")
            stalled.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        r = http.post("/v1/compress", content=PNG, headers={"content-type": "image/png"})
        assert r.status_code == 429 and r.json()["error"]["reason"] == "queue_full", r.text
        assert time.monotonic() - t0 < 2
        assert http.get("/readyz").status_code == 200  # probes are not counted
        assert metric_value(http.get("/metrics").text, "saic_rejected_requests_total", reason="too_many_inflight") == 1

        # gRPC: streams that never finish their upload hold slots the same way
        with grpc.insecure_channel(srv.grpc_target) as ch:
            stub = pb_grpc.CodecStub(ch)
            import threading

            hold = threading.Event()

            def never_ending():  # noqa: ANN202
                yield pb.UploadChunk(data=PNG[:100])
                hold.wait(60)

            uploads = [stub.CompressUpload.future(never_ending(), timeout=60) for _ in range(4)]
            time.sleep(0.5)
            try:
                stub.ListModels(pb.ListModelsRequest(), timeout=10)
                refused = None
            except grpc.RpcError as exc:
                refused = exc.code()
            hold.set()
            for u in uploads:
                u.cancel()
        assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED

        for s in stalled:
            s.close()
        time.sleep(0.5)
        assert http.post("/v1/compress", content=PNG, headers={"content-type": "image/png"}).status_code == 200
