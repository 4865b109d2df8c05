"""Score a reconstruction against its original: the one function behind /v1/score-si and
gRPC ScoreSI.  When `saic.semantics.si` and its classifier model are available, SI and its
semantic parts come from `saic.semantics.si.si_parts`; otherwise only pixel-level parts are
returned, with `"si": null`, `"semantic": null` and a note saying why.

The pixel metrics follow the conventions of `saic.eval.metrics` (RGB PSNR over all samples;
5-scale MS-SSIM, 11-tap Gaussian sigma 1.5, valid borders, fewer scales for small images) in
numpy only, because the server must not import `saic.eval` (scipy)."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from saic.codec.errors import InvalidInputError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
PIXEL_ONLY_NOTE = "pixel-level parts only: 'si' and 'semantic' are null because {why}"


@functools.lru_cache(maxsize=1)
def semantic_scorer() -> tuple[Callable[[np.ndarray, np.ndarray], dict[str, Any]] | None, str]:
    """(si_parts, "") when semantic scoring works, else (None, why not).  Loaded once; the
    server calls this during warm-up so the classifier never loads on a user's request."""
    try:
        from saic.semantics import si
    except ImportError as exc:
        return None, f"saic.semantics.si is not available ({exc})"
    try:
        si.load_default()
    except Exception as exc:  # noqa: BLE001 - a missing/corrupt classifier model degrades to pixel-only
        return None, f"semantic classifier not loaded ({type(exc).__name__}: {exc})"
    return si.si_parts, ""


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    m = float(np.mean(d * d))
    return math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m)


# The 11-tap sigma=1.5 Gaussian with pytorch-msssim's float32 bits (as saic.eval.metrics uses).
_GAUSS_11 = np.array(
    [
        float.fromhex(h)
        for h in (
            "0x1.0d957p-10", "0x1.f1fe02p-8", "0x1.26eb18p-5", "0x1.bff0fep-4", "0x1.b43c3ep-3", "0x1.10656p-2",
            "0x1.b43c3ep-3", "0x1.bff0fep-4", "0x1.26eb18p-5", "0x1.f1fe02p-8", "0x1.0d957p-10",
        )
    ]
)


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of HxWxC along H and W (skipped along axes shorter than the window)."""
    for axis in (0, 1):
        if x.shape[axis] >= len(_GAUSS_11):
            x = np.lib.stride_tricks.sliding_window_view(x, len(_GAUSS_11), axis=axis) @ _GAUSS_11
    return x


def _ssim_cs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = _blur(x), _blur(y)
    sxx = _blur(x * x) - mu_x * mu_x
    syy = _blur(y * y) - mu_y * mu_y
    sxy = _blur(x * y) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = ((2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)) * cs
    return ssim.mean(axis=(0, 1)), cs.mean(axis=(0, 1))  # per channel


def _pool2(x: np.ndarray) -> np.ndarray:
    """2x2 mean pooling; an odd side is zero-padded on both ends (torch avg_pool2d, padding=1)."""
    for axis in (0, 1):
        n = x.shape[axis]
        if n % 2:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (1, 1)
            x = np.pad(x, pad)
        out_n = (n + 2 * (n % 2) - 2) // 2 + 1
        x = np.take(x, np.arange(2 * out_n), axis=axis)
        shape = list(x.shape)
        shape[axis : axis + 1] = [out_n, 2]
        x = x.reshape(shape).mean(axis=axis + 1)
    return x


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM on [0, 1] per channel, averaged; as many scales as fit (see module doc)."""
    side, n = min(a.shape[:2]), 1
    while n < len(MS_SSIM_WEIGHTS):
        side = (side + 2 * (side % 2) - 2) // 2 + 1
        if side < len(_GAUSS_11):
            break
        n += 1
    w = np.asarray(MS_SSIM_WEIGHTS[:n])
    if n < len(MS_SSIM_WEIGHTS):
        w = w / w.sum()
    x, y = a.astype(np.float64) / 255.0, b.astype(np.float64) / 255.0
    vals = []
    for s in range(n):
        ssim, cs = _ssim_cs(x, y)
        vals.append(np.maximum(ssim if s == n - 1 else cs, 0.0))
        if s < n - 1:
            x, y = _pool2(x), _pool2(y)
    return float(np.prod(np.stack(vals) ** w[:, None], axis=0).mean())


def score_si(original: np.ndarray, decoded: np.ndarray) -> dict[str, Any]:
    """SI of `decoded` versus `original` (HxWx3 uint8 each) with its parts, as a JSON-able dict."""
    if original.shape != decoded.shape:
        raise InvalidInputError(
            f"original is {original.shape[1]}x{original.shape[0]} but the reconstruction is "
            f"{decoded.shape[1]}x{decoded.shape[0]}"
        )
    p = psnr(original, decoded)
    parts: dict[str, float | None] = {"psnr_db": None if math.isinf(p) else p, "ms_ssim": ms_ssim(original, decoded)}
    scorer, why = semantic_scorer()
    if scorer is None:
        return {"si": None, "parts": parts, "semantic": None, "note": PIXEL_ONLY_NOTE.format(why=why)}
    sem = dict(scorer(original, decoded))
    numeric = {k: float(v) for k, v in sem.items() if k != "si" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    numeric.pop("psnr_db", None)  # same number as parts["psnr_db"] (None when infinite)
    return {"si": float(sem["si"]), "parts": {**parts, **numeric}, "semantic": sem, "note": ""}
