"""Rate–distortion evaluation: run codecs over an image folder and a quality grid.

Every codec (ours through `saic.codec.load_model`, or a Pillow baseline) is seen through one
small `Codec` interface, so the same loop measures all of them: encode → count bytes →
decode → PSNR / MS-SSIM against the original.  Per-image numbers are kept; per-quality means
follow CompressAI's convention (mean of per-image bpp, PSNR and MS-SSIM; MS-SSIM in dB is
``-10 log10(1 - mean MS-SSIM)``).

Baseline results depend only on the images, the grid and the codec settings, so they are
cached (an ``rd.json``-shaped file keyed by a fingerprint of the image files) and re-used
when a new model is evaluated; `models/baselines/kodak_rd.json` is the committed Kodak cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import bd
from .baselines import BASELINES, Baseline
from .metrics import ms_ssim, ms_ssim_db, psnr

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm")
RD_FORMAT = 1
DEFAULT_OUR_QUALITIES = (0, 15, 30, 45, 60, 75, 90, 100)
HALF_QUALITIES = (0, 20, 40, 60, 80, 100)  # the half-resolution series: the low-rate end below quality 0


# ------------------------------------------------------------------ images


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted by name (non-recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def load_rgb(path: str | Path) -> np.ndarray:
    """Load an image file as HxWx3 uint8 (grayscale/alpha converted by Pillow)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def dataset_fingerprint(files: Sequence[Path]) -> str:
    """sha256 over (file name, sha256 of file bytes): the cache key for baseline results."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic natural-ish RGB image (smooth shapes, edges, 1/f-ish texture) for tests
    and benchmarks when no real image is available."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        img[..., c] = 110 + 50 * np.sin(xx / (37 + 11 * c) + c) * np.cos(yy / (53 - 7 * c))
    for _ in range(12):  # flat-ish discs with sharp edges
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.03, 0.2) * min(height, width)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[mask] = img[mask] * 0.3 + rng.uniform(0, 255, 3) * 0.7
    # band-limited texture: sum of a few random octaves of upsampled noise
    for octave in (4, 16, 64):
        small = rng.normal(0, 1, (height // octave + 2, width // octave + 2, 3)).astype(np.float32)
        up = np.asarray(
            Image.fromarray(((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8)).resize(
                (width, height), Image.BICUBIC
            ),
            np.float32,
        )
        img += (up - 128) * (0.12 * octave / 64 + 0.05)
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ codecs


@dataclass
class Codec:
    """What the RD loop needs from a codec."""

    name: str
    label: str
    qualities: tuple[int, ...]
    encode: Callable[[np.ndarray, int], bytes]
    decode: Callable[[bytes], np.ndarray]
    payload_bytes: Callable[[bytes], int | None]
    settings: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def baseline_codec(b: Baseline, qualities: Sequence[int] | None = None) -> Codec:
    return Codec(
        b.name, b.label, tuple(qualities or b.qualities), b.encode, b.decode, b.payload_bytes, b.settings
    )


def load_codec(model_path: str | Path, threads: int = 0) -> Any:
    """A CodecModel from a model directory (threads: ONNX Runtime intra-op threads, 0 = default)."""
    from saic.codec import load_model  # imported lazily: baselines-only runs need no model
    from saic.codec.model import CodecModel

    return CodecModel(model_path, threads=threads) if threads else load_model(model_path)


def model_codec(model: Any, qualities: Sequence[int] | None = None, downscale: int = 1) -> Codec:
    """Our codec, a loaded CodecModel (`load_codec`), through the public batch API with timings
    accumulated; downscale=2 is its half-resolution series (name suffix ":half")."""
    from saic.codec import bitstream

    timings: dict[str, float] = {}

    def encode(rgb: np.ndarray, quality: int) -> bytes:
        return model.compress_batch([rgb], [int(quality)], timings=timings, downscales=[downscale])[0]

    def decode(data: bytes) -> np.ndarray:
        return model.decompress_batch([data], timings=timings)[0]

    def payload(data: bytes) -> int | None:
        return sum(len(s) for s in bitstream.unpack(data).substreams)

    if qualities is None:
        lo, hi = model.manifest.get("quality_range", [0, 100])
        grid = DEFAULT_OUR_QUALITIES if downscale == 1 else HALF_QUALITIES
        qualities = sorted({int(round(lo + (hi - lo) * (q / 100))) for q in grid})
    half = downscale == 2
    return Codec(
        f"saic:{model.id}" + (":half" if half else ""), f"saic {model.id}" + (" (half resolution)" if half else ""),
        tuple(int(q) for q in qualities), encode, decode, payload,
        settings=f"model {model.id} (sha256 {model.sha256[:12]}), provider {model.provider}", timings=timings,
    )


# ------------------------------------------------------------------ the loop


def _finite_mean(values: Iterable[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.inf


def evaluate(
    codec: Codec,
    images: Sequence[tuple[str, np.ndarray]],
    progress: tqdm | None = None,
) -> dict[str, Any]:
    """Run one codec over all images × qualities; per-image records and per-quality means."""
    points = []
    t0 = time.perf_counter()
    for q in codec.qualities:
        records = []
        for name, rgb in images:
            data = codec.encode(rgb, q)
            rec = codec.decode(data)
            if rec.shape != rgb.shape:
                raise RuntimeError(f"{codec.name} q={q} {name}: decoded shape {rec.shape} != {rgb.shape}")
            pixels = rgb.shape[0] * rgb.shape[1]
            payload = codec.payload_bytes(data)
            records.append({
                "name": name,
                "bytes": len(data),
                "payload_bytes": payload,
                "bpp": 8.0 * len(data) / pixels,
                "payload_bpp": None if payload is None else 8.0 * payload / pixels,
                "psnr": psnr(rgb, rec),
                "ms_ssim": ms_ssim(rgb, rec),
            })
            if progress is not None:
                progress.update(1)
        payloads = [r["payload_bpp"] for r in records]
        mean_ms = float(np.mean([r["ms_ssim"] for r in records]))
        points.append({
            "quality": int(q),
            "bpp": float(np.mean([r["bpp"] for r in records])),
            "payload_bpp": None if any(p is None for p in payloads) else float(np.mean(payloads)),
            "psnr": _finite_mean(r["psnr"] for r in records),
            "ms_ssim": mean_ms,
            "ms_ssim_db": ms_ssim_db(mean_ms),
            "images": records,
        })
    out: dict[str, Any] = {
        "label": codec.label,
        "settings": codec.settings,
        "qualities": list(codec.qualities),
        "seconds": time.perf_counter() - t0,
        "points": points,
    }
    if codec.timings:
        out["stage_seconds"] = dict(codec.timings)
    return out


def curve(result: dict[str, Any], metric: str = "psnr") -> tuple[list[float], list[float]]:
    """(bpp, metric) lists of one codec's mean points, sorted by bpp."""
    pts = sorted(result["points"], key=lambda p: p["bpp"])
    return [p["bpp"] for p in pts], [p[metric] for p in pts]


