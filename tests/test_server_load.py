"""Behaviour under concurrent load on real servers: batching really batches, the bounded queue
pushes back (429 / RESOURCE_EXHAUSTED), requests of clients that left are dropped before
inference, and a drain finishes accepted work while refusing new work."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import grpc
import httpx
import pytest
from conftest import encode, make_photo, metric_value, server_settings

from saic.server.app import ServerThread
from saic.server.proto import codec_pb2 as pb
from saic.server.proto import codec_pb2_grpc


@pytest.fixture(scope="module")
def tight(registry) -> Iterator[ServerThread]:
    """Room for 2 queued requests, which wait up to 1 s for batch-mates: a burst overflows it
    deterministically, whatever the speed of the codec."""
    with ServerThread(server_settings(max_batch_size=8, max_queue_size=2, max_queue_delay_ms=1000, warmup=False), registry) as srv:
        yield srv


_scraper = httpx.Client(timeout=10)  # one client: building an SSL context per call costs ~0.1-0.5 s


def _metrics(url: str) -> str:
    return _scraper.get(url + "/metrics").text


def test_batching_under_concurrent_load(server, http) -> None:
    imgs = [encode(make_photo(32, 48, seed=s)) for s in range(16)]
    before = _metrics(server.http_url)

    def post(img: bytes) -> int:
        return http.post("/v1/compress", content=img, headers={"content-type": "image/png"}).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(post, imgs))
    assert codes == [200] * 16
    after = _metrics(server.http_url)
    n = metric_value(after, "saic_batch_size_count", op="compress") - metric_value(before, "saic_batch_size_count", op="compress")
    total = metric_value(after, "saic_batch_size_sum", op="compress") - metric_value(before, "saic_batch_size_sum", op="compress")
    assert total == 16
    assert total / n > 1, f"{n} batches for 16 concurrent requests: no batching"
    assert metric_value(after, "saic_queue_wait_seconds_count", op="compress") >= 16


def test_backpressure_http_and_grpc(tight) -> None:
    img = encode(make_photo(96, 96, seed=4))
    with httpx.Client(base_url=tight.http_url, timeout=60) as c, ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: c.post("/v1/compress", content=img).status_code, range(10)))
    assert set(codes) <= {200, 429}
    assert codes.count(429) >= 4 and codes.count(200) >= 2, codes

    with grpc.insecure_channel(tight.grpc_target) as ch, ThreadPoolExecutor(10) as pool:
        stub = codec_pb2_grpc.CodecStub(ch)

        def call(_: int) -> grpc.StatusCode:
            try:
                stub.Compress(pb.CompressRequest(image=img), timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        statuses = list(pool.map(call, range(10)))
    assert set(statuses) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in statuses and grpc.StatusCode.OK in statuses

    text = _metrics(tight.http_url)
    assert metric_value(text, "saic_rejected_requests_total", reason="queue_full") >= 2
    assert metric_value(text, "saic_requests_total", endpoint="compress", protocol="http", code="429") >= 1
    r = _scraper.post(tight.http_url + "/v1/compress", content=encode(make_photo(16, 16)), timeout=60)
    assert r.status_code == 200  # recovered


@pytest.fixture(scope="module")
def patient(registry) -> Iterator[ServerThread]:
    """A lone request waits up to 5 s in the queue for batch-mates: a deterministic window in
    which it is queued and not yet running."""
    with ServerThread(server_settings(max_batch_size=8, max_queue_delay_ms=5000, warmup=False), registry) as srv:
        yield srv


def test_requests_of_departed_clients_are_dropped(patient) -> None:
    small = encode(make_photo(16, 16, seed=6))
    url = patient.http_url
    before = _metrics(url)

    def queued_then(hang_up) -> None:  # noqa: ANN001
        _wait_for(lambda: metric_value(_metrics(url), "saic_queue_depth") >= 1)
        hang_up()
        _wait_for(lambda: metric_value(_metrics(url), "saic_queue_depth") == 0, timeout=4)  # well before the 5 s delay

    # HTTP: a client sends a full request and hangs up while it is queued
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(
        b"POST /v1/compress HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(small)}\r\n\r\n".encode()
        + small
    )
    queued_then(s.close)
    # gRPC: a client cancels its call while it is queued
    with grpc.insecure_channel(patient.grpc_target) as ch:
        fut = codec_pb2_grpc.CodecStub(ch).Compress.future(pb.CompressRequest(image=small), timeout=60)
        queued_then(fut.cancel)
    after = _metrics(url)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("saic_rejected_requests_total", reason="cancelled") == 2
    assert delta("saic_batch_size_count", op="compress") == 0  # neither reached the model


def test_deadlines_are_honoured(patient) -> None:
    """A request whose deadline passes while it waits is answered DEADLINE_EXCEEDED / 504 at its
    deadline (not when the batch would have run) and never reaches the model."""
    img = encode(make_photo(16, 16, seed=9))
    url = patient.http_url
    before = _metrics(url)
    with grpc.insecure_channel(patient.grpc_target) as ch:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            codec_pb2_grpc.CodecStub(ch).Compress(pb.CompressRequest(image=img), timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    r = _scraper.post(url + "/v1/compress", content=img, headers={"x-saic-timeout-ms": "300"})
    assert r.status_code == 504 and r.json()["error"]["reason"] == "deadline", r.text
    assert time.monotonic() - t0 < 3
    _wait_for(lambda: metric_value(_metrics(url), "saic_queue_depth") == 0)
    after = _metrics(url)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("saic_rejected_requests_total", reason="deadline") + delta(
        "saic_rejected_requests_total", reason="cancelled") == 2
    assert delta("saic_batch_size_count", op="compress") == 0
    assert delta("saic_requests_total", endpoint="compress", protocol="http", code="504") == 1


def test_drain_finishes_accepted_work_and_refuses_new(registry) -> None:
    srv = ServerThread(server_settings(max_batch_size=2, max_queue_delay_ms=0, drain_timeout_s=30, warmup=False), registry).start()
    try:
        # big enough that a batch of two takes a while: all four are in flight when we look
        img = encode(make_photo(512, 512, seed=7))
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(_scraper.post, srv.http_url + "/v1/compress", content=img, timeout=120) for _ in range(4)]
            # admitted by the data plane (body read, decoded), not merely connected: those must finish
            _wait_for(lambda: srv.server.dataplane._inflight >= 4)
            shutdown = srv.submit(srv.server.shutdown())  # what SIGTERM does in `saic serve`
            _wait_for(lambda: not srv.server.dataplane.accepting)
            late = _scraper.post(srv.http_url + "/v1/compress", content=img, timeout=60)
            ready = _scraper.get(srv.http_url + "/readyz", timeout=10)
            assert [p.result().status_code for p in pending] == [200] * 4
            assert shutdown.result(60) is True
        assert late.status_code == 503 and late.json()["error"]["reason"] == "draining"
        assert ready.status_code == 503
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.http_url + "/healthz", timeout=2)
    finally:
        srv.stop()


def _wait_for(cond, timeout: float = 20.0) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
