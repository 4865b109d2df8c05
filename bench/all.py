#!/usr/bin/env python
"""Every performance number of docs/performance.md in one run:

1. bench/codec.py   saic vs AVIF/WebP at matched bpp (Kodak size and 4K): MP/s, per stage,
                    GFLOP/s vs this core's GEMM rate, peak RSS;
2. bench/service.py service throughput and latency vs the in-process codec, batching gain;
3. bench/gpu.py     on a CUDA machine: images/s at batch 1/8/32, TFLOP/s vs the device's peak,
                    fp16 speed and quality (prints "not available" and skips elsewhere).

    python bench/all.py --out runs/bench        # writes codec.json, service.json, gpu.json there
    python bench/all.py --quick                 # Kodak size only, short service cells
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, args: list[str]) -> int:
    print(f"\n# ---- {script} {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, str(HERE / script), *args])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="CPUs per codec case (bench/codec.py)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    codec = ["--threads", str(args.threads), "--json", str(args.out / "codec.json")] + (["--quick"] if args.quick else [])
    service = ["--out", str(args.out / "service.json")] + (
        ["--concurrency", "1", "8", "--duration", "4", "--repeats", "2", "--overhead-rounds", "8"] if args.quick else [])
    gpu = ["--fp16", "--quality-images", "4" if args.quick else "24", "--json", str(args.out / "gpu.json")]
    rcs = [run("codec.py", codec), run("service.py", service), run("gpu.py", gpu)]
    return max(rcs)


if __name__ == "__main__":
    sys.exit(main())
