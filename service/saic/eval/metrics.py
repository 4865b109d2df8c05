"""Image-quality metrics for rate–distortion evaluation (numpy/scipy only, no torch).

Both functions take two HxWx3 uint8 RGB arrays.  They follow the conventions of the
learned-compression literature (CompressAI's `eval_model`, pytorch-msssim) so that our
numbers are comparable with published curves:

* `psnr`: RGB PSNR, one MSE over all pixels and channels, data range 255.
* `ms_ssim`: Wang, Simoncelli & Bovik 2003 — 5 scales, weights
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 11×11 Gaussian window with σ = 1.5 applied
  separably with *valid* borders, K = (0.01, 0.03), contrast-structure terms clipped at 0,
  2×2 average-pool downsampling (zero padding on odd sides, as torch's ``avg_pool2d``),
  computed per RGB channel on [0, 1] (float64) and averaged over channels.  This reproduces
  ``pytorch_msssim.ms_ssim(x, y, data_range=1.0)`` on float64 tensors to ~1e-10 (see tests/test_eval_metrics.py).

Small images: the standard 5-scale MS-SSIM needs the coarsest scale to be at least as wide
as the window, i.e. a shorter side > 160 px (pytorch-msssim asserts this).  For smaller
images (e.g. 64×64 tiny10) `ms_ssim` uses only as many scales as fit (64 px → 3 scales)
with the first weights renormalised to sum to 1; below 11 px the window is skipped along
that axis (as pytorch-msssim's SSIM does).  `ms_ssim_scales` tells how many were used.
Numbers on small images are therefore *not* comparable to 5-scale numbers.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB arrays, got {a.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise TypeError(f"expected uint8 arrays, got {a.dtype} and {b.dtype}")
    return a, b


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over all pixels and channels, in uint8 units."""
    a, b = _check_pair(a, b)
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """RGB PSNR in dB (data range 255); ``inf`` for identical images."""
    m = mse(a, b)
    if m == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / m)


# The 11-tap σ=1.5 Gaussian exactly as pytorch-msssim builds it (float32 exp and sum).  Those
# taps do not sum to exactly 1 and SSIM's variance terms amplify that (≈2e-5 on MS-SSIM), so
# we use the same bits rather than a float64 Gaussian to match the reference library to ~1e-12.
_TORCH_GAUSS_11_15 = tuple(
    float.fromhex(h)
    for h in (
        "0x1.0d957p-10", "0x1.f1fe02p-8", "0x1.26eb18p-5", "0x1.bff0fep-4", "0x1.b43c3ep-3", "0x1.10656p-2",
        "0x1.b43c3ep-3", "0x1.bff0fep-4", "0x1.26eb18p-5", "0x1.f1fe02p-8", "0x1.0d957p-10",
    )
)


def _gauss_1d(size: int = WIN_SIZE, sigma: float = WIN_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps (the pytorch-msssim bits for the standard window)."""
    if (size, sigma) == (11, 1.5):
        return np.asarray(_TORCH_GAUSS_11_15, dtype=np.float64)
    coords = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _blur_valid(x: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filter over axes 0 and 1 of a (H, W, C) array."""
    k = win.size
    half = k // 2
    out = x
    for axis in (0, 1):
        n = out.shape[axis]
        if n < k:  # too small to filter along this axis: skip it (pytorch-msssim does the same)
            continue
        full = correlate1d(out, win, axis=axis, mode="constant", cval=0.0)
        out = np.take(full, np.arange(half, n - half), axis=axis)
    return out


def _ssim_cs(x: np.ndarray, y: np.ndarray, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean SSIM and mean contrast-structure term for (H, W, C) in [0, 1]."""
    c1 = K1**2
    c2 = K2**2
    mu1 = _blur_valid(x, win)
    mu2 = _blur_valid(y, win)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _blur_valid(x * x, win) - mu1_sq
    s2 = _blur_valid(y * y, win) - mu2_sq
    s12 = _blur_valid(x * y, win) - mu12
    cs_map = (2.0 * s12 + c2) / (s1 + s2 + c2)
    ssim_map = ((2.0 * mu12 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return ssim_map.mean(axis=(0, 1)), cs_map.mean(axis=(0, 1))


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """2×2 average pooling like ``avg_pool2d(kernel_size=2, padding=side % 2)`` (zeros count)."""
    for axis in (0, 1):
        n = x.shape[axis]
        p = n % 2
        if p:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (1, 1)
            x = np.pad(x, pad)
        out_n = (n + 2 * p - 2) // 2 + 1
        x = np.take(x, np.arange(2 * out_n), axis=axis)
        shape = list(x.shape)
        shape[axis : axis + 1] = [out_n, 2]
        x = x.reshape(shape).mean(axis=axis + 1)
    return x


def ms_ssim_scales(height: int, width: int, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Number of MS-SSIM scales usable for an image of this size (5 when min side > 160)."""
    side = min(height, width)
    n = 1
    while n < max_scales:
        p = side % 2
        side = (side + 2 * p - 2) // 2 + 1
        if side < WIN_SIZE:
            break
        n += 1
    return n


def ms_ssim(a: np.ndarray, b: np.ndarray, scales: int | None = None) -> float:
    """MS-SSIM of two RGB uint8 images (per-channel on [0, 1], averaged over channels).

    `scales` defaults to 5, or fewer for images whose shorter side is ≤ 160 px (see module
    docstring); the weights used are the first `scales` standard weights, renormalised.
    """
    a, b = _check_pair(a, b)
    n = ms_ssim_scales(a.shape[0], a.shape[1]) if scales is None else int(scales)
    if not 1 <= n <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"scales must be in [1, {len(MS_SSIM_WEIGHTS)}], got {n}")
    weights = np.asarray(MS_SSIM_WEIGHTS[:n], dtype=np.float64)
    if n < len(MS_SSIM_WEIGHTS):  # the standard weights are used as published (they sum to 1.0001)
        weights = weights / weights.sum()
    x = a.astype(np.float64) / 255.0
    y = b.astype(np.float64) / 255.0
    win = _gauss_1d()
    mcs: list[np.ndarray] = []
    ssim_c = np.ones(3)
    for i in range(n):
        ssim_c, cs = _ssim_cs(x, y, win)
        if i < n - 1:
            mcs.append(np.maximum(cs, 0.0))
            x = _avg_pool2(x)
            y = _avg_pool2(y)
    stack = np.stack(mcs + [np.maximum(ssim_c, 0.0)], axis=0)  # (scale, channel)
    per_channel = np.prod(stack ** weights[:, None], axis=0)
    return float(per_channel.mean())


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, ``-10 log10(1 - v)`` (how curves and BD-rates are usually shown)."""
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)
