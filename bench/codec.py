#!/usr/bin/env python
"""CPU codec benchmark: saic vs Pillow AVIF and WebP at matched bpp.

For a Kodak-size image (kodim01, 768×512) and a 4K image (3840×2160, tiled from the
landscape Kodak images), measures encode and decode throughput (megapixels/s, median of
--reps runs after one warm-up), saic's per-stage times (the codec API's `timings`), and
peak memory.  Every (codec, op, size) case runs in a fresh subprocess pinned to --threads
CPUs, so its peak RSS (VmHWM) is that case's own.  AVIF and WebP qualities are chosen (by
bisection on the Kodak-size image) to match saic's bpp at --quality.

    python bench/codec.py                 # full: kodak + 4k, 3 reps
    python bench/codec.py --quick         # kodak only, 1 rep
    python bench/codec.py --json out.json # also write all numbers

Without ../shared/data (or $SAIC_DATA_DIR) a synthetic natural-ish image is used instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("analysis", "hyper_analysis", "entropy_params", "entropy_encode", "entropy_decode", "synthesis")
SIZES = {"kodak": (512, 768), "4k": (2160, 3840)}


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


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    threads = int(spec["threads"])
    rgb, _ = bench_image(spec["size"])
    src = Path(spec["data"]) if spec.get("data") else None
    codec, op, reps = spec["codec"], spec["op"], int(spec["reps"])
    if codec == "saic":
        from saic.codec import load_model

        model = load_model(spec["model"], threads=threads)
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
    seconds, stage_runs = [], []
    for _ in range(max(reps, 1)):
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        out = run(t)
        seconds.append(time.perf_counter() - t0)
        stage_runs.append(t)
    peak = _status_kb("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict[str, Any] = {
        "seconds": statistics.median(seconds),
        "seconds_all": seconds,
        "megapixels": rgb.shape[0] * rgb.shape[1] / 1e6,
        "peak_rss_mb": (peak or 0) / 1024,
        "setup_rss_mb": (base_rss or 0) / 1024,
        "peak_is_op_only": exact_peak,
    }
    if stage_runs and stage_runs[0]:
        result["stages"] = {k: statistics.median(r.get(k, 0.0) for r in stage_runs) for k in stage_runs[0]}
    if op == "encode":
        Path(spec["out"]).write_bytes(out)
        result["bytes"] = len(out)
        result["bpp"] = 8 * len(out) / (rgb.shape[0] * rgb.shape[1])
    return result


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh interpreter pinned to `threads` CPUs; parse its JSON line."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    cpus = sorted(os.sched_getaffinity(0))[: int(spec["threads"])] if hasattr(os, "sched_getaffinity") else None
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=False,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec['codec']} {spec['op']} {spec['size']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per case (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="CPUs (and codec threads) per case")
    ap.add_argument("--codecs", default="saic,avif,webp")
    ap.add_argument("--quick", action="store_true", help="kodak size only, 1 rep")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.sizes, args.reps = "kodak", 1
    sizes = [s for s in args.sizes.split(",") if s]
    codecs = [c for c in args.codecs.split(",") if c]
    model = (args.model or default_model()).resolve()
    results: dict[str, Any] = {"threads": args.threads, "reps": args.reps, "model": str(model), "sizes": {}}
    tmp = Path(tempfile.mkdtemp(prefix="saic-bench-"))
    common = {"threads": args.threads, "reps": args.reps, "model": str(model)}

    # saic's bpp at --quality on the Kodak-size image sets the baselines' qualities
    qualities = {"saic": args.quality}
    kodak_rgb, _ = bench_image("kodak")
    first = None
    if "saic" in codecs:
        first = run_case({**common, "codec": "saic", "op": "encode", "size": sizes[0], "quality": args.quality,
                          "out": str(tmp / f"saic-{sizes[0]}.bin")})
        target = first["bpp"] if sizes[0] == "kodak" else None
        if target is None:
            probe = run_case({**common, "reps": 0, "codec": "saic", "op": "encode", "size": "kodak",
                              "quality": args.quality, "out": str(tmp / "probe.bin")})
            target = probe["bpp"]
        for c in codecs:
            if c != "saic":
                qualities[c], _ = match_quality(c, kodak_rgb, target, args.threads)
    else:
        qualities.update({c: 50 for c in codecs})
    results["qualities"] = qualities

    for size in sizes:
        _, desc = bench_image(size)
        per: dict[str, Any] = {}
        for c in codecs:
            enc_out = tmp / f"{c}-{size}.bin"
            spec = {**common, "codec": c, "size": size, "quality": qualities[c], "out": str(enc_out)}
            enc = first if (c == "saic" and size == sizes[0] and first) else run_case({**spec, "op": "encode"})
            dec = run_case({**spec, "op": "decode", "data": str(enc_out)})
            per[c] = {"encode": enc, "decode": dec}
            print(f"  {size:5s} {c:5s} q={qualities[c]:3d} bpp={enc['bpp']:.3f} "
                  f"enc {enc['megapixels'] / enc['seconds']:.2f} MP/s dec {dec['megapixels'] / dec['seconds']:.2f} MP/s",
                  file=sys.stderr)
        results["sizes"][size] = {"image": desc, "codecs": per}
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def report(results: dict[str, Any]) -> str:
    lines = [f"threads per case: {results['threads']}, median of {results['reps']} reps, qualities {results['qualities']}"]
    for size, block in results["sizes"].items():
        per = block["codecs"]
        lines += ["", f"## {size}: {block['image']}", "",
                  "| codec | bpp | enc MP/s | dec MP/s | enc peak RSS MB | dec peak RSS MB | saic/x enc | saic/x dec |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        mps = {c: (r["encode"]["megapixels"] / r["encode"]["seconds"], r["decode"]["megapixels"] / r["decode"]["seconds"])
               for c, r in per.items()}
        for c, r in per.items():
            e, d = mps[c]
            ratio = ("%.2f" % (mps["saic"][0] / e), "%.2f" % (mps["saic"][1] / d)) if "saic" in mps else ("–", "–")
            lines.append(f"| {c} | {r['encode']['bpp']:.3f} | {e:.2f} | {d:.2f} | {r['encode']['peak_rss_mb']:.0f} | "
                         f"{r['decode']['peak_rss_mb']:.0f} | {ratio[0]} | {ratio[1]} |")
        if "saic" in per:
            lines += ["", "| saic stage | seconds | MP/s | share |", "|---|---:|---:|---:|"]
            for op in ("encode", "decode"):
                r = per["saic"][op]
                stages = r.get("stages", {})
                for k in STAGES:
                    if k in stages:
                        s = stages[k]
                        lines.append(f"| {op}: {k} | {s:.3f} | {r['megapixels'] / s if s else float('inf'):.2f} | "
                                     f"{s / r['seconds']:.0%} |")
                other = r["seconds"] - sum(stages.values())
                lines.append(f"| {op}: other (pad, pack, copies) | {other:.3f} | – | {other / r['seconds']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
