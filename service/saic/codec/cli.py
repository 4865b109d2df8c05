"""`saic compress` and `saic decompress`: files, folders, or stdin/stdout ("-")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import bitstream
from .errors import SaicError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".gif"}
STREAM_SUFFIX = ".saic"


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "compress",
        help="image(s) -> .saic bitstream(s)",
        description="Compress an image file (or every image in a folder, or stdin with '-') to saic bitstreams. "
        "Prints bpp and PSNR per image (PSNR needs a decode; --no-psnr skips it).",
    )
    c.add_argument("input", help="image file, folder of images, or - for stdin")
    c.add_argument("output", nargs="?", help="output .saic file or folder (default: next to input; - for stdout)")
    rate = c.add_mutually_exclusive_group()
    rate.add_argument("-q", "--quality", type=int, help="0..100, higher is more bits (default 50)")
    rate.add_argument("-b", "--target-bpp", type=float, help="highest quality at or under this many bits per pixel")
    c.add_argument(
        "--half",
        action="store_true",
        help="code a half-resolution copy (about 1/4 of the bits: rates below quality 0); --target-bpp picks full or "
        "half resolution itself",
    )
    c.add_argument("-m", "--model", help="model id (default: the registry's default)")
    c.add_argument("--model-dir", type=Path, help="folder of model directories (default: $SAIC_MODEL_DIR or models/)")
    c.add_argument("--no-psnr", action="store_true", help="do not decode to report PSNR")
    c.set_defaults(func=_compress)

    d = sub.add_parser(
        "decompress",
        help=".saic bitstream(s) -> image(s)",
        description="Decompress a .saic file (or every .saic file in a folder, or stdin with '-') to PNG (or the "
        "format the output suffix names).",
    )
    d.add_argument("input", help=".saic file, folder, or - for stdin")
    d.add_argument("output", nargs="?", help="output image or folder (default: next to input as .png; - for stdout)")
    d.add_argument("--model-dir", type=Path, help="folder of model directories (default: $SAIC_MODEL_DIR or models/)")
    d.add_argument("--format", default=None, help="png, webp, jpeg, ... for stdout or folders (default png)")
    d.set_defaults(func=_decompress)


def _pairs(src: str, dst: str | None, suffixes: set[str], new_suffix: str) -> list[tuple[str, str]]:
    if src == "-":
        return [("-", dst or "-")]
    p = Path(src)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes)
        out_dir = Path(dst) if dst else p
        out_dir.mkdir(parents=True, exist_ok=True)
        return [(str(f), str(out_dir / (f.stem + new_suffix))) for f in files]
    return [(src, dst or str(p.with_suffix(new_suffix)))]


def read_input(path: str) -> bytes:
    """A file's bytes, or stdin's for '-'."""
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def write_output(path: str, data: bytes) -> None:
    """Write to a file, or to stdout for '-'."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(path).write_bytes(data)


def _progress(items: list, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", disable=len(items) < 2, file=sys.stderr)


def _registry(model_dir: Path | None):
    from .registry import ModelRegistry

    return ModelRegistry(model_dir)


def _compress(args: argparse.Namespace) -> int:
    from .image import decode_image

    if args.half and args.target_bpp is not None:
        print("saic compress: --half goes with --quality (--target-bpp chooses the resolution itself)", file=sys.stderr)
        return 2
    reg = _registry(args.model_dir)
    model = reg.get(args.model)
    pairs = _pairs(args.input, args.output, IMAGE_SUFFIXES, STREAM_SUFFIX)
    failed = 0
    for src, dst in _progress(pairs, "compress"):
        try:
            rgb = decode_image(read_input(src), max_pixels=model.max_pixels)
            if args.target_bpp is not None:
                data = model.compress_to_bpp(rgb, args.target_bpp)
            else:
                q = 50 if args.quality is None else args.quality
                data = model.compress_batch([rgb], [q], downscales=[2 if args.half else 1])[0]
            write_output(dst, data)
            bpp = 8 * len(data) / (rgb.shape[0] * rgb.shape[1])
            header = bitstream.read_header(data)
            msg = f"{src}: {rgb.shape[1]}x{rgb.shape[0]} -> {len(data)} bytes, {bpp:.4f} bpp, quality {header.quality}"
            if header.downscale != 1:
                msg += " at half resolution"
            if not args.no_psnr:
                rec = model.decompress_batch([data])[0]
                mse = np.mean((rec.astype(np.float64) - rgb) ** 2)
                msg += f", PSNR {10 * np.log10(255**2 / max(mse, 1e-10)):.2f} dB"
            print(msg, file=sys.stderr)
        except (SaicError, OSError) as exc:
            failed += 1
            print(f"{src}: error: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _decompress(args: argparse.Namespace) -> int:
    from .bitstream import read_header
    from .image import encode_image

    reg = _registry(args.model_dir)
    pairs = _pairs(args.input, args.output, {STREAM_SUFFIX}, "." + (args.format or "png"))
    failed = 0
    for src, dst in _progress(pairs, "decompress"):
        try:
            data = read_input(src)
            model = reg.for_tag(read_header(data).model_tag)
            rgb = model.decompress_batch([data])[0]
            fmt = args.format or (Path(dst).suffix.lstrip(".").lower() if dst != "-" else "png") or "png"
            write_output(dst, encode_image(rgb, fmt))
            bpp = 8 * len(data) / (rgb.shape[0] * rgb.shape[1])
            print(f"{src}: {rgb.shape[1]}x{rgb.shape[0]}, {bpp:.4f} bpp -> {dst}", file=sys.stderr)
        except (SaicError, OSError) as exc:
            failed += 1
            print(f"{src}: error: {exc}", file=sys.stderr)
    return 1 if failed else 0
