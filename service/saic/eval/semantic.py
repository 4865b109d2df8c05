"""`saic eval semantic`: what a classifier still sees in decoded images, versus bpp.

For every codec (any list of saic model directories, labelled from their manifests, plus
JPEG 4:2:0, WebP and AVIF through `saic.eval.baselines`) and every quality of its grid, the
tiny10/test images are encoded, decoded, and scored:

* top-1 accuracy of the task classifier (`models/tiny10-classifier`) and of the held-out judge
  (`models/tiny10-judge`) on the decoded images, against the true labels;
* whole-bitstream bpp (every byte: our header, JPEG/WebP/AVIF containers) and payload bpp
  (entropy-coded data only, where the container lets us isolate it) — at 64x64 the header is
  a large part of the file;
* SI (`saic.semantics.si`, as the service computes it: reference class = the original's
  top-1), PSNR and MS-SSIM (3 scales at 64x64, `saic.eval.metrics`);
* for saic codecs with a compressed-domain head (`saic.semantics.latent`): the head's top-1
  from entropy decoding alone.

Then: accuracy interpolated (linear in log bpp between measured points, never extrapolated)
at the table rates (0.125 bpp is the headline), the rank correlation (Spearman, Kendall) of
SI, PSNR and MS-SSIM with the judge's accuracy across all operating points, and the
compressed-domain head's bit and time savings versus feeding RGB.

Encoded streams are cached per (codec settings, quality, image set) and per-image scores per
(streams, classifier hashes) under `--cache` (default runs/semantic_eval), so re-running after
a classifier is retrained re-scores without re-encoding, and adding a codec runs only it.
Outputs (`--out`, default models/semantic_eval): semantic.json, table.md, accuracy_vs_bpp.png.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .baselines import BASELINES
from .metrics import ms_ssim, psnr

FORMAT = 1
REPO = Path(__file__).resolve().parents[3]
HEADLINE_BPP = 0.125
DEFAULT_RATES = (0.125, 0.25, 0.5, 1.0)
DEFAULT_BASELINES = ("jpeg420", "webp", "avif")
# ~6 points each, chosen on tiny10 64x64 images to span each codec's reachable range up to ~2.5 bpp
DEFAULT_GRIDS: dict[str, tuple[int, ...]] = {
    "jpeg420": (1, 5, 10, 20, 40, 75),
    "jpeg444": (1, 5, 10, 20, 40, 75),
    "webp": (0, 5, 15, 30, 50, 75),
    "avif": (0, 10, 20, 35, 50, 70),
}
OUR_GRID = (0, 10, 20, 40, 60, 100)  # denser at the low end, where 0.125 bpp lies
CHUNK = 64


# ------------------------------------------------------------------------------ data


@dataclass
class Dataset:
    """tiny10/<split> images (uint8 N,64,64,3) with labels in the classifiers' class order."""

    path: Path
    names: list[str]
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    every: int
    fingerprint: str
    source_bytes: np.ndarray  # size of each original file (JPEG) in bytes


def load_tiny10(root: Path, classes: Sequence[str], split: str = "test", every: int = 1) -> Dataset:
    """Files sorted per class (class order = the classifiers'), every `every`-th one kept;
    grayscale JPEGs converted to RGB.  The fingerprint hashes names and bytes of the kept files."""
    folder = Path(root) / "tiny10" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"tiny10 split not found: {folder}")
    files = [(c, p) for c_i, c in enumerate(classes) for p in sorted((folder / c).iterdir()) if p.is_file()]
    files = files[:: max(1, every)]
    h = hashlib.sha256()
    images, labels, names, sizes = [], [], [], []
    for c, p in files:
        raw = p.read_bytes()
        h.update(f"{c}/{p.name}".encode() + b"\0" + hashlib.sha256(raw).digest())
        with Image.open(io.BytesIO(raw)) as im:
            images.append(np.asarray(im.convert("RGB")))
        labels.append(list(classes).index(c))
        names.append(f"{c}/{p.name}")
        sizes.append(len(raw))
    return Dataset(folder, names, np.stack(images), np.asarray(labels, np.int64), list(classes), every,
                   h.hexdigest(), np.asarray(sizes, np.int64))


# ------------------------------------------------------------------------------ codecs


