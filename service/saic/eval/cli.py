"""`saic eval <mode>`: evaluation subcommands.

Each mode lives with the module that owns it and adds itself through a
``register(subparsers)`` function listed in `EVAL_MODES`, like the top-level `saic` CLI;
a listed module that does not exist yet is skipped.  ``rd`` is defined here; ``semantic``
is expected in `saic.eval.semantic` (its ``register`` adds ``saic eval semantic``).
Other code can also add a mode at run time with `register_eval`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable

Registrar = Callable[[argparse._SubParsersAction], None]

# (module, attribute) pairs; each function adds one `saic eval <mode>` parser and sets `func`.
EVAL_MODES: list[tuple[str, str]] = [
    ("saic.eval.cli", "register_rd"),
    ("saic.eval.semantic", "register"),
]
_extra: list[Registrar] = []


def register_eval(fn: Registrar) -> Registrar:
    """Add an eval mode from code (usable as a decorator)."""
    _extra.append(fn)
    return fn


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `saic eval` with one sub-subcommand per mode."""
    p = subparsers.add_parser("eval", help="evaluate codecs (rate–distortion, semantic accuracy)")
    modes = p.add_subparsers(dest="eval_mode", metavar="MODE")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    for module, attr in EVAL_MODES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        getattr(mod, attr)(modes)
    for fn in _extra:
        fn(modes)


def _csv_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def register_rd(modes: argparse._SubParsersAction) -> None:
    from .baselines import BASELINES

    p = modes.add_parser(
        "rd",
        help="rate–distortion curves (bpp / PSNR / MS-SSIM) vs JPEG, WebP, AVIF, with BD-rates",
        description="Writes rd.json, bd_rate.md and rd.png to --out. Baseline results are cached in "
        "--out/baselines_rd.json and read from --baselines-cache (default: <model>/../baselines/kodak_rd.json).",
    )
    p.add_argument("--model", type=Path, help="model directory (models/<id>); omit for baselines only")
    p.add_argument("--images", type=Path, required=True, help="folder of test images (e.g. ../shared/data/kodak)")
    p.add_argument("--out", type=Path, help="output folder (default: <model>/eval)")
    p.add_argument("--qualities", type=_csv_ints, help="our quality grid, e.g. 0,20,40,60,80,100")
    p.add_argument("--half-qualities", type=_csv_ints,
                   help="quality grid of our half-resolution series (default 0,20,40,60,80,100; '' to skip)")
    p.add_argument("--baselines", default=",".join(BASELINES), help=f"comma list from {','.join(BASELINES)}; '' for none")
    p.add_argument("--baselines-cache", type=Path, action="append", default=None,
                   help="extra cache file(s) of baseline results (rd.json format); repeatable")
    p.add_argument("--recompute-baselines", action="store_true", help="ignore cached baseline results")
    p.add_argument("--recompute", action="store_true",
                   help="re-run our model even if --out/rd.json already holds its results (same weights, grid, images)")
    p.add_argument("--limit", type=int, help="use only the first N images (quick checks)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads for our model (0 = default)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_rd)


def _run_rd(args: argparse.Namespace) -> int:
    from .rd import run_rd

    if args.out is None:
        if args.model is None:
            print("saic eval rd: give --out when no --model is given", file=sys.stderr)
            return 2
        args.out = args.model / "eval"
    caches = list(args.baselines_cache or [])
    if args.model is not None and not args.baselines_cache:
        caches.append(args.model.resolve().parent / "baselines" / "kodak_rd.json")
    baselines = [b for b in args.baselines.split(",") if b]
    doc = run_rd(
        args.images, args.out, model=args.model, baselines=baselines, model_qualities=args.qualities,
        half_qualities=args.half_qualities,
        cache_files=caches, recompute_baselines=args.recompute_baselines,
        recompute_model=args.recompute, limit=args.limit,
        plot=not args.no_plot, threads=args.threads, show_progress=not args.quiet,
    )
    print((args.out / "bd_rate.md").read_text())
    print(f"wrote {args.out}/rd.json, bd_rate.md{'' if args.no_plot else ', rd.png'}")
    return 0 if doc["codecs"] else 1
