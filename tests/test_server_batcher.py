"""Unit tests of the dynamic batcher with a tiny in-memory runner (no model, no sockets):
grouping, size and delay limits, isolation of bad items, backpressure, cancellation,
deadlines and drain."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Sequence

import pytest

from saic.server.batcher import Batcher, BatchKey
from saic.server.errors import DeadlineExceededError, DrainingError, QueueFullError
from saic.server.metrics import Metrics

K = BatchKey("op", "m", (64, 64))


class Runner:
    """Doubles each payload; records batches; 'bad' payloads make the whole batch raise;
    optionally blocks until released (to hold the single worker busy)."""

    def __init__(self, block: bool = False):
        self.batches: list[tuple[BatchKey, list[Any]]] = []
        self.gate = threading.Event()
        if not block:
            self.gate.set()
        self.started = threading.Event()

    def __call__(self, key: BatchKey, payloads: Sequence[Any]) -> list[Any]:
        self.started.set()
        self.gate.wait(10)
        self.batches.append((key, list(payloads)))
        if any(p == "bad" for p in payloads):
            raise ValueError("bad payload")
        return [p * 2 for p in payloads]

    def sizes(self) -> list[int]:
        return [len(p) for _, p in self.batches]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _with(batcher: Batcher, body: Any) -> Any:
    batcher.start()
    try:
        return await body
    finally:
        await batcher.close()


def test_groups_up_to_max_batch_size() -> None:
    runner = Runner()
    b = Batcher(runner, max_batch_size=4, max_queue_delay_ms=200, max_queue_size=100)

    async def body() -> list[int]:
        return await asyncio.gather(*(b.submit(K, i) for i in range(10)))

    results = run(_with(b, body()))
    assert results == [2 * i for i in range(10)]
    assert sorted(runner.sizes(), reverse=True) == [4, 4, 2]
    assert [p for _, ps in runner.batches for p in ps] == list(range(10))  # FIFO


def test_keys_are_never_mixed() -> None:
    runner = Runner()
    b = Batcher(runner, max_batch_size=8, max_queue_delay_ms=30, max_queue_size=100)
    k2 = BatchKey("op", "m", (128, 64))

    async def body() -> None:
        await asyncio.gather(*(b.submit(K if i % 2 else k2, i) for i in range(8)))

    run(_with(b, body()))
    for key, payloads in runner.batches:
        assert all((p % 2 == 1) == (key == K) for p in payloads)
    assert sorted(runner.sizes()) == [4, 4]


def test_lone_request_waits_at_most_max_queue_delay() -> None:
    runner = Runner()
    b = Batcher(runner, max_batch_size=8, max_queue_delay_ms=80, max_queue_size=10)

    async def body() -> float:
        t0 = time.monotonic()
        assert await b.submit(K, 21) == 42
        return time.monotonic() - t0

    waited = run(_with(b, body()))
    assert 0.07 <= waited < 2.0


def test_batch_size_one_dispatches_immediately() -> None:
    runner = Runner()
    b = Batcher(runner, max_batch_size=1, max_queue_delay_ms=5000, max_queue_size=10)

    async def body() -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(b.submit(K, i) for i in range(3)))
        return time.monotonic() - t0

    assert run(_with(b, body())) < 2.0
    assert runner.sizes() == [1, 1, 1]


def test_bad_item_does_not_fail_its_batch() -> None:
    runner = Runner()
    b = Batcher(runner, max_batch_size=8, max_queue_delay_ms=50, max_queue_size=10)

    async def body() -> list[Any]:
        return await asyncio.gather(*(b.submit(K, p) for p in [1, "bad", 3]), return_exceptions=True)

    r1, r2, r3 = run(_with(b, body()))
    assert (r1, r3) == (2, 6)
    assert isinstance(r2, ValueError)
    assert runner.sizes()[0] == 3  # tried together first, then one by one
    assert sorted(runner.sizes()[1:]) == [1, 1, 1]


def test_full_queue_rejects_at_once() -> None:
    runner = Runner(block=True)
    metrics = Metrics(process_metrics=False)
    b = Batcher(runner, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2, metrics=metrics)

    async def body() -> None:
        first = asyncio.ensure_future(b.submit(K, 0))
        while not runner.started.is_set():  # the worker is now busy with item 0
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(b.submit(K, i)) for i in (1, 2)]
        await asyncio.sleep(0.02)
        assert b.depth == 2
        t0 = time.monotonic()
        with pytest.raises(QueueFullError):
            await b.submit(K, 3)
        assert time.monotonic() - t0 < 0.1
        runner.gate.set()
        assert await asyncio.gather(first, *queued) == [0, 2, 4]

    run(_with(b, body()))
    assert metrics.rejected.labels("queue_full")._value.get() == 1


def test_cancelled_request_is_dropped_before_inference() -> None:
    runner = Runner(block=True)
    metrics = Metrics(process_metrics=False)
    b = Batcher(runner, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=10, metrics=metrics)

    async def body() -> None:
        first = asyncio.ensure_future(b.submit(K, 0))
        while not runner.started.is_set():
            await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(b.submit(K, 100))
        kept = asyncio.ensure_future(b.submit(K, 7))
        await asyncio.sleep(0.02)
        gone.cancel()  # the client went away while queued
        await asyncio.sleep(0.02)
        assert b.depth == 1
        runner.gate.set()
        assert await first == 0
        assert await kept == 14

    run(_with(b, body()))
    assert all(100 not in ps for _, ps in runner.batches)
    assert metrics.rejected.labels("cancelled")._value.get() == 1


def test_deadline_expires_in_queue() -> None:
    runner = Runner(block=True)
    metrics = Metrics(process_metrics=False)
    b = Batcher(runner, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=10, metrics=metrics)

    async def body() -> None:
        first = asyncio.ensure_future(b.submit(K, 0))
        while not runner.started.is_set():
            await asyncio.sleep(0.005)
        with pytest.raises(DeadlineExceededError):
            await b.submit(K, 100, timeout=0.05)
        runner.gate.set()
        assert await first == 0

    run(_with(b, body()))
    assert all(100 not in ps for _, ps in runner.batches)
    assert metrics.rejected.labels("deadline")._value.get() == 1


def test_drain_finishes_queued_work_and_refuses_new() -> None:
    runner = Runner()
    b = Batcher(runner, max_batch_size=8, max_queue_delay_ms=10_000, max_queue_size=10)

    async def body() -> None:
        pending = [asyncio.ensure_future(b.submit(K, i)) for i in range(3)]
        await asyncio.sleep(0.02)  # queued, waiting for a fuller batch (10 s delay)
        t0 = time.monotonic()
        assert await b.drain(timeout=5)
        assert time.monotonic() - t0 < 2  # drain flushes instead of waiting for the delay
        assert [p.result() for p in pending] == [0, 2, 4]
        with pytest.raises(DrainingError):
            await b.submit(K, 9)

    run(_with(b, body()))


def test_metrics_record_batches() -> None:
    runner = Runner()
    metrics = Metrics(process_metrics=False)
    b = Batcher(runner, max_batch_size=4, max_queue_delay_ms=100, max_queue_size=10, metrics=metrics)

    async def body() -> None:
        await asyncio.gather(*(b.submit(K, i) for i in range(4)))

    run(_with(b, body()))
    assert metrics.batch_size.labels("op")._sum.get() == 4
    assert metrics.queue_depth._value.get() == 0