def bd_table(results: dict[str, dict[str, Any]], test: str, anchors: Sequence[str]) -> list[dict[str, Any]]:
    """BD-rate (PSNR and MS-SSIM dB) and BD-PSNR of codec `test` against each anchor."""
    rows = []
    for a in anchors:
        if a not in results or a == test:
            continue
        # BD on each curve's efficient points (see bd.rd_frontier), separately per metric
        ra, pa = bd.rd_frontier(*curve(results[a], "psnr"))
        rt, pt = bd.rd_frontier(*curve(results[test], "psnr"))
        rma, ma = bd.rd_frontier(*curve(results[a], "ms_ssim_db"))
        rmt, mt = bd.rd_frontier(*curve(results[test], "ms_ssim_db"))
        rows.append({
            "anchor": a,
            "test": test,
            "bd_rate_psnr_percent": bd.bd_rate(ra, pa, rt, pt),
            "bd_rate_ms_ssim_percent": bd.bd_rate(rma, ma, rmt, mt),
            "bd_psnr_db": bd.bd_psnr(ra, pa, rt, pt),
            "psnr_overlap": bd.overlap_fraction(pa, pt),
            "rate_overlap": bd.overlap_fraction(np.log10(ra), np.log10(rt)),
            "points_used": {"anchor": len(ra), "test": len(rt), "of": [len(results[a]["points"]),
                                                                     len(results[test]["points"])]},
        })
    return rows


# ------------------------------------------------------------------ caching and the full run


