"""Load, soak and overload benchmark for a saic server: HTTP and gRPC clients at once, on loopback.

    python bench/load.py --seconds 60                       # starts its own `saic serve` subprocess
    python bench/load.py --url http://h:8080 --grpc h:50051 # an already running server (no memory figures)

Phases (closed-loop clients: each sends its next request when the previous one is answered):
  warm-up  a few seconds at the soak load, not measured (ORT arenas, caches, JIT of the first runs)
  soak     --http-clients + --grpc-clients for --seconds, mixing compress and decompress
  overload --overload-clients (split over both protocols) for --overload-seconds: beyond capacity,
           so the bounded queue must answer 429 / RESOURCE_EXHAUSTED quickly (no timeouts)
  recover  one client per protocol for --recover-seconds: everything must be served again

Prints one markdown table (requests, ok, refused, errors, req/s, p50/p99 latency per phase and
protocol) and the server's resident memory after warm-up, after the soak and at the end.
Exit status 1 if the soak or recovery saw an error, or the server's memory grew more than
--max-growth-mb over the second half of the soak (the first half may still be warming up).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
READY = re.compile(r"saic serving HTTP on (?P<url>http://\S+) and gRPC on (?P<grpc>\S+)")
SIZES = [(64, 64), (96, 128), (128, 128), (128, 192)]
REFUSED = {"429", "RESOURCE_EXHAUSTED"}
OK = {"200", "OK"}


def photo(h: int, w: int, seed: int) -> bytes:
    """A photo-like PNG (gradients, a disc, noise): real work for the codec, no data files needed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([120 + 100 * np.sin(xx / (w / 3) + seed), 90 + 80 * np.cos(yy / (h / 2.5)), 60 + 60 * (xx + yy) / (h + w)], -1)
    img[(yy - h * 0.55) ** 2 + (xx - w * 0.4) ** 2 < (min(h, w) * 0.25) ** 2] = [200, 60, 50]
    img = np.clip(np.rint(img + rng.normal(0, 4, img.shape)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Sample:
    phase: str
    protocol: str
    op: str
    code: str
    seconds: float


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    phase: str = "warm-up"


# ---------------------------------------------------------------------------- server process
class Server:
    def __init__(self, args: argparse.Namespace):
        cmd = [
            sys.executable, "-m", "saic.cli", "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
            "--providers", "cpu", "--max-queue-size", str(args.max_queue_size), "--max-batch-size", str(args.max_batch_size),
            "--request-timeout-s", "30", "--log-level", "INFO",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAIC_")}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = self.grpc = ""
        deadline = time.monotonic() + 180
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = READY.search(line)
            if m:
                self.url, self.grpc = m["url"], m["grpc"]
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.proc.kill()
            raise SystemExit("server did not start")
        self.log: list[str] = []  # keep reading its output so it never blocks on a full pipe
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()  # type: ignore[arg-type]

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


# ---------------------------------------------------------------------------- clients
async def http_client(run: Run, client: httpx.AsyncClient, work: list[tuple[str, bytes]], stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    # one shared client for all HTTP clients (a connection each): creating 100 clients would block the loop
    while not stop.is_set():
        op, data = rng.choice(work)
        path, ctype = ("/v1/compress", "image/png") if op == "compress" else ("/v1/decompress", "application/octet-stream")
        phase, t0 = run.phase, time.perf_counter()
        try:
            r = await client.post(path, content=data, headers={"content-type": ctype})
            code = str(r.status_code)
        except httpx.TimeoutException:
            code = "timeout"
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        run.samples.append(Sample(phase, "http", op, code, time.perf_counter() - t0))
        if code in REFUSED:
            await asyncio.sleep(0.05)  # a well-behaved client backs off a little (Retry-After says 1 s)


async def grpc_client(run: Run, target: str, work: list[tuple[str, bytes]], stop: asyncio.Event, seed: int) -> None:
    from saic.server.proto import codec_pb2 as pb
    from saic.server.proto import codec_pb2_grpc as pb_grpc

    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.CodecStub(channel)
        while not stop.is_set():
            op, data = rng.choice(work)
            phase, t0 = run.phase, time.perf_counter()
            try:
                if op == "compress":
                    await stub.Compress(pb.CompressRequest(image=data), timeout=30)
                else:
                    await stub.Decompress(pb.DecompressRequest(bitstream=data), timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = "timeout" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else exc.code().name
            run.samples.append(Sample(phase, "grpc", op, code, time.perf_counter() - t0))
            if code in REFUSED:
                await asyncio.sleep(0.05)


async def phase(run: Run, name: str, seconds: float, n_http: int, n_grpc: int, url: str, target: str, work: list[tuple[str, bytes]]) -> None:
    """Clients are set up before the clock starts (an httpx client costs an SSL context: ~0.1 s of CPU)."""
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=max(1, n_http), max_keepalive_connections=max(1, n_http))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        run.phase = name
        tasks = [asyncio.ensure_future(http_client(run, client, work, stop, i)) for i in range(n_http)]
        tasks += [asyncio.ensure_future(grpc_client(run, target, work, stop, 1000 + i)) for i in range(n_grpc)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)


# ---------------------------------------------------------------------------- report
def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1000 if xs else float("nan")


def table(run: Run, durations: dict[str, float]) -> str:
    rows = [
        "| phase | protocol | requests | ok | refused (429 / RESOURCE_EXHAUSTED) | errors | ok req/s | p50 ms (ok) | p99 ms (ok) | p50 ms (refused) | p99 ms (refused) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ph in ("soak", "overload", "recover"):
        for proto in ("http", "grpc", "both"):
            s = [x for x in run.samples if x.phase == ph and (proto == "both" or x.protocol == proto)]
            if not s:
                continue
            ok = [x.seconds for x in s if x.code in OK]
            refused = [x.seconds for x in s if x.code in REFUSED]
            errors = len(s) - len(ok) - len(refused)
            rows.append(
                f"| {ph} | {proto} | {len(s)} | {len(ok)} | {len(refused)} | {errors} | {len(ok) / durations[ph]:.1f} | "
                f"{pct(ok, 50):.0f} | {pct(ok, 99):.0f} | {pct(refused, 50):.0f} | {pct(refused, 99):.0f} |"
            )
    return "\n".join(rows)


def error_kinds(run: Run) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in run.samples:
        if x.phase != "warm-up" and x.code not in OK | REFUSED:
            out[f"{x.phase}/{x.protocol}/{x.code}"] = out.get(f"{x.phase}/{x.protocol}/{x.code}", 0) + 1
    return out


async def main_async(args: argparse.Namespace) -> int:
    server = None if args.url else Server(args)
    url = args.url or server.url  # type: ignore[union-attr]
    target = args.grpc or server.grpc  # type: ignore[union-attr]
    images = [photo(h, w, i) for i, (h, w) in enumerate(SIZES)]
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        streams = [(await c.post("/v1/compress", content=im, headers={"content-type": "image/png"})).content for im in images]
    work = [("compress", im) for im in images] + [("decompress", s) for s in streams]

    run = Run()
    rss: dict[str, float] = {}
    durations = {"soak": args.seconds, "overload": args.overload_seconds, "recover": args.recover_seconds}
    await phase(run, "warm-up", args.warmup_seconds, args.http_clients, args.grpc_clients, url, target, work)
    if server:
        rss["after warm-up"] = server.rss_mb()
    trace: list[float] = []

    async def sample_memory() -> None:
        while server:
            trace.append(server.rss_mb())
            await asyncio.sleep(1)

    sampler = asyncio.ensure_future(sample_memory())
    t0 = time.perf_counter()
    await phase(run, "soak", args.seconds, args.http_clients, args.grpc_clients, url, target, work)
    durations["soak"] = time.perf_counter() - t0
    sampler.cancel()  # the soak's memory trace ends here
    if server:
        rss["after soak"] = server.rss_mb()
    half = args.overload_clients // 2
    t0 = time.perf_counter()
    await phase(run, "overload", args.overload_seconds, half, args.overload_clients - half, url, target, work)
    durations["overload"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    await phase(run, "recover", args.recover_seconds, 1, 1, url, target, work)
    durations["recover"] = time.perf_counter() - t0
    if server:
        rss["end"] = server.rss_mb()
        rc = server.stop()
        print(f"server exit status after SIGTERM: {rc}")

    print(f"\nsaic load/soak: {args.http_clients} HTTP + {args.grpc_clients} gRPC clients for {durations['soak']:.0f} s, "
          f"then {args.overload_clients} clients for {durations['overload']:.0f} s (max_queue_size {args.max_queue_size}, "
          f"max_batch_size {args.max_batch_size}), then 1+1 for {durations['recover']:.0f} s; images {SIZES}, compress and decompress\n")  # fmt: skip
    print(table(run, durations))
    growth = 0.0
    if rss:
        # The first half of the soak may still warm up (ORT arenas grow to the largest batch x shape
        # seen); a leak shows as growth in the second half.
        mid = trace[len(trace) // 2] if trace else rss["after warm-up"]
        growth = rss["after soak"] - mid
        second = trace[len(trace) // 2 :]
        slope = np.polyfit(np.arange(len(second)), second, 1)[0] * 60 if len(second) > 2 else float("nan")
        lo, hi = (min(second), max(second)) if second else (float("nan"), float("nan"))
        rows = {"after warm-up": rss["after warm-up"], "soak midpoint": mid, "after soak": rss["after soak"],
                "after overload + recovery": rss["end"]}  # fmt: skip
        print("\n| server RSS | MiB |\n|---|---:|")
        for k, v in rows.items():
            print(f"| {k} | {v:.0f} |")
        print(f"| growth over the soak's second half | {growth:+.1f} |")
        print(f"| min / max over the soak's second half (1 s samples) | {lo:.0f} / {hi:.0f} |")
        print(f"| trend over the soak's second half (linear fit) | {slope:+.1f} MiB/min |")
    kinds = error_kinds(run)
    print(f"\nerrors by kind: {kinds or 'none'}")
    bad = any(k.startswith(("soak/", "recover/")) for k in kinds) or growth > args.max_growth_mb
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="HTTP base URL of a running server (default: start one)")
    p.add_argument("--grpc", help="gRPC target of a running server")
    p.add_argument("--seconds", type=float, default=60, help="soak duration (default %(default)s)")
    p.add_argument("--warmup-seconds", type=float, default=8)
    p.add_argument("--http-clients", type=int, default=3)
    p.add_argument("--grpc-clients", type=int, default=3)
    p.add_argument("--overload-seconds", type=float, default=15)
    p.add_argument("--overload-clients", type=int, default=96)
    p.add_argument("--recover-seconds", type=float, default=10)
    p.add_argument("--max-queue-size", type=int, default=16, help="for the server this script starts")
    p.add_argument("--max-batch-size", type=int, default=8, help="for the server this script starts")
    p.add_argument("--max-growth-mb", type=float, default=25, help="fail if RSS grows more over the soak's 2nd half")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
