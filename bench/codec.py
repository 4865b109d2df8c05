#!/usr/bin/env python
"""CPU codec benchmark: saic vs Pillow AVIF and WebP at matched bpp.

For a Kodak-size image (kodim01, 768×512) and a 4K image (3840×2160, tiled from the
landscape Kodak images), measures encode and decode throughput in megapixels/s, both per
wall-clock second and per CPU-second (the process's CPU time: on a shared, loaded machine
the wall clock mostly measures the neighbours, CPU time what the codec itself costs),
saic's per-stage times, the achieved GFLOP/s of its transforms against this core's
measured float32 GEMM rate, and peak memory.  Every (codec, op, size) case runs in a fresh
subprocess pinned to --threads CPUs, so its peak RSS (VmHWM) is that case's own; --rounds
repeats the whole sequence in alternating codec order so drifting background load hits
every codec alike, and ratios are taken between medians from the same run.  AVIF and WebP
qualities are chosen (by bisection on the Kodak-size image) to match saic's bpp at
--quality.  --before DIR adds "saic-before": the same cases run against another source
tree (e.g. `git archive <commit> service | tar -x -C DIR`), for before/after in one run;
--before-model DIR runs saic-before on another model (alone: two models, this tree).

    python bench/codec.py                 # kodak + 4k
    python bench/codec.py --quick         # kodak only, 1 round, 1 rep
    python bench/codec.py --json out.json # also write all numbers

Without ../shared/data (or $SAIC_DATA_DIR) a synthetic natural-ish image is used instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("analysis", "hyper_analysis", "entropy_params", "entropy_encode", "entropy_decode", "synthesis")
SIZES = {"kodak": (512, 768), "4k": (2160, 3840)}
SAIC = ("saic", "saic-before")


# --------------------------------------------------------------------------- images


def data_dir() -> Path:
    env = os.environ.get("SAIC_DATA_DIR")
    return Path(env) if env else REPO / "../shared/data"


def bench_image(size: str) -> tuple[np.ndarray, str]:
    """(HxWx3 uint8, description) for a size name."""
    from PIL import Image

    from saic.eval.rd import synthetic_image

    h, w = SIZES[size]
    kodak = data_dir() / "kodak"
    if not (kodak / "kodim01.png").is_file():
        return synthetic_image(h, w, seed=7), f"synthetic {w}x{h}"
    if size == "kodak":
        return np.asarray(Image.open(kodak / "kodim01.png").convert("RGB")), "kodim01 768x512"
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(kodak.glob("kodim*.png"))]
    tiles = [t for t in tiles if t.shape[:2] == (512, 768)]
    rows, cols = -(-h // 512), -(-w // 768)
    grid = [np.concatenate([tiles[(r * cols + c) % len(tiles)] for c in range(cols)], axis=1) for r in range(rows)]
    return np.ascontiguousarray(np.concatenate(grid, axis=0)[:h, :w]), f"{w}x{h} tiled from {len(tiles)} Kodak images"


# --------------------------------------------------------------------------- codecs


def _pillow_encoder(codec: str, quality: int, threads: int):
    from saic.eval.baselines import avif_encoder, encode_webp

    if codec == "avif":
        enc = avif_encoder(max_threads=threads)
        return lambda rgb: enc(rgb, quality)
    return lambda rgb: encode_webp(rgb, quality)


def match_quality(codec: str, rgb: np.ndarray, target_bpp: float, threads: int) -> tuple[int, float]:
    """Integer quality whose bpp on `rgb` is closest to target (bisection; bpp rises with q)."""
    pixels = rgb.shape[0] * rgb.shape[1]
    cache: dict[int, float] = {}

    def bpp(q: int) -> float:
        if q not in cache:
            cache[q] = 8 * len(_pillow_encoder(codec, q, threads)(rgb)) / pixels
        return cache[q]

    lo, hi = 0, 100
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bpp(mid) < target_bpp:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda q: abs(bpp(q) - target_bpp))
    return best, bpp(best)


# --------------------------------------------------------------------------- worker (one case per process)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so the peak is the operation's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _record_cpu_per_stage(model_module: Any) -> None:
    """Make the codec's stage timer also record CPU seconds (as "cpu:<stage>"): bench only."""

    @contextmanager
    def timed(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if timings is not None:
                timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - w
                timings["cpu:" + stage] = timings.get("cpu:" + stage, 0.0) + time.process_time() - c

    model_module._timed = timed


def _saic_model(spec: dict[str, Any]) -> Any:
    from saic.codec import model as model_module

    _record_cpu_per_stage(model_module)
    wanted = {"threads": int(spec["threads"]), "tile": spec.get("tile"), "spinning": spec.get("spinning")}
    accepted = inspect.signature(model_module.CodecModel).parameters  # an older tree may lack some
    kwargs = {k: v for k, v in wanted.items() if v is not None and k in accepted}
    return model_module.CodecModel(spec["model"], providers=["CPUExecutionProvider"], **kwargs)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    threads = int(spec["threads"])
    rgb, _ = bench_image(spec["size"])
    src = Path(spec["data"]) if spec.get("data") else None
    codec, op, reps = spec["codec"], spec["op"], int(spec["reps"])
    if codec in SAIC:
        model = _saic_model(spec)
        if op == "encode":
            def run(t: dict[str, float]) -> bytes:
                return model.compress_batch([rgb], [int(spec["quality"])], timings=t)[0]
        else:
            data = src.read_bytes()

            def run(t: dict[str, float]) -> Any:
                return model.decompress_batch([data], timings=t)[0]
    else:
        from PIL import AvifImagePlugin

        from saic.eval.baselines import decode_pillow

        AvifImagePlugin.DEFAULT_MAX_THREADS = threads  # dav1d decoder threads
        if op == "encode":
            enc = _pillow_encoder(codec, int(spec["quality"]), threads)

            def run(t: dict[str, float]) -> bytes:
                return enc(rgb)
        else:
            data = src.read_bytes()

            def run(t: dict[str, float]) -> Any:
                return decode_pillow(data)

    base_rss = _status_kb("VmRSS")
    exact_peak = _reset_peak()
    out = run({})  # warm-up (ORT allocations, caches)
    seconds, cpu, stage_runs = [], [], []
    for _ in range(max(reps, 1)):
        t: dict[str, float] = {}
        t0, c0 = time.perf_counter(), time.process_time()
        out = run(t)
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        stage_runs.append(t)
    peak = _status_kb("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict[str, Any] = {
        "seconds_all": seconds,
        "cpu_seconds_all": cpu,
        "stage_runs": [r for r in stage_runs if r],
        "megapixels": rgb.shape[0] * rgb.shape[1] / 1e6,
        "peak_rss_mb": (peak or 0) / 1024,
        "setup_rss_mb": (base_rss or 0) / 1024,
        "peak_is_op_only": exact_peak,
    }
    if op == "encode":
        Path(spec["out"]).write_bytes(out)
        result["bytes"] = len(out)
        result["bpp"] = 8 * len(out) / (rgb.shape[0] * rgb.shape[1])
    return result


def run_case(spec: dict[str, Any], nice: int) -> dict[str, Any]:
    """Run one case in a fresh interpreter pinned to `threads` CPUs; parse its JSON line."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    if spec.get("pythonpath"):
        env["PYTHONPATH"] = spec["pythonpath"] + os.pathsep + env.get("PYTHONPATH", "")
    cpus = sorted(os.sched_getaffinity(0))[: int(spec["threads"])] if hasattr(os, "sched_getaffinity") else None

    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if nice:
            os.nice(nice)

    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, preexec_fn=setup)
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec['codec']} {spec['op']} {spec['size']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one case -> medians over every timed repetition, the largest peak RSS."""
    out = dict(runs[0])
    out["seconds_all"] = [s for r in runs for s in r["seconds_all"]]
    out["cpu_seconds_all"] = [s for r in runs for s in r["cpu_seconds_all"]]
    out["seconds"] = statistics.median(out["seconds_all"])
    out["cpu_seconds"] = statistics.median(out["cpu_seconds_all"])
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    stage_runs = [t for r in runs for t in r["stage_runs"]]
    if stage_runs:
        out["stages"] = {k: statistics.median(t.get(k, 0.0) for t in stage_runs) for k in stage_runs[0]}
    out.pop("stage_runs")
    return out


# --------------------------------------------------------------------------- driver


def default_model() -> Path:
    d = REPO / "models"
    name = (d / "DEFAULT").read_text().strip() if (d / "DEFAULT").is_file() else ""
    if not name:
        raise SystemExit("no --model given and models/DEFAULT is missing")
    return d / name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model directory (default: models/$(cat models/DEFAULT))")
    ap.add_argument("--quality", type=int, default=50, help="saic quality; AVIF/WebP are matched to its bpp")
    ap.add_argument("--sizes", default="kodak,4k", help="comma list of kodak,4k")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per case and round (median reported)")
    ap.add_argument("--reps-4k", type=int, default=1, help="timed repetitions of the 4k cases")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all cases, alternating codec order")
    ap.add_argument("--threads", type=int, default=1, help="CPUs (and codec threads) per case")
    ap.add_argument("--codecs", default="saic,avif,webp")
    ap.add_argument("--before", type=Path, help="source tree of an older saic (DIR/service/saic) to add as saic-before")
    ap.add_argument("--before-model", type=Path, help="model directory for saic-before (default: --model); "
                    "alone, it compares two models under this tree")
    ap.add_argument("--tile", type=int, help="saic tile side (default: the codec's)")
    ap.add_argument("--spinning", action="store_true", help="let saic's ORT threads spin")
    ap.add_argument("--nice", type=int, default=5, help="niceness of the case processes (a shared machine)")
    ap.add_argument("--quick", action="store_true", help="kodak size only, 1 round, 1 rep")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.sizes, args.reps, args.rounds = "kodak", 1, 1
    sizes = [s for s in args.sizes.split(",") if s]
    codecs = [c for c in args.codecs.split(",") if c]
    if args.before or args.before_model:
        codecs.insert(codecs.index("saic") + 1 if "saic" in codecs else 0, "saic-before")
    model = (args.model or default_model()).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="saic-bench-"))
    common = {"threads": args.threads, "model": str(model), "tile": args.tile, "spinning": args.spinning or None}
    load = os.getloadavg()
    results: dict[str, Any] = {"threads": args.threads, "reps": args.reps, "reps_4k": args.reps_4k,
                               "rounds": args.rounds, "model": str(model),
                               "cpus": os.cpu_count(), "load_average_start": load, "sizes": {}}
    print(f"# {os.cpu_count()} CPUs, load average {load[0]:.1f} at start; cases niced +{args.nice}", file=sys.stderr)

    # saic's bpp at --quality on the Kodak-size image sets the baselines' qualities
    kodak_rgb, _ = bench_image("kodak")
    qualities = {c: args.quality for c in codecs if c in SAIC}
    if any(c in SAIC for c in codecs):
        from saic.codec import load_model

        target = 8 * len(load_model(model, threads=args.threads).compress_batch([kodak_rgb], [args.quality])[0])
        target /= kodak_rgb.shape[0] * kodak_rgb.shape[1]
        for c in codecs:
            if c not in SAIC:
                qualities[c], _ = match_quality(c, kodak_rgb, target, args.threads)
    else:
        qualities.update({c: 50 for c in codecs})
    results["qualities"] = qualities

    # the machine's own compute reference (same load as the cases) and the transforms' FLOPs
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flops import cpu_sgemm_peak_gflops, transform_flops

    results["cpu_sgemm_gflops"] = cpu_sgemm_peak_gflops()
    for size in sizes:
        _, desc = bench_image(size)
        ph, pw = (-(-n // 64) * 64 for n in SIZES[size])
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {"encode": [], "decode": []} for c in codecs}
        reps = args.reps_4k if size == "4k" else args.reps
        for rnd in range(args.rounds):
            for c in (codecs if rnd % 2 == 0 else codecs[::-1]):
                enc_out = tmp / f"{c}-{size}.bin"
                spec = {**common, "codec": c, "size": size, "quality": qualities[c], "out": str(enc_out), "reps": reps}
                if c == "saic-before" and args.before:
                    spec["pythonpath"] = str(args.before.resolve() / "service")
                if c == "saic-before" and args.before_model:
                    spec["model"] = str(args.before_model.resolve())
                runs[c]["encode"].append(run_case({**spec, "op": "encode"}, args.nice))
                runs[c]["decode"].append(run_case({**spec, "op": "decode", "data": str(enc_out)}, args.nice))
                e, d = runs[c]["encode"][-1], runs[c]["decode"][-1]
                print(f"  round {rnd} {size:5s} {c:11s} q={qualities[c]:3d} bpp={e['bpp']:.3f} "
                      f"enc {e['megapixels'] / statistics.median(e['seconds_all']):.3f} MP/s "
                      f"dec {d['megapixels'] / statistics.median(d['seconds_all']):.3f} MP/s", file=sys.stderr)
        per = {c: {op: merge(r) for op, r in ops.items()} for c, ops in runs.items()}
        flops = {c: transform_flops(args.before_model.resolve() if c == "saic-before" and args.before_model else model, ph, pw)
                 for c in codecs if c in SAIC}
        results["sizes"][size] = {"image": desc, "codecs": per, "flops": flops}
    results["load_average_end"] = os.getloadavg()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _mps(r: dict[str, Any], key: str) -> float:
    return r["megapixels"] / r[key] if r[key] > 0 else float("inf")


def report(results: dict[str, Any]) -> str:
    la0, la1 = results["load_average_start"][0], results["load_average_end"][0]
    lines = [f"{results['cpus']} CPUs, load average {la0:.1f} -> {la1:.1f}; threads per case: {results['threads']}; "
             f"median of {results['reps']} reps (4k: {results.get('reps_4k', results['reps'])}) x {results['rounds']} "
             f"rounds; qualities {results['qualities']} (matched on the Kodak-size image)",
             f"single-core float32 GEMM on this machine: {results['cpu_sgemm_gflops']:.1f} GFLOP/s per CPU-second"]
    for size, block in results["sizes"].items():
        per = block["codecs"]
        lines += ["", f"## {size}: {block['image']}", "",
                  "MP/s = megapixels per wall second; MP/CPU-s = per second of the process's CPU time "
                  "(what one uncontended core would give).  saic/x: saic's throughput over x's (>1: saic faster).", "",
                  "| codec | bpp | enc MP/s | dec MP/s | enc MP/CPU-s | dec MP/CPU-s | enc peak RSS MB | dec peak RSS MB "
                  "| saic/x enc | saic/x dec | saic/x enc (CPU) | saic/x dec (CPU) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c, r in per.items():
            e, d = r["encode"], r["decode"]
            row = [c, f"{e['bpp']:.3f}", f"{_mps(e, 'seconds'):.3f}", f"{_mps(d, 'seconds'):.3f}",
                   f"{_mps(e, 'cpu_seconds'):.3f}", f"{_mps(d, 'cpu_seconds'):.3f}",
                   f"{e['peak_rss_mb']:.0f}", f"{d['peak_rss_mb']:.0f}"]
            if "saic" in per:
                s = per["saic"]
                row += [f"{_mps(s[op], k) / _mps(r[op], k):.2f}" for k in ("seconds", "cpu_seconds")
                        for op in ("encode", "decode")]
            else:
                row += ["–"] * 4
            lines.append("| " + " | ".join(row) + " |")
        for c in (x for x in SAIC if x in per):
            lines += ["", f"{c} stages (median seconds per image; MP/CPU-s and share of the op's CPU time)", "",
                      "| stage | wall s | CPU s | MP/CPU-s | CPU share | GFLOP | GFLOP per CPU-s | of core GEMM peak |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for op in ("encode", "decode"):
                r = per[c][op]
                stages = r.get("stages", {})
                for k in STAGES:
                    if k in stages:
                        s, cs = stages[k], stages.get("cpu:" + k, float("nan"))
                        f = block["flops"][c].get(k)
                        rate = f / cs / 1e9 if f and cs > 0 else None
                        lines.append(
                            f"| {op}: {k} | {s:.3f} | {cs:.3f} | {r['megapixels'] / cs if cs > 0 else float('inf'):.2f} | "
                            f"{cs / r['cpu_seconds']:.0%} | " + (f"{f / 1e9:.2f} | {rate:.1f} | "
                            f"{rate / results['cpu_sgemm_gflops']:.0%} |" if rate else "– | – | – |"))
                other_w = r["seconds"] - sum(v for k, v in stages.items() if not k.startswith("cpu:"))
                other_c = r["cpu_seconds"] - sum(v for k, v in stages.items() if k.startswith("cpu:"))
                lines.append(f"| {op}: other (pad, pack, copies) | {other_w:.3f} | {other_c:.3f} | – | "
                             f"{other_c / r['cpu_seconds']:.0%} | – | – | – |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