def environment() -> dict[str, str]:
    """Library versions that can change baseline numbers."""
    from PIL import __version__ as pil_version
    from PIL import features

    env = {"python": platform.python_version(), "pillow": pil_version, "numpy": np.__version__}
    for feat in ("jpg", "webp", "avif"):
        try:
            env[f"lib{feat}"] = str(features.version(feat))
        except Exception:  # a Pillow without that codec
            env[f"lib{feat}"] = "unavailable"
    return env


def load_cached_baselines(paths: Sequence[Path], fingerprint: str, wanted: dict[str, Codec]) -> dict[str, Any]:
    """Results (of baselines, or of a model: its settings name the weights' sha256) from earlier
    rd.json-shaped files whose dataset fingerprint, quality grid and settings match."""
    found: dict[str, Any] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("dataset", {}).get("fingerprint") != fingerprint:
            continue
        for name, res in doc.get("codecs", {}).items():
            c = wanted.get(name)
            if name in found or c is None:
                continue
            if res.get("qualities") == list(c.qualities) and res.get("settings") == c.settings:
                found[name] = res
    return found


def run_rd(
    image_dir: str | Path,
    out_dir: str | Path,
    model: str | Path | None = None,
    baselines: Sequence[str] = tuple(BASELINES),
    model_qualities: Sequence[int] | None = None,
    half_qualities: Sequence[int] | None = None,
    cache_files: Sequence[str | Path] = (),
    recompute_baselines: bool = False,
    recompute_model: bool = False,
    limit: int | None = None,
    plot: bool = True,
    threads: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The `saic eval rd` run: writes rd.json, baselines_rd.json, bd_rate.md and rd.png.
    With a model, also its half-resolution series (half_qualities; empty to skip)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = list_images(image_dir)[: limit or None]
    fingerprint = dataset_fingerprint(files)
    images = [(p.name, load_rgb(p)) for p in files]

    todo: dict[str, Codec] = {n: baseline_codec(BASELINES[n]) for n in baselines}
    own_cache = out / "baselines_rd.json"
    cached = {} if recompute_baselines else load_cached_baselines(
        [own_cache, *map(Path, cache_files)], fingerprint, todo)
    codecs: list[Codec] = [c for n, c in todo.items() if n not in cached]
    results: dict[str, Any] = {n: cached[n] for n in todo if n in cached}
    ours: Codec | None = None
    half: Codec | None = None
    if model is not None:
        loaded = load_codec(model, threads)
        ours = model_codec(loaded, model_qualities)
        if half_qualities is None or half_qualities:
            half = model_codec(loaded, half_qualities, downscale=2)
        for c in (ours, half):
            if c is None:
                continue
            # the same model file (sha256 in `settings`), grid and images: an earlier rd.json is still valid
            prev = {} if recompute_model else load_cached_baselines([out / "rd.json"], fingerprint, {c.name: c})
            if c.name in prev:
                results[c.name] = prev[c.name]
            else:
                codecs.append(c)
    total = sum(len(c.qualities) for c in codecs) * len(images)
    with tqdm(total=total, desc="rd", unit="enc", disable=not show_progress or total == 0) as bar:
        for c in codecs:
            bar.set_postfix_str(c.name)
            results[c.name] = evaluate(c, images, bar)

    dataset = {
        "path": str(image_dir),
        "n_images": len(images),
        "names": [n for n, _ in images],
        "pixels": int(sum(a.shape[0] * a.shape[1] for _, a in images)),
        "fingerprint": fingerprint,
    }
    doc: dict[str, Any] = {
        "format": RD_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        "dataset": dataset,
        "codecs": results,
    }
    base_names = [n for n in todo if n in results]
    if any(c.name in todo for c in codecs):  # computed some baselines: refresh this folder's cache
        base_doc = dict(doc, codecs={n: results[n] for n in base_names})
        write_json(own_cache, base_doc)
    # sanity check of the anchors themselves: each baseline (test) vs the first one (anchor)
    doc["bd"] = {"anchors": [row for n in base_names[1:] for row in bd_table(results, n, base_names[:1])]}
    if ours is not None:
        doc["bd"]["ours"] = bd_table(results, ours.name, base_names)
    if ours is not None and half is not None:
        # both resolutions: the efficient points of the union (an encoder picking the better one per rate)
        both = {"label": _both_label(ours.label),
                "points": results[ours.name]["points"] + results[half.name]["points"]}
        doc["bd"]["ours_with_half"] = bd_table({**results, "both": both}, "both", base_names)
    write_json(out / "rd.json", doc)
    (out / "bd_rate.md").write_text(bd_markdown(doc, ours.name if ours else None))
    if plot:
        from .plot import plot_rd

        plot_rd(doc, out / "rd.png")
    return doc


def _rounded(obj: Any, digits: int = 6) -> Any:
    """Floats rounded for storage (1e-6 is far below any metric's noise); keeps files small."""
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v, digits) for v in obj]
    return obj


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Compact JSON with rounded floats (rd.json, baseline caches)."""
    path.write_text(json.dumps(_rounded(doc), separators=(",", ":"), allow_nan=True) + "\n")


def _fmt(v: float, unit: str = "") -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.1f}{unit}"


def _both_label(label: str) -> str:
    """Label of the union of our full- and half-resolution series (BD table `ours_with_half`)."""
    return f"{label} (full or half resolution)"


def bd_markdown(doc: dict[str, Any], ours: str | None) -> str:
    """The BD-rate report: ours vs each baseline, then the baselines vs the first one."""
    res = doc["codecs"]
    ds = doc["dataset"]
    labels = {n: r["label"] for n, r in res.items()}
    if ours:
        labels["both"] = _both_label(res[ours]["label"])
    lines = [
        f"# Rate–distortion: BD-rates on {ds['n_images']} images ({Path(ds['path']).name})",
        "",
        "BD-rate: average bitrate difference at equal quality, pchip in log-rate over the overlapping "
        "quality range (negative = fewer bits than the anchor). Rates count whole files "
        "(headers/containers included). MS-SSIM BD-rate is on MS-SSIM in dB.",
        "",
    ]

    def table(rows: list[dict[str, Any]], title: str, key: str) -> None:
        lines.extend([f"## {title}", "",
                      f"| {key} | BD-rate (PSNR) | BD-rate (MS-SSIM) | BD-PSNR | PSNR overlap |",
                      "|---|---:|---:|---:|---:|"])
        for r in rows:
            lines.append(
                f"| {labels[r[key]]} | {_fmt(r['bd_rate_psnr_percent'], ' %')} | "
                f"{_fmt(r['bd_rate_ms_ssim_percent'], ' %')} | {_fmt(r['bd_psnr_db'], ' dB')} | "
                f"{r['psnr_overlap']:.0%} |")
        dropped = [r for r in rows if r["points_used"]["test"] < r["points_used"]["of"][1]]
        if dropped:
            r = dropped[0]["points_used"]
            lines.append(f"\n{labels[dropped[0]['test']]}: only {r['test']} of {r['of'][1]} points are "
                         "efficient in PSNR (more bits, less quality for the rest); BD uses those.")
        lines.append("")

    if ours and doc["bd"].get("ours"):
        table(doc["bd"]["ours"], f"{res[ours]['label']} (test) vs each classical codec (anchor)", "anchor")
    if ours and doc["bd"].get("ours_with_half"):
        lines.extend(["Below its quality 0 the model codes a half-resolution copy (`--half`; `target_bpp` switches "
                      "by itself). The same table over the efficient points of both series together:", ""])
        table(doc["bd"]["ours_with_half"], f"{labels['both']} (test)", "anchor")
    if doc["bd"].get("anchors"):
        first = doc["bd"]["anchors"][0]["anchor"]
        table(doc["bd"]["anchors"], f"Classical codecs (test) vs {res[first]['label']} (anchor)", "test")
    lines.extend(["## Operating points (means)", "", "| codec | q | bpp | payload bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) |",
                  "|---|---:|---:|---:|---:|---:|---:|"])
    for name, r in res.items():
        for p in sorted(r["points"], key=lambda p: p["bpp"]):
            pb = "–" if p.get("payload_bpp") is None else f"{p['payload_bpp']:.3f}"
            lines.append(f"| {r['label']} | {p['quality']} | {p['bpp']:.3f} | {pb} | {p['psnr']:.2f} | "
                         f"{p['ms_ssim']:.4f} | {p['ms_ssim_db']:.2f} |")
    lines.append("")
    return "\n".join(lines)
