"""Bjøntegaard delta rate and delta quality (VCEG-M33), pchip flavour.

As in the common ``bjontegaard`` package (``method="pchip"``) and CompressAI's plots:

* BD-rate: log10(rate) is interpolated as a function of quality (PSNR, or MS-SSIM in dB)
  with a monotone piecewise-cubic Hermite interpolant (PCHIP) for each curve; the mean
  difference over the *overlapping quality range* is turned into a percentage,
  ``(10**mean - 1) * 100``.  Negative = the test codec needs fewer bits for the same quality.
* BD-PSNR (BD-quality): quality as a function of log10(rate), mean difference over the
  overlapping log-rate range, in the quality's unit.  Positive = test is better.

``method="cubic"`` gives the original VCEG-M33 cubic polynomial fit (needs ≥ 4 points).
The curves need at least 2 points each (pchip) and some overlap, else the result is NaN.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator


def _prepare(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sort by x and average the y of repeated x (interpolation needs strictly increasing x)."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError("x and y must be 1-D sequences of the same length")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    ux, inverse = np.unique(xa, return_inverse=True)
    uy = np.bincount(inverse, weights=ya) / np.bincount(inverse)
    return ux, uy


def _mean_over(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Mean of the interpolant of (x, y) over [lo, hi]."""
    if method == "pchip":
        return float(PchipInterpolator(x, y).integrate(lo, hi)) / (hi - lo)
    if method == "cubic":
        poly = np.polyint(np.polyfit(x, y, 3))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo)) / (hi - lo)
    raise ValueError(f"unknown method {method!r} (use 'pchip' or 'cubic')")


def bd_delta(
    x_anchor: Sequence[float],
    y_anchor: Sequence[float],
    x_test: Sequence[float],
    y_test: Sequence[float],
    method: str = "pchip",
) -> float:
    """Mean of ``f_test - f_anchor`` over the overlap of the two x ranges (NaN if none)."""
    xa, ya = _prepare(x_anchor, y_anchor)
    xt, yt = _prepare(x_test, y_test)
    need = 4 if method == "cubic" else 2
    if len(xa) < need or len(xt) < need:
        return math.nan
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if not hi > lo:
        return math.nan
    return _mean_over(xt, yt, lo, hi, method) - _mean_over(xa, ya, lo, hi, method)


def bd_rate(
    rate_anchor: Sequence[float],
    quality_anchor: Sequence[float],
    rate_test: Sequence[float],
    quality_test: Sequence[float],
    method: str = "pchip",
) -> float:
    """BD-rate in percent (negative: the test codec saves bits at equal quality)."""
    d = bd_delta(quality_anchor, np.log10(rate_anchor), quality_test, np.log10(rate_test), method)
    return (10.0**d - 1.0) * 100.0 if math.isfinite(d) else math.nan


def bd_quality(
    rate_anchor: Sequence[float],
    quality_anchor: Sequence[float],
    rate_test: Sequence[float],
    quality_test: Sequence[float],
    method: str = "pchip",
) -> float:
    """BD-PSNR (or BD-MS-SSIM-dB): mean quality gain of the test codec at equal rate."""
    return bd_delta(np.log10(rate_anchor), quality_anchor, np.log10(rate_test), quality_test, method)


bd_psnr = bd_quality


def rd_frontier(rates: Sequence[float], qualities: Sequence[float]) -> tuple[list[float], list[float]]:
    """The efficient points of an RD curve: sorted by rate, each with higher quality than every
    cheaper point.  A point that costs more bits for less quality is never a sensible operating
    point, and it would make rate-as-a-function-of-quality multivalued for BD-rate."""
    pts = sorted(zip(rates, qualities))
    out_r: list[float] = []
    out_q: list[float] = []
    for r, q in pts:
        if not out_q or q > out_q[-1]:
            out_r.append(float(r))
            out_q.append(float(q))
    return out_r, out_q


def overlap_fraction(a: Sequence[float], b: Sequence[float]) -> float:
    """Overlap of two value ranges as a fraction of their union (0 = disjoint, 1 = identical)."""
    a_lo, a_hi = float(np.min(a)), float(np.max(a))
    b_lo, b_hi = float(np.min(b)), float(np.max(b))
    union = max(a_hi, b_hi) - min(a_lo, b_lo)
    if union <= 0:
        return 1.0
    return max(0.0, min(a_hi, b_hi) - max(a_lo, b_lo)) / union
