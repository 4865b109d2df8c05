"""The saic server process: both protocols on one event loop around one data plane.

`SaicServer` starts uvicorn (HTTP) and grpc.aio on the running loop, warms the models up and
drains gracefully.  `run()` is the blocking entry point of `saic serve` (SIGTERM/SIGINT ->
drain -> exit 0).  `ServerThread` runs a server in a background thread (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import socket
import threading
import time
from typing import Any, Coroutine, Iterator, TypeVar

import uvicorn

from saic.codec.registry import ModelRegistry

from .dataplane import DataPlane
from .grpc_server import bind, create_grpc_server, set_serving
from .http import create_app
from .metrics import Metrics
from .security import slow_client_guard
from .settings import Settings

log = logging.getLogger("saic.server")
T = TypeVar("T")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: SaicServer decides when to stop (after draining)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen_tcp(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket.  Created with proto=IPPROTO_TCP on purpose: asyncio only sets
    TCP_NODELAY on accepted sockets whose proto says TCP, and without it Nagle holds the
    response body (a second small write) until the client's delayed ACK: +40 ms per request."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def load_registry(settings: Settings) -> ModelRegistry:
    """All models under settings.model_dir with the configured runtime options."""
    return ModelRegistry(settings.model_dir, **settings.model_options())


class SaicServer:
    """HTTP + gRPC + data plane.  `await start()` returns once both listen and models are warm."""

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None):
        self.settings = settings
        self._registry = registry
        self.metrics = Metrics()
        self.dataplane: DataPlane | None = None
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._uv: _Uvicorn | None = None
        self._uv_task: asyncio.Task | None = None
        self._grpc = None
        self._health = None
        self.stopped = asyncio.Event()

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert else "http"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://{self.settings.host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.settings.host}:{self.grpc_port}"

    async def start(self) -> None:
        s = self.settings
        t0 = time.perf_counter()
        registry = self._registry or await asyncio.to_thread(load_registry, s)
        self.dataplane = DataPlane(s, registry, self.metrics)

        # HTTP: bind ourselves so port 0 works and the real port is known before serving.
        sock = listen_tcp(s.host, s.http_port)
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.dataplane, s, self.metrics),
            lifespan="off",
            log_config=None,
            access_log=False,
            ssl_certfile=str(s.tls_cert) if s.tls_cert else None,
            ssl_keyfile=str(s.tls_key) if s.tls_key else None,
            timeout_graceful_shutdown=max(1, int(s.drain_timeout_s)),
            timeout_keep_alive=30,
            http=slow_client_guard(body_timeout_s=s.request_timeout_s),  # slowloris: bounded header/body time
        )
        self._uv = _Uvicorn(config)
        self._uv_task = asyncio.ensure_future(self._uv.serve(sockets=[sock]))
        while not self._uv.started:
            if self._uv_task.done():
                self._uv_task.result()  # raises the startup error
                raise RuntimeError("HTTP server exited during startup")
            await asyncio.sleep(0.01)

        if s.enable_grpc and s.grpc_port >= 0:
            self._grpc, self._health = create_grpc_server(self.dataplane, self.metrics, s)
            self.grpc_port = bind(self._grpc, s)
            await self._grpc.start()
            await set_serving(self._health, False)

        await self.dataplane.start()  # warm-up; /readyz turns 200 after this
        if self._health is not None:
            await set_serving(self._health, True)
        grpc_part = f" and gRPC on {self.grpc_target}" if self.grpc_port else ""
        log.info(
            "saic serving HTTP on %s%s (models: %s; batching: max_batch_size=%d max_queue_delay_ms=%g; ready in %.1fs)",
            self.http_url,
            grpc_part,
            ", ".join(f"{m.id}@{m.provider}" for m in registry.models.values()),
            s.max_batch_size,
            s.max_queue_delay_ms,
            time.perf_counter() - t0,
        )

    async def shutdown(self) -> bool:
        """Graceful drain: unready, refuse new work, finish accepted requests, stop listeners."""
        if self.stopped.is_set():
            return True
        s = self.settings
        log.info("draining (up to %.1fs)", s.drain_timeout_s)
        if self._health is not None:
            await set_serving(self._health, False)
        drained = True
        if self.dataplane is not None:
            drained = await self.dataplane.drain(s.drain_timeout_s)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._uv is not None:
            self._uv.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._uv_task, s.drain_timeout_s + 5)
        if self.dataplane is not None:
            await self.dataplane.close()
        self.stopped.set()
        log.info("stopped (%s)", "drained" if drained else "drain timed out")
        return drained


async def serve_until_signal(settings: Settings) -> int:
    server = SaicServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except BaseException:
        await server.shutdown()
        raise
    await stop.wait()
    return 0 if await server.shutdown() else 1


def run(settings: Settings) -> int:
    """Blocking entry point of `saic serve`."""
    return asyncio.run(serve_until_signal(settings))


class ServerThread:
    """A real server (real sockets) on its own event loop in a daemon thread.

    with ServerThread(Settings(http_port=0, grpc_port=0)) as srv:
        httpx.get(srv.http_url + "/readyz")
    """

    def __init__(self, settings: Settings, registry: ModelRegistry | None = None, start_timeout: float = 120):
        self.server = SaicServer(settings, registry)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="saic-server", daemon=True)
        self._start_timeout = start_timeout

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await self.server.shutdown()
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.shutdown()

    def start(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise TimeoutError("server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the server's loop (e.g. `server.shutdown()`); returns its future."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return self.submit(coro).result(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # conveniences
    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def grpc_target(self) -> str:
        return self.server.grpc_target

    @property
    def metrics(self) -> Metrics:
        return self.server.metrics