@dataclass
class EvalCodec:
    """A codec seen as batch functions; `settings` (with library versions) keys the cache."""

    name: str
    label: str
    kind: str  # "saic" or "baseline"
    qualities: tuple[int, ...]
    settings: str
    encode: Callable[[list[np.ndarray], int], list[bytes]]
    decode: Callable[[list[bytes]], list[np.ndarray]]
    payload_bytes: Callable[[bytes], int | None]
    model: Any = None  # saic.codec.model.CodecModel for ours
    head: Any = None  # saic.semantics.latent.LatentHead when the codec has one
    extra: dict[str, Any] = field(default_factory=dict)


def manifest_label(manifest: dict[str, Any]) -> str:
    """Row label from a codec manifest: its `label`, else "saic <id>", plus β when the training
    record has one (β = 0: the MSE twin of a SAIC fine-tune; uniform channel weights: the
    plain-feature-loss ablation)."""
    label = manifest.get("label") or f"saic {manifest['id']}"
    training = manifest.get("training") or {}
    beta = training.get("beta")
    if beta is not None and "β" not in label:
        if float(beta) == 0:
            label += " (MSE twin, β=0)"
        elif training.get("weighting", "gsw") == "uniform":
            label += f" (plain feature loss, β={float(beta):g})"
        else:
            label += f" (SAIC, β={float(beta):g})"
    return label


def saic_codec(path: Path, qualities: Sequence[int] | None = None, threads: int = 1, heads_root: Path | None = None) -> EvalCodec:
    from saic.codec import bitstream
    from saic.codec.model import CodecModel
    from saic.semantics.latent import head_for

    model = CodecModel(path, threads=threads)

    def encode(images: list[np.ndarray], q: int) -> list[bytes]:
        return [s for i in range(0, len(images), CHUNK) for s in model.compress_batch(images[i : i + CHUNK], [q] * len(images[i : i + CHUNK]))]

    def decode(streams: list[bytes]) -> list[np.ndarray]:
        return [im for i in range(0, len(streams), CHUNK) for im in model.decompress_batch(streams[i : i + CHUNK])]

    def payload(data: bytes) -> int:
        return sum(len(s) for s in bitstream.unpack(data).substreams)

    head = head_for(model, heads_root if heads_root is not None else Path(path).resolve().parent, threads=threads)
    return EvalCodec(
        f"saic:{model.id}", manifest_label(model.manifest), "saic", tuple(qualities or OUR_GRID),
        f"saic model {model.id} sha256 {model.sha256}", encode, decode, payload, model=model, head=head,
    )


def baseline_codec(name: str, qualities: Sequence[int] | None = None) -> EvalCodec:
    from .rd import environment

    b = BASELINES[name]
    env = environment()
    return EvalCodec(
        name, b.label, "baseline", tuple(qualities or DEFAULT_GRIDS.get(name, b.qualities)),
        f"{b.settings}; pillow {env['pillow']} jpg {env['libjpg']} webp {env['libwebp']} avif {env['libavif']}",
        lambda images, q: [b.encode(im, q) for im in images], lambda streams: [b.decode(s) for s in streams],
        b.payload_bytes,
    )


# ------------------------------------------------------------------------------ caches


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def cached_streams(codec: EvalCodec, q: int, ds: Dataset, cache: Path) -> list[bytes]:
    """Encode the whole set at quality q, or read the streams of an identical earlier run."""
    f = cache / "streams" / _safe(codec.name) / f"q{q:03d}-{_key(codec.settings)}-{ds.fingerprint[:16]}.npz"
    if f.is_file():
        z = np.load(f)
        data, off = z["data"].tobytes(), z["offsets"]
        return [data[off[i] : off[i + 1]] for i in range(len(off) - 1)]
    streams = codec.encode(list(ds.images), q)
    f.parent.mkdir(parents=True, exist_ok=True)
    off = np.concatenate([[0], np.cumsum([len(s) for s in streams])]).astype(np.int64)
    np.savez(f.with_suffix(".tmp.npz"), data=np.frombuffer(b"".join(streams), np.uint8), offsets=off)
    f.with_suffix(".tmp.npz").rename(f)
    return streams


