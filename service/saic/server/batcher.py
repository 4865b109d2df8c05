"""Dynamic batcher shared by HTTP and gRPC (Triton's vocabulary).

Requests are queued per `BatchKey` (op, model, shape bucket).  A key's batch is dispatched
when it holds `max_batch_size` requests, or when its oldest request has waited
`max_queue_delay_ms`, whichever comes first; the oldest ready key goes first.  Batches run in
worker threads (`workers` at a time) so ONNX Runtime never blocks the event loop.

Guarantees:
* bounded memory: at most `max_queue_size` queued requests; more are rejected at once
  (`QueueFullError` -> HTTP 429 / RESOURCE_EXHAUSTED);
* a request whose caller went away (task cancelled) or whose deadline passed while queued is
  dropped before inference;
* one bad request never fails its batch-mates: a failing batch is retried item by item;
* `drain()` stops intake, flushes the queue without waiting for delays, and waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

from .errors import DeadlineExceededError, DrainingError, QueueFullError
from .metrics import Metrics

log = logging.getLogger("saic.server.batcher")


@dataclass(frozen=True)
class BatchKey:
    """Requests with equal keys may share one batch."""

    op: str  # e.g. "compress", "decompress"
    model: str
    bucket: Hashable = None  # e.g. padded (height, width)


# Runs in a worker thread: payloads -> one result (or an Exception instance) per payload.
RunBatch = Callable[[BatchKey, Sequence[Any]], Sequence[Any]]

_QUEUED, _RUNNING, _DROPPED = 0, 1, 2


class _Item:
    __slots__ = ("payload", "future", "enqueued", "deadline", "state", "expired")

    def __init__(self, payload: Any, future: asyncio.Future, enqueued: float, deadline: float | None):
        self.payload = payload
        self.future = future
        self.enqueued = enqueued
        self.deadline = deadline
        self.state = _QUEUED
        self.expired = False


class Batcher:
    """Groups concurrent requests into batches; see the module docstring."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 5.0,
        max_queue_size: int = 64,
        workers: int = 1,
        metrics: Metrics | None = None,
        unbatched_ops: frozenset[str] = frozenset(),
    ):
        if max_batch_size < 1 or max_queue_size < 1 or workers < 1:
            raise ValueError("max_batch_size, max_queue_size and workers must be >= 1")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.workers = workers
        self.metrics = metrics
        self.unbatched_ops = unbatched_ops
        self._queues: dict[BatchKey, deque[_Item]] = {}
        self._depth = 0
        self._running_batches = 0
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="saic-batch")
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots = asyncio.Semaphore(workers)
        self._draining = False  # refuse new submissions
        self._flush = False  # dispatch without waiting for max_queue_delay
        self._closed = False
        self._task: asyncio.Task | None = None
        self._batch_tasks: set[asyncio.Task] = set()
        self.batches_run = 0

    # ------------------------------------------------------------------ public
    @property
    def depth(self) -> int:
        """Requests queued and not yet dispatched."""
        return self._depth

    @property
    def accepting(self) -> bool:
        return not (self._draining or self._closed)

    def start(self) -> None:
        """Start the scheduler on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._schedule(), name="saic-batcher")

    async def submit(self, key: BatchKey, payload: Any, timeout: float | None = None) -> Any:
        """Queue one request and wait for its result (raises its error).

        `timeout` (seconds) is the request's remaining deadline: past it, the request is
        dropped if still queued and `DeadlineExceededError` is raised either way."""
        if not self.accepting:
            self._reject("draining")
            raise DrainingError("server is shutting down")
        if self._depth >= self.max_queue_size:
            self._reject("queue_full")
            raise QueueFullError(f"queue full ({self.max_queue_size} requests waiting); retry later")
        if timeout is not None and timeout <= 0:
            self._reject("deadline")
            raise DeadlineExceededError("deadline already passed")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        item = _Item(payload, loop.create_future(), now, None if timeout is None else now + timeout)
        item.future.add_done_callback(lambda _f, it=item: self._on_done(it))
        self._queues.setdefault(key, deque()).append(item)
        self._set_depth(self._depth + 1)
        self._idle.clear()
        self._wakeup.set()
        try:
            # Cancelling the caller (client gone) cancels item.future, which drops it from the queue.
            return await asyncio.wait_for(item.future, timeout)
        except asyncio.TimeoutError:
            item.expired = True  # wait_for cancelled the future; _on_done ran before we got here
            raise DeadlineExceededError(f"deadline of {timeout:.3f}s exceeded") from None

    def flush(self) -> None:
        """From now on dispatch queued requests at once instead of waiting for fuller batches."""
        self._flush = True
        self._wakeup.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Refuse new requests, run everything queued, wait until idle.  True if it finished in time."""
        self._draining = self._flush = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        """Stop the scheduler (after `drain` for a graceful stop); pending requests are cancelled."""
        self._draining = self._flush = self._closed = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        for q in self._queues.values():
            for it in q:
                if not it.future.done():
                    it.future.cancel()
        self._queues.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _reject(self, reason: str) -> None:
        if self.metrics:
            self.metrics.rejected.labels(reason).inc()

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        if self.metrics:
            self.metrics.queue_depth.set(depth)

    def _update_idle(self) -> None:
        if self._depth == 0 and self._running_batches == 0:
            self._idle.set()

    def _on_done(self, item: _Item) -> None:
        """Future finished: if it never left the queue (cancelled/expired), release its slot."""
        if item.state == _QUEUED:
            item.state = _DROPPED
            self._set_depth(self._depth - 1)
            # wait_for sets `expired` just after this callback; tell the two cases apart by the clock
            expired = item.deadline is not None and time.monotonic() >= item.deadline
            self._reject("deadline" if expired else "cancelled")
            self._update_idle()
            self._wakeup.set()

    def _batch_limit(self, key: BatchKey) -> int:
        return 1 if key.op in self.unbatched_ops else self.max_batch_size

    def _pick(self, now: float) -> tuple[BatchKey | None, float | None]:
        """The ready key with the oldest head, else None and when the next one becomes ready."""
        best: BatchKey | None = None
        best_t = 0.0
        next_ready: float | None = None
        for key, q in list(self._queues.items()):
            while q and q[0].state != _QUEUED:
                q.popleft()
            if not q:
                del self._queues[key]
                continue
            head = q[0]
            limit = self._batch_limit(key)
            live = sum(1 for it in q if it.state == _QUEUED) if len(q) >= limit else len(q)
            ready_at = head.enqueued + self.max_queue_delay
            if live >= limit or now >= ready_at or self._flush or limit == 1:
                if best is None or head.enqueued < best_t:
                    best, best_t = key, head.enqueued
            elif next_ready is None or ready_at < next_ready:
                next_ready = ready_at
        return best, next_ready

    async def _schedule(self) -> None:
        while True:
            await self._slots.acquire()
            while True:
                key, next_ready = self._pick(time.monotonic())
                if key is not None or (self._closed and not self._queues):
                    break
                self._wakeup.clear()
                timeout = None if next_ready is None else max(0.0, next_ready - time.monotonic())
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
            if key is None:
                self._slots.release()
                return
            q = self._queues[key]
            items: list[_Item] = []
            limit = self._batch_limit(key)
            while q and len(items) < limit:
                it = q.popleft()
                if it.state == _QUEUED:
                    it.state = _RUNNING
                    items.append(it)
            self._set_depth(self._depth - len(items))
            self._running_batches += 1
            task = asyncio.get_running_loop().create_task(self._execute(key, items))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    async def _execute(self, key: BatchKey, items: list[_Item]) -> None:
        try:
            now = time.monotonic()
            if self.metrics:
                for it in items:
                    self.metrics.queue_wait.labels(key.op).observe(now - it.enqueued)
                self.metrics.batch_size.labels(key.op).observe(len(items))
            self.batches_run += 1
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self._run_isolated, key, [it.payload for it in items])
            for it, res in zip(items, results):
                if it.future.done():
                    continue  # caller gone or timed out meanwhile
                if isinstance(res, BaseException):
                    it.future.set_exception(res)
                else:
                    it.future.set_result(res)
        except BaseException as exc:  # executor shut down, or a bug: fail the items, never hang them
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc if isinstance(exc, Exception) else DrainingError("stopped"))
            if not isinstance(exc, Exception):
                raise
            log.exception("batch %s failed outside the runner", key)
        finally:
            self._running_batches -= 1
            self._slots.release()
            self._update_idle()

    def _run_isolated(self, key: BatchKey, payloads: list[Any]) -> list[Any]:
        """Run a batch; if it fails, run its items one by one so only the bad ones fail."""
        try:
            out = list(self._run_batch(key, payloads))
            if len(out) != len(payloads):
                raise RuntimeError(f"runner returned {len(out)} results for {len(payloads)} payloads")
            return out
        except Exception as exc:
            if len(payloads) == 1:
                return [exc]
        results: list[Any] = []
        for p in payloads:
            try:
                results.append(self._run_batch(key, [p])[0])
            except Exception as exc:  # noqa: PERF203 - isolation is the point
                results.append(exc)
        return results
