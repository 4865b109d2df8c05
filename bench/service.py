"""Service benchmark: throughput and p50/p99 latency over HTTP and gRPC on loopback at several
concurrency levels, with dynamic batching on and off, against the codec called in-process.

    python bench/service.py                       # defaults: 128x128 crops, concurrency 1,4,16
    python bench/service.py --size 256 --concurrency 1 8 32 --duration 10 --out runs/bench/service.json

Each server is a real `saic serve` subprocess (port 0) so load generator and server do not
share a GIL.  Both servers (batching on and off) run side by side and every cell alternates
between them in short slices, so a machine whose background load drifts biases neither.  Clients are closed-loop (each sends its next request when the previous one is
answered).  All ratios come from one run:
  * batching gain  = throughput(batching on) / throughput(max_batch_size=1), same protocol and concurrency,
    and the same for server CPU time per request (read from /proc: on a shared machine whose
    load drifts this is the steadier number; on a dedicated CPU-bound box throughput follows it);
  * service overhead = service latency / in-process codec latency at concurrency 1, from
    interleaved rounds (in-process, HTTP, gRPC on the same image) so background load hits all
    alike; also the paired median extra milliseconds per request.
Images: center crops of Kodak (../shared/data/kodak or $SAIC_DATA_DIR/kodak) when present,
else synthetic photo-like images (same size, so requests can share batches).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- images
def load_images(size: int, n: int) -> tuple[list[np.ndarray], str]:
    from PIL import Image

    kodak = Path(os.environ.get("SAIC_DATA_DIR", REPO / "../shared/data")) / "kodak"
    files = sorted(kodak.glob("kodim*.png")) if kodak.is_dir() else []
    if files:
        out = []
        for f in files[:n]:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB"))
            y, x = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
            out.append(np.ascontiguousarray(a[y : y + size, x : x + size]))
        return out, f"Kodak center crops {size}x{size} ({len(out)} images)"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = []
    for s in range(n):
        img = np.stack([128 + 90 * np.sin(xx / (9 + s) + s), 110 + 80 * np.cos(yy / (13 + s)), 70 + 50 * (xx + yy) / size], -1)
        out.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
    return out, f"synthetic {size}x{size} ({n} images)"


def png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ---------------------------------------------------------------------------- servers
class Served:
    """`saic serve` in a subprocess on free ports."""

    def __init__(self, model_dir: Path, extra: list[str]):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAIC_")}
        cmd = [sys.executable, "-m", "saic.cli", "serve", "--http-port", "0", "--grpc-port", "0",
               "--model-dir", str(model_dir), "--max-queue-size", "1024", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        t0 = time.monotonic()
        log = []
        while True:
            line = self.proc.stderr.readline()
            log.append(line)
            m = re.search(r"serving HTTP on (http://\S+) and gRPC on (\S+)", line)
            if m:
                self.http_url, self.grpc_target = m.group(1), m.group(2)
                break
            if self.proc.poll() is not None or time.monotonic() - t0 > 180:
                raise RuntimeError("server did not start:\n" + "".join(log))
        import threading

        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used: unaffected by how busy the machine is."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")

    def metrics(self) -> str:
        import httpx

        return httpx.get(self.http_url + "/metrics", timeout=30).text

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------------- load
async def closed_loop(call: Callable[[bytes], Awaitable[None]], bodies: list[bytes], concurrency: int,
                      duration: float, min_requests: int) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration
    counter = 0

    async def worker() -> None:
        nonlocal counter, errors
        while time.perf_counter() < stop_at or len(lat) + errors < min_requests:
            body = bodies[counter % len(bodies)]
            counter += 1
            t = time.perf_counter()
            try:
                await call(body)
                lat.append(time.perf_counter() - t)
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    a = np.array(lat) if lat else np.array([np.nan])
    return {"requests": len(lat), "errors": errors, "seconds": wall, "throughput_rps": len(lat) / wall,
            "p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3), "latencies": lat}


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Repetitions of one cell -> one result (throughput over the summed time, pooled percentiles)."""
    lat = np.array([x for p in parts for x in p["latencies"]] or [np.nan])
    n, secs = sum(p["requests"] for p in parts), sum(p["seconds"] for p in parts)
    cpu = sum(p.get("server_cpu_s", float("nan")) for p in parts)
    return {"requests": n, "errors": sum(p["errors"] for p in parts), "seconds": secs, "throughput_rps": n / secs,
            "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "repeats": len(parts), "server_cpu_ms_per_request": 1e3 * cpu / max(n, 1)}


async def run_http(url: str, bodies: list[bytes], conc: int, duration: float, min_req: int, quality: int) -> dict[str, float]:
    import httpx

    limits = httpx.Limits(max_connections=conc + 4, max_keepalive_connections=conc + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        async def call(body: bytes) -> None:
            r = await c.post("/v1/compress", params={"quality": quality}, content=body, headers={"content-type": "image/png"})
            r.raise_for_status()

        await call(bodies[0])
        return await closed_loop(call, bodies, conc, duration, min_req)


async def run_grpc(target: str, bodies: list[bytes], conc: int, duration: float, min_req: int, quality: int) -> dict[str, float]:
    import grpc

    from saic.server.proto import codec_pb2 as pb
    from saic.server.proto import codec_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.CodecStub(ch)

        async def call(body: bytes) -> None:
            await stub.Compress(pb.CompressRequest(image=body, quality=quality), timeout=300)

        await call(bodies[0])
        return await closed_loop(call, bodies, conc, duration, min_req)


def run_inprocess(model_dir: Path, bodies: list[bytes], duration: float, quality: int, batch: int,
                  repeats: int) -> dict[str, dict[str, Any]]:
    """The codec called directly (decode PNG + compress_batch), 1 image per call vs `batch` images
    per call, alternating in `repeats` slices so background load hits both alike."""
    from saic.codec.image import decode_image
    from saic.codec.registry import ModelRegistry

    m = ModelRegistry(model_dir, providers=["CPUExecutionProvider"]).get()
    m.compress_batch([decode_image(bodies[0], 1 << 26)], [quality])  # warm-up
    parts: dict[int, list[dict[str, Any]]] = {1: [], batch: []}
    i = 0
    for rep in range(repeats):
        for b in ((1, batch) if rep % 2 == 0 else (batch, 1)):
            lat, n = [], 0
            t0, c0 = time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < duration / repeats or n < 2 * batch:
                group = [bodies[(i + k) % len(bodies)] for k in range(b)]
                i += b
                t = time.perf_counter()
                m.compress_batch([decode_image(x, 1 << 26) for x in group], [quality] * b)
                lat.append(time.perf_counter() - t)
                n += b
            parts[b].append({"requests": n, "errors": 0, "seconds": time.perf_counter() - t0, "latencies": lat,
                             "server_cpu_s": time.process_time() - c0})  # this process is the "server" here
    out = {f"batch_{b}": merge(p) for b, p in parts.items()}
    for v in out.values():
        v["cpu_ms_per_image"] = v.pop("server_cpu_ms_per_request")
    return out


def paired_overhead(model_dir: Path, srv: "Served", bodies: list[bytes], rounds: int, quality: int,
                    protocols: list[str]) -> dict[str, Any]:
    """Service overhead at concurrency 1, measured in interleaved rounds (in-process, then each
    protocol, same image) so background load hits all of them alike.  Returns per-path median
    latencies and the paired median of (service - in-process)."""
    import grpc
    import httpx

    from saic.codec.image import decode_image
    from saic.codec.registry import ModelRegistry
    from saic.server.proto import codec_pb2 as pb
    from saic.server.proto import codec_pb2_grpc as pb_grpc

    m = ModelRegistry(model_dir, providers=["CPUExecutionProvider"]).get()
    http = httpx.Client(base_url=srv.http_url, timeout=300)
    channel = grpc.insecure_channel(srv.grpc_target)
    stub = pb_grpc.CodecStub(channel)
    paths: dict[str, Callable[[bytes], object]] = {
        "in_process": lambda b: m.compress_batch([decode_image(b, 1 << 26)], [quality]),
        "http": lambda b: http.post("/v1/compress", params={"quality": quality}, content=b,
                                    headers={"content-type": "image/png"}).raise_for_status(),
        "grpc": lambda b: stub.Compress(pb.CompressRequest(image=b, quality=quality), timeout=300),
    }
    use = ["in_process"] + protocols
    times: dict[str, list[float]] = {k: [] for k in use}
    for k in use:  # warm-up each path once
        paths[k](bodies[0])
    for i in range(rounds):
        for k in use:
            t = time.perf_counter()
            paths[k](bodies[i % len(bodies)])
            times[k].append(time.perf_counter() - t)
    http.close()
    channel.close()
    base = np.array(times["in_process"])
    out: dict[str, Any] = {"rounds": rounds, "in_process_p50_ms": float(np.median(base) * 1e3)}
    for k in protocols:
        t = np.array(times[k])
        out[k] = {"p50_ms": float(np.median(t) * 1e3), "overhead_p50_ms": float(np.median(t - base) * 1e3),
                  "latency_ratio": float(np.median(t) / np.median(base))}
    return out


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=REPO / "models")
    ap.add_argument("--size", type=int, default=128, help="square crop side in pixels")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--quality", type=int, default=50)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per cell and mode (split into --repeats slices)")
    ap.add_argument("--min-requests", type=int, default=16, help="per cell, even if the duration has passed")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads of the servers")
    ap.add_argument("--batch-workers", type=int, default=1, help="concurrent batches per server")
    ap.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    ap.add_argument("--overhead-rounds", type=int, default=20, help="interleaved rounds for the overhead measurement")
    ap.add_argument("--repeats", type=int, default=4, help="alternating on/off slices per cell (drift control)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    imgs, source = load_images(args.size, args.images)
    bodies = [png(a) for a in imgs]
    print(f"# saic service benchmark: {source}, quality {args.quality}, {os.cpu_count()} CPUs, loopback", flush=True)
    results: dict[str, Any] = {"images": source, "cpus": os.cpu_count(), "cells": []}

    results["load_average_start"] = os.getloadavg()
    inp = run_inprocess(args.model_dir, bodies, args.duration, args.quality, args.max_batch_size, args.repeats)
    results["in_process"] = inp
    for k, v in inp.items():
        print(f"in-process codec, {k.replace('_', ' ')}: {v['throughput_rps']:.2f} img/s, p50 {v['p50_ms']:.0f} ms/call, "
              f"CPU {v['cpu_ms_per_image']:.1f} ms/img", flush=True)

    threads = (["--threads", str(args.threads)] if args.threads else []) + ["--batch-workers", str(args.batch_workers)]
    modes = {
        "on": ["--max-batch-size", str(args.max_batch_size), "--max-queue-delay-ms", str(args.max_queue_delay_ms)],
        "off": ["--max-batch-size", "1"],
    }
    servers = {mode: Served(args.model_dir, flags + threads + ["--providers", "cpu"]) for mode, flags in modes.items()}
    try:
        results["overhead"] = paired_overhead(args.model_dir, servers["off"], bodies, args.overhead_rounds, args.quality,
                                              args.protocols)
        for proto in args.protocols:
            fn = run_http if proto == "http" else run_grpc
            for conc in args.concurrency:
                parts: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
                batches: dict[str, list[float]] = {"on": [], "off": []}
                for rep in range(args.repeats):  # on/off alternate so drifting background load hits both
                    for mode in (("on", "off") if rep % 2 == 0 else ("off", "on")):
                        srv = servers[mode]
                        target = srv.http_url if proto == "http" else srv.grpc_target
                        before, cpu0 = srv.metrics(), srv.cpu_seconds()
                        part = asyncio.run(fn(target, bodies, conc, args.duration / args.repeats,
                                              max(1, args.min_requests // args.repeats), args.quality))
                        part["server_cpu_s"] = srv.cpu_seconds() - cpu0
                        parts[mode].append(part)
                        batches[mode].append(_delta_mean_batch(before, srv.metrics()))
                for mode in ("on", "off"):
                    r = merge(parts[mode])
                    r.update(protocol=proto, batching=mode, concurrency=conc, mean_batch=float(np.nanmean(batches[mode])))
                    results["cells"].append(r)
                    print(f"{proto:4s} batching {mode:3s} c={conc:3d}: {r['throughput_rps']:6.2f} req/s  "
                          f"p50 {r['p50_ms']:7.0f} ms  p99 {r['p99_ms']:7.0f} ms  mean batch {r['mean_batch']:.2f}  "
                          f"server CPU {r['server_cpu_ms_per_request']:.1f} ms/req  errors {r['errors']}", flush=True)
    finally:
        for srv in servers.values():
            srv.close()
    results["load_average_end"] = os.getloadavg()

    print_summary(results, args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def _delta_mean_batch(before: str, after: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    def sums(text: str) -> tuple[float, float]:
        s = c = 0.0
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.labels.get("op") == "compress":
                    if smp.name == "saic_batch_size_sum":
                        s += smp.value
                    elif smp.name == "saic_batch_size_count":
                        c += smp.value
        return s, c

    (s0, c0), (s1, c1) = sums(before), sums(after)
    return (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")


def print_summary(results: dict[str, Any], args: argparse.Namespace) -> None:
    cells = {(c["protocol"], c["batching"], c["concurrency"]): c for c in results["cells"]}
    print("\n| protocol | concurrency | batching on req/s | off req/s | gain on/off | p50 on ms | p99 on ms | p50 off ms "
          "| p99 off ms | mean batch | server CPU ms/req on | off | CPU gain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict[str, float] = {}
    for proto in args.protocols:
        for conc in args.concurrency:
            on, off = cells[(proto, "on", conc)], cells[(proto, "off", conc)]
            gain = on["throughput_rps"] / off["throughput_rps"]
            cpu_gain = off["server_cpu_ms_per_request"] / on["server_cpu_ms_per_request"]
            ratios[f"batching_gain_{proto}_c{conc}"] = gain
            ratios[f"batching_cpu_gain_{proto}_c{conc}"] = cpu_gain
            print(f"| {proto} | {conc} | {on['throughput_rps']:.2f} | {off['throughput_rps']:.2f} | {gain:.2f}x | "
                  f"{on['p50_ms']:.0f} | {on['p99_ms']:.0f} | {off['p50_ms']:.0f} | {off['p99_ms']:.0f} | {on['mean_batch']:.2f} | "
                  f"{on['server_cpu_ms_per_request']:.1f} | {off['server_cpu_ms_per_request']:.1f} | {cpu_gain:.2f}x |")
    inp = results["in_process"]
    b1, bn = inp["batch_1"]["throughput_rps"], inp[f"batch_{args.max_batch_size}"]["throughput_rps"]
    ratios["in_process_batching_gain"] = bn / b1
    ratios["in_process_batching_cpu_gain"] = inp["batch_1"]["cpu_ms_per_image"] / inp[f"batch_{args.max_batch_size}"]["cpu_ms_per_image"]
    print(f"\nin-process codec (decode PNG + compress_batch): 1 image/call {b1:.2f} img/s, "
          f"{args.max_batch_size} images/call {bn:.2f} img/s (x{bn / b1:.2f}); CPU per image "
          f"{inp['batch_1']['cpu_ms_per_image']:.1f} vs {inp[f'batch_{args.max_batch_size}']['cpu_ms_per_image']:.1f} ms "
          f"(x{ratios['in_process_batching_cpu_gain']:.2f})")
    la0, la1 = results["load_average_start"][0], results["load_average_end"][0]
    print(f"1-minute load average on this {results['cpus']}-CPU machine: {la0:.1f} at start, {la1:.1f} at end")
    ov = results["overhead"]
    print(f"\nservice overhead at concurrency 1 (batching off), {ov['rounds']} interleaved rounds, "
          f"in-process p50 {ov['in_process_p50_ms']:.0f} ms:")
    cpu_in = inp["batch_1"]["cpu_ms_per_image"]
    c1 = min(args.concurrency)
    for proto in args.protocols:
        o = ov[proto]
        cpu_srv = cells[(proto, "off", c1)]["server_cpu_ms_per_request"]
        ratios[f"overhead_latency_ratio_{proto}"] = o["latency_ratio"]
        ratios[f"overhead_cpu_ratio_{proto}"] = cpu_srv / cpu_in
        print(f"  {proto}: p50 {o['p50_ms']:.0f} ms = x{o['latency_ratio']:.3f} of in-process; "
              f"paired median overhead {o['overhead_p50_ms']:+.1f} ms per request; server CPU {cpu_srv:.1f} ms/request "
              f"(c={c1}) vs in-process {cpu_in:.1f} ms/image = x{cpu_srv / cpu_in:.2f}")
    results["ratios"] = ratios


if __name__ == "__main__":
    sys.exit(main())