def _pixels_key(im: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest() + str(im.shape).encode()


class MemoClassifier:
    """A `SemanticClassifier` that classifies each of a fixed set of images (the originals) once.

    `SIScorer.score_batch` runs the classifier on originals *and* decoded images; over ~25
    operating points the originals would be classified 25 times.  Wrapping the classifier keeps
    SI computed by `saic.semantics.si` itself; only outputs for `keep` images are remembered."""

    def __init__(self, inner: Any, keep: Sequence[np.ndarray]):
        self._inner = inner
        self._keep = {_pixels_key(im) for im in keep}
        self._memo: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def __getattr__(self, name: str) -> Any:  # id, sha256, classes, head_weight, manifest, ...
        return getattr(self._inner, name)

    def predict(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        images = list(images)
        keys = [_pixels_key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if k not in self._memo]
        fresh: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if todo:
            logits, feats = self._inner.predict([images[i] for i in todo])
            for j, i in enumerate(todo):
                fresh[i] = (logits[j], feats[j])
                if keys[i] in self._keep:
                    self._memo[keys[i]] = fresh[i]
        out = [fresh[i] if i in fresh else self._memo[k] for i, k in enumerate(keys)]
        return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


@dataclass
class Judges:
    """The instruments: SI scorer (task classifier inside), judge, optional per-codec heads."""

    scorer: Any  # saic.semantics.si.SIScorer
    judge: Any  # saic.semantics.classifier.SemanticClassifier

    @property
    def key(self) -> str:
        return f"{self.scorer.classifier.sha256[:12]}-{self.judge.sha256[:12]}"


def score_images(originals: np.ndarray, decoded: Sequence[np.ndarray], j: Judges) -> dict[str, np.ndarray]:
    """Per-image task/judge predictions, SI parts, PSNR and MS-SSIM."""
    si_parts: list[Any] = []
    for i in range(0, len(originals), 256):
        si_parts += j.scorer.score_batch(list(originals[i : i + 256]), list(decoded[i : i + 256]))
    classes = j.scorer.classifier.classes
    judge_logits, _ = j.judge.predict(list(decoded))
    return {
        "task_pred": np.asarray([classes.index(r.decoded_class) for r in si_parts], np.int64),
        "judge_pred": judge_logits.argmax(1).astype(np.int64),
        "si": np.asarray([r.si for r in si_parts]),
        "si_pixel": np.asarray([r.pixel for r in si_parts]),
        "si_semantic": np.asarray([r.semantic for r in si_parts]),
        "si_agreement": np.asarray([r.agreement for r in si_parts]),
        "psnr": np.asarray([psnr(o, d) for o, d in zip(originals, decoded)]),
        "ms_ssim": np.asarray([ms_ssim(o, d) for o, d in zip(originals, decoded)]),
    }


def cached_scores(codec: EvalCodec, q: int, ds: Dataset, j: Judges, cache: Path) -> dict[str, np.ndarray]:
    """Per-image records of one operating point (cached per streams, classifiers and head)."""
    head_key = codec.head.sha256[:12] if codec.head is not None else "nohead"
    f = (cache / "scores" / _safe(codec.name) /
         f"q{q:03d}-{_key(codec.settings)}-{ds.fingerprint[:16]}-{j.key}-{head_key}.npz")
    if f.is_file():
        with np.load(f) as z:
            return {k: z[k] for k in z.files}
    streams = cached_streams(codec, q, ds, cache)
    decoded = codec.decode(streams)
    for d, o in zip(decoded, ds.images):
        if d.shape != o.shape:
            raise RuntimeError(f"{codec.name} q={q}: decoded shape {d.shape} != {o.shape}")
    rec = score_images(ds.images, decoded, j)
    rec["bytes"] = np.asarray([len(s) for s in streams], np.int64)
    rec["payload_bytes"] = np.asarray([(lambda p: -1 if p is None else p)(codec.payload_bytes(s)) for s in streams], np.int64)
    if codec.head is not None:
        probs = np.concatenate([codec.head.probabilities(codec.model, streams[i : i + 256]) for i in range(0, len(streams), 256)])
        rec["head_pred"] = probs.argmax(1).astype(np.int64)
    f.parent.mkdir(parents=True, exist_ok=True)
    np.savez(f.with_suffix(".tmp.npz"), **rec)
    f.with_suffix(".tmp.npz").rename(f)
    return rec


# ------------------------------------------------------------------------------ summaries


def _finite_mean(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def summarize(q: int | None, rec: dict[str, np.ndarray], labels: np.ndarray, pixels: int) -> dict[str, Any]:
    pay = rec.get("payload_bytes")
    point: dict[str, Any] = {
        "quality": q,
        "bpp": float(np.mean(8 * rec["bytes"] / pixels)),
        "payload_bpp": None if pay is None or (pay < 0).any() else float(np.mean(8 * pay / pixels)),
        "task_top1": float(np.mean(rec["task_pred"] == labels)),
        "judge_top1": float(np.mean(rec["judge_pred"] == labels)),
        "si": float(np.mean(rec["si"])),
        "si_pixel": float(np.mean(rec["si_pixel"])),
        "si_semantic": float(np.mean(rec["si_semantic"])),
        "si_agreement": float(np.mean(rec["si_agreement"])),
        "psnr": _finite_mean(rec["psnr"]),
        "ms_ssim": float(np.mean(rec["ms_ssim"])),
    }
    if "head_pred" in rec:
        point["head_top1"] = float(np.mean(rec["head_pred"] == labels))
    return point


def at_rate(points: Sequence[dict[str, Any]], rate: float, metric: str, rate_key: str = "bpp") -> dict[str, Any]:
    """`metric` at `rate`, linear in log(bpp) between the two measured points around it; outside
    the measured range: value None and the reachable range (no extrapolation)."""
    pts = sorted((p for p in points if p.get(rate_key) is not None and p.get(metric) is not None), key=lambda p: p[rate_key])
    if not pts:
        return {"value": None, "reason": f"no {rate_key}"}
    lo, hi = pts[0][rate_key], pts[-1][rate_key]
    if rate < lo or rate > hi:
        return {"value": None, "reason": "below" if rate < lo else "above", "min_bpp": lo, "max_bpp": hi}
    for a, b in zip(pts, pts[1:] + pts[-1:]):
        if a[rate_key] <= rate <= b[rate_key]:
            if b[rate_key] == a[rate_key]:
                return {"value": a[metric], "from": [a["quality"]]}
            t = (math.log(rate) - math.log(a[rate_key])) / (math.log(b[rate_key]) - math.log(a[rate_key]))
            return {"value": a[metric] + t * (b[metric] - a[metric]), "from": [a["quality"], b["quality"]]}
    return {"value": pts[-1][metric], "from": [pts[-1]["quality"]]}


def rank_correlations(points: Sequence[dict[str, Any]], target: str = "judge_top1",
                      metrics: Sequence[str] = ("si", "psnr", "ms_ssim")) -> dict[str, Any]:
    """Spearman and Kendall correlation of each metric with `target` across operating points."""
    from scipy.stats import kendalltau, spearmanr

    out: dict[str, Any] = {"n_points": len(points), "target": target}
    y = [p[target] for p in points]
    for m in metrics:
        x = [p[m] for p in points]
        rho, p_rho = spearmanr(x, y)
        tau, p_tau = kendalltau(x, y)
        out[m] = {"spearman": float(rho), "spearman_p": float(p_rho), "kendall": float(tau), "kendall_p": float(p_tau)}
    return out


def per_image_correlations(recs: Sequence[tuple[dict[str, np.ndarray], np.ndarray]]) -> dict[str, Any]:
    """Pooled over every decoded image: Spearman of each metric with judge correctness (0/1)."""
    from scipy.stats import spearmanr

    correct = np.concatenate([r["judge_pred"] == lab for r, lab in recs]).astype(np.float64)
    out: dict[str, Any] = {"n_images": int(len(correct))}
    for m in ("si", "psnr", "ms_ssim"):
        x = np.concatenate([r[m] for r, _ in recs])
        x = np.where(np.isfinite(x), x, np.nanmax(x[np.isfinite(x)]) + 1)
        out[m] = float(spearmanr(x, correct)[0])
    return out


# ------------------------------------------------------------------------------ compressed domain


def _median_seconds(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_paths(codec: EvalCodec, classifier: Any, streams: Sequence[bytes], batch_sizes: Sequence[int] = (1, 32),
               reps: int = 5) -> list[dict[str, Any]]:
    """Per-image milliseconds of compressed-domain classification (parse + entropy decoding +
    head) versus decode-then-classify (parse + entropy decoding + synthesis + task classifier
    on the pixels), one ONNX Runtime thread, median of `reps` after a warm-up."""
    m, head = codec.model, codec.head
    rows = []
    for b in batch_sizes:
        batch = list(streams[:b])
        latent = lambda: head.probabilities(m, batch)  # noqa: E731
        pixels = lambda: classifier.predict(m.decompress_batch(batch))  # noqa: E731
        latent(), pixels()
        stage_l: dict[str, float] = {}
        stage_p: dict[str, float] = {}
        head.probabilities(m, batch, stage_l)
        m.decompress_batch(batch, stage_p)
        t_l, t_p = _median_seconds(latent, reps), _median_seconds(pixels, reps)
        rows.append({
            "batch": b, "latent_ms_per_image": 1000 * t_l / b, "decode_classify_ms_per_image": 1000 * t_p / b,
            "speedup": t_p / t_l, "stages_latent_ms": {k: 1000 * v / b for k, v in stage_l.items()},
            "stages_decode_ms": {k: 1000 * v / b for k, v in stage_p.items()},
        })
    return rows


def png_bpp(images: np.ndarray) -> float:
    """Mean bpp of the images as PNG (Pillow, default compression level 6)."""
    total = 0
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "PNG")
        total += len(buf.getvalue())
    return 8 * total / (len(images) * images.shape[1] * images.shape[2])


# ------------------------------------------------------------------------------ the run


def run_semantic(
    models: Sequence[Path],
    data_dir: Path,
    out: Path,
    cache: Path,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    grids: dict[str, Sequence[int]] | None = None,
    every: int = 1,
    rates: Sequence[float] = DEFAULT_RATES,
    classifier_dir: Path | None = None,
    judge_dir: Path | None = None,
    threads: int = 1,
    timing: bool = True,
    plot: bool = True,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The `saic eval semantic` run; writes semantic.json, table.md and accuracy_vs_bpp.png."""
    from saic.semantics.classifier import SemanticClassifier
    from saic.semantics.si import SIScorer

    from .rd import environment

    grids = dict(grids or {})
    task = SemanticClassifier(classifier_dir or REPO / "models" / "tiny10-classifier", threads=threads)
    judge = SemanticClassifier(judge_dir or REPO / "models" / "tiny10-judge", threads=threads)
    if task.classes != judge.classes:
        raise ValueError("task classifier and judge disagree on the class list")
    ds = load_tiny10(data_dir, task.classes, "test", every)
    j = Judges(SIScorer(MemoClassifier(task, ds.images)), judge)  # type: ignore[arg-type]
    pixels = ds.images.shape[1] * ds.images.shape[2]
    codecs = [saic_codec(Path(m), grids.get(Path(m).name), threads) for m in models]
    codecs += [baseline_codec(b, grids.get(b)) for b in baselines]

    total = sum(len(c.qualities) for c in codecs) + 1
    results: dict[str, Any] = {}
    all_recs: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
    with tqdm(total=total, desc="semantic", unit="point", disable=not show_progress) as bar:
        orig = score_images(ds.images, list(ds.images), j)
        orig["bytes"] = np.full(len(ds.images), 3 * pixels, np.int64)
        originals = summarize(None, orig, ds.labels, pixels)
        originals.update(png_bpp=png_bpp(ds.images), source_jpeg_bpp=float(np.mean(8 * ds.source_bytes / pixels)))
        bar.update(1)
        for c in codecs:
            points = []
            for q in c.qualities:
                bar.set_postfix_str(f"{c.name} q={q}")
                rec = cached_scores(c, q, ds, j, cache)
                points.append(summarize(q, rec, ds.labels, pixels))
                all_recs.append((rec, ds.labels))
                bar.update(1)
            results[c.name] = {"label": c.label, "kind": c.kind, "settings": c.settings, "qualities": list(c.qualities),
                               "points": points}
            if c.head is not None:
                results[c.name]["latent_head"] = {"id": c.head.id, "sha256": c.head.sha256}
    doc: dict[str, Any] = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        "dataset": {"path": str(ds.path), "split": "test", "n_images": len(ds.labels), "every": every,
                    "fingerprint": ds.fingerprint, "size": list(ds.images.shape[1:3])},
        "classifiers": {role: {"id": c.id, "sha256": c.sha256, "manifest_test_top1": c.manifest.get("accuracy", {}).get("test_top1")}
                        for role, c in (("task", task), ("judge", judge))},
        "si_reference": "original's top-1 (as served by /v1/score-si)",
        "originals": originals,
        "codecs": results,
    }
    doc["at_rate"] = {
        c: {str(r): {f"{m}@{k}": at_rate(res["points"], r, m, k)
                     for m in ("task_top1", "judge_top1") for k in ("bpp", "payload_bpp")} for r in rates}
        for c, res in results.items()
    }
    pts = [p for res in results.values() for p in res["points"]]
    if len(pts) >= 3:
        doc["correlations"] = {"points": rank_correlations(pts), "per_image": per_image_correlations(all_recs)}
    doc["compressed_domain"] = compressed_domain(codecs, results, originals, ds, task, cache, timing)
    out.mkdir(parents=True, exist_ok=True)
    (out / "semantic.json").write_text(json.dumps(doc, indent=1, allow_nan=False, default=_json_default) + "\n")
    (out / "table.md").write_text(markdown(doc, rates))
    if plot:
        plot_accuracy(doc, out / "accuracy_vs_bpp.png")
    return doc


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v))


def compressed_domain(codecs: Sequence[EvalCodec], results: dict[str, Any], originals: dict[str, Any], ds: Dataset,
                      task: Any, cache: Path, timing: bool) -> dict[str, Any]:
    """Per saic codec with a head: accuracy vs bpp, bits versus RGB inputs, time versus pixels."""
    out: dict[str, Any] = {}
    for c in codecs:
        if c.head is None:
            continue
        pts = results[c.name]["points"]
        rows = [{"quality": p["quality"], "bpp": p["bpp"], "payload_bpp": p["payload_bpp"], "head_top1": p["head_top1"],
                 "task_top1_decoded": p["task_top1"], "judge_top1_decoded": p["judge_top1"],
                 "x_fewer_bits_than_raw": 24.0 / p["bpp"], "x_fewer_bits_than_png": originals["png_bpp"] / p["bpp"]}
                for p in pts]
        entry: dict[str, Any] = {
            "head": c.head.id, "head_sha256": c.head.sha256, "codec": c.name, "points": rows,
            "rgb": {"raw_bpp": 24.0, "png_bpp": originals["png_bpp"], "source_jpeg_bpp": originals["source_jpeg_bpp"],
                    "task_top1": originals["task_top1"], "judge_top1": originals["judge_top1"]},
        }
        if timing:
            mid = c.qualities[len(c.qualities) // 2]
            streams = cached_streams(c, mid, ds, cache)
            entry["timing"] = {"quality": mid, "threads": 1, "classifier": task.id, "rows": time_paths(c, task, streams)}
        out[c.name] = entry
    return out


# ------------------------------------------------------------------------------ report


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _cell(r: dict[str, Any]) -> str:
    if r.get("value") is not None:
        return _pct(r["value"])
    if r.get("reason") == "below":
        return f"not reachable (min {r['min_bpp']:.2f})"
    if r.get("reason") == "above":
        return f"above grid (max {r['max_bpp']:.2f})"
    return "n/a (no payload)"


def markdown(doc: dict[str, Any], rates: Sequence[float]) -> str:
    ds, cl, o = doc["dataset"], doc["classifiers"], doc["originals"]
    res = doc["codecs"]
    subset = "" if ds["every"] == 1 else f" (every {ds['every']}th image)"
    lines = [
        f"# Semantic evaluation on tiny10/test: {ds['n_images']} images{subset}, {ds['size'][0]}x{ds['size'][1]}",
        "",
        f"Task classifier `{cl['task']['id']}` ({cl['task']['sha256'][:12]}), judge `{cl['judge']['id']}` "
        f"({cl['judge']['sha256'][:12]}). Top-1 against the true labels on decoded images. "
        "*bpp* counts the whole file (our header; JPEG/WebP/AVIF containers), *payload* only the entropy-coded "
        "data. Values at a rate are interpolated linearly in log(bpp) between measured points; a rate outside "
        "a codec's measured range is reported as not reachable, never extrapolated. Generated by "
        "`saic eval semantic` (docs/semantics-eval.md).",
        "",
        f"Originals (no compression): task {_pct(o['task_top1'])}, judge {_pct(o['judge_top1'])}; "
        f"raw 24 bpp, PNG {o['png_bpp']:.2f} bpp, source JPEG files {o['source_jpeg_bpp']:.2f} bpp.",
        "",
    ]
    for r in rates:
        head = f"## Top-1 at {r:g} bpp" + (" (headline)" if r == HEADLINE_BPP else "")
        lines += [head, "", "| codec | task @ bpp | judge @ bpp | task @ payload bpp | judge @ payload bpp |",
                  "|---|---|---|---|---|"]
        for name, rr in doc["at_rate"].items():
            a = rr[str(r)]
            lines.append(f"| {res[name]['label']} | {_cell(a['task_top1@bpp'])} | {_cell(a['judge_top1@bpp'])} | "
                         f"{_cell(a['task_top1@payload_bpp'])} | {_cell(a['judge_top1@payload_bpp'])} |")
        lines.append("")
    lines += ["## Operating points", "",
              "| codec | q | bpp | payload bpp | task top-1 | judge top-1 | latent head top-1 | SI | PSNR (dB) | MS-SSIM |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rr in res.items():
        for p in sorted(rr["points"], key=lambda p: p["bpp"]):
            pb = "–" if p["payload_bpp"] is None else f"{p['payload_bpp']:.3f}"
            ps = "–" if p["psnr"] is None else f"{p['psnr']:.2f}"
            lines.append(f"| {rr['label']} | {p['quality']} | {p['bpp']:.3f} | {pb} | {_pct(p['task_top1'])} | "
                         f"{_pct(p['judge_top1'])} | {_pct(p.get('head_top1'))} | {p['si']:.3f} | {ps} | {p['ms_ssim']:.4f} |")
    lines.append("")
    if "correlations" in doc:
        c, pi = doc["correlations"]["points"], doc["correlations"]["per_image"]
        lines += [f"## Does the metric rank operating points like the judge? ({c['n_points']} points, all codecs and rates)",
                  "", "| metric | Spearman ρ vs judge top-1 | Kendall τ | per image: Spearman vs judge correct (n="
                  f"{pi['n_images']}) |", "|---|---:|---:|---:|"]
        for m, label in (("si", "SI"), ("psnr", "PSNR"), ("ms_ssim", "MS-SSIM")):
            lines.append(f"| {label} | {c[m]['spearman']:+.3f} (p={c[m]['spearman_p']:.1g}) | "
                         f"{c[m]['kendall']:+.3f} | {pi[m]:+.3f} |")
        lines.append("")
    for name, cd in doc.get("compressed_domain", {}).items():
        rgb = cd["rgb"]
        lines += [f"## Compressed-domain classification: `{cd['head']}` on {res[name]['label']}", "",
                  "The head reads the entropy-decoded latent (no synthesis, no pixels). RGB reference: the task classifier "
                  f"on the uncompressed images gets {_pct(rgb['task_top1'])} (judge {_pct(rgb['judge_top1'])}) from "
                  f"24 bpp raw or {rgb['png_bpp']:.2f} bpp PNG.", "",
                  "| q | bpp | latent head top-1 | task on decoded pixels | judge on decoded pixels | × fewer bits than raw RGB | × fewer than PNG |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for p in cd["points"]:
            lines.append(f"| {p['quality']} | {p['bpp']:.3f} | {_pct(p['head_top1'])} | {_pct(p['task_top1_decoded'])} | "
                         f"{_pct(p['judge_top1_decoded'])} | {p['x_fewer_bits_than_raw']:.0f} | {p['x_fewer_bits_than_png']:.1f} |")
        lines.append("")
        if "timing" in cd:
            t = cd["timing"]
            lines += [f"Time per image (q={t['quality']}, {t['threads']} ONNX Runtime thread, median; decode-then-classify "
                      f"uses `{t['classifier']}`):", "",
                      "| batch | compressed domain (ms) | decode + classify (ms) | speed-up |", "|---:|---:|---:|---:|"]
            for row in t["rows"]:
                lines.append(f"| {row['batch']} | {row['latent_ms_per_image']:.2f} | {row['decode_classify_ms_per_image']:.2f} | "
                             f"{row['speedup']:.1f}× |")
            lines.append("")
    return "\n".join(lines)


def plot_accuracy(doc: dict[str, Any], path: Path) -> Path:
    """Task | judge top-1 vs bpp (solid: whole file, dotted: payload), originals and 0.125 bpp marked;
    third panel: SI, PSNR and MS-SSIM rank against judge accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    o = doc["originals"]
    for ax, key, title in ((axes[0], "task_top1", "task classifier"), (axes[1], "judge_top1", "judge")):
        for i, (name, r) in enumerate(doc["codecs"].items()):
            pts = sorted(r["points"], key=lambda p: p["bpp"])
            col = colors[i % len(colors)]
            ours = r["kind"] == "saic"
            ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], "-o" if ours else "-.", color=col,
                    lw=2.2 if ours else 1.3, ms=4, label=f"{r['label']} (whole file)")
            pay = [p for p in pts if p["payload_bpp"] is not None]
            if pay:
                ax.plot([p["payload_bpp"] for p in pay], [p[key] for p in pay], ":", color=col, lw=1.2,
                        label=f"{r['label']} (payload only)")
            if key == "task_top1" and "head_top1" in pts[0]:
                ax.plot([p["bpp"] for p in pts], [p["head_top1"] for p in pts], "-s", color="black", lw=1.8, ms=4,
                        label=f"{r['latent_head']['id']} (compressed domain)")
        ax.axhline(o[key], color="grey", ls="--", lw=1, label="originals")
        ax.axvline(HEADLINE_BPP, color="red", ls=":", lw=1)
        ax.text(HEADLINE_BPP, 0.02, " 0.125 bpp", color="red", fontsize=8, transform=ax.get_xaxis_transform())
        ax.set_xscale("log")
        ticks = [0.125, 0.25, 0.5, 1, 2, 4, 8, 24]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_ylabel(f"top-1 of the {title} on decoded images")
        ax.set_title(f"tiny10/test ({doc['dataset']['n_images']} images): {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    ax = axes[2]
    pts = [p for r in doc["codecs"].values() for p in r["points"]]
    y = [p["judge_top1"] for p in pts]
    corr = doc.get("correlations", {}).get("points", {})
    for k, (m, label, marker) in enumerate((("si", "SI", "o"), ("psnr", "PSNR", "^"), ("ms_ssim", "MS-SSIM", "s"))):
        x = np.asarray([p[m] for p in pts], float)
        rank = (np.argsort(np.argsort(x)) + 0.5) / len(x) + (k - 1) * 0.006  # small offsets: equal ranks stay visible
        rho = corr.get(m, {}).get("spearman")
        ax.scatter(rank, y, s=18, marker=marker, facecolors="none", edgecolors=colors[k],
                   label=f"{label} (Spearman ρ {rho:+.2f})" if rho is not None else label)
    ax.set_xlabel("metric rank among operating points (0 = worst)")
    ax.set_ylabel("judge top-1")
    ax.set_title("does the metric rank points like the judge?")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ CLI


def _codec_dirs(root: Path) -> list[Path]:
    from saic.codec.registry import is_codec_dir

    return sorted(p for p in root.iterdir() if p.is_dir() and is_codec_dir(p))


def default_models(models_root: Path) -> list[Path]:
    """The served codecs (models/*) and the evaluation-only controls (models/controls/*)."""
    controls = models_root / "controls"
    return _codec_dirs(models_root) + (_codec_dirs(controls) if controls.is_dir() else [])


def _grid(text: str) -> tuple[str, list[int]]:
    name, _, qs = text.partition("=")
    if not qs:
        raise argparse.ArgumentTypeError("expected NAME=q1,q2,... (NAME: a baseline or a model directory name)")
    return name, [int(v) for v in qs.split(",") if v.strip()]


def register(modes: argparse._SubParsersAction) -> None:
    """Add `saic eval semantic`."""
    p = modes.add_parser(
        "semantic",
        help="classifier top-1 on decoded tiny10/test vs bpp (saic models, JPEG, WebP, AVIF), SI validation, "
             "compressed-domain head",
        description="Writes semantic.json, table.md and accuracy_vs_bpp.png to --out (docs/semantics-eval.md).",
    )
    p.add_argument("--models", type=Path, nargs="*", default=None,
                   help="saic codec model directories (default: every codec under models/ and models/controls/)")
    p.add_argument("--data", type=Path, default=None, help="folder holding tiny10/ (default $SAIC_DATA_DIR or ../shared/data)")
    p.add_argument("--out", type=Path, default=REPO / "models" / "semantic_eval")
    p.add_argument("--cache", type=Path, default=REPO / "runs" / "semantic_eval", help="streams/scores cache folder")
    p.add_argument("--baselines", default=",".join(DEFAULT_BASELINES), help=f"comma list from {','.join(BASELINES)}; '' for none")
    p.add_argument("--grid", type=_grid, action="append", default=[], metavar="NAME=Q,Q,...",
                   help="quality grid for one codec (baseline name or model directory name); repeatable")
    p.add_argument("--every", type=int, default=1, help="use every N-th test image (5: 580 images, quick runs)")
    p.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)), help="bpp values for the tables")
    p.add_argument("--classifier", type=Path, default=None, help="task classifier dir (default models/tiny10-classifier)")
    p.add_argument("--judge", type=Path, default=None, help="judge dir (default models/tiny10-judge)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per session")
    p.add_argument("--no-timing", action="store_true", help="skip the compressed-domain timing")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os

    data = args.data or Path(os.environ.get("SAIC_DATA_DIR", REPO / "../shared/data")).resolve()
    models = args.models if args.models is not None else default_models(REPO / "models")
    doc = run_semantic(
        models, data, args.out, args.cache, [b for b in args.baselines.split(",") if b], dict(args.grid),
        every=args.every, rates=[float(r) for r in args.rates.split(",") if r], classifier_dir=args.classifier,
        judge_dir=args.judge, threads=args.threads, timing=not args.no_timing, plot=not args.no_plot,
        show_progress=not args.quiet,
    )
    print((args.out / "table.md").read_text())
    print(f"wrote {args.out}/semantic.json, table.md{'' if args.no_plot else ', accuracy_vs_bpp.png'}", file=sys.stderr)
    return 0 if doc["codecs"] else 1
