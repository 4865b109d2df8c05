"""The entropy-parameter path in exact integer arithmetic.

Everything that decides the entropy coder's tables — hyper-gain interpolation, the
hyper-synthesis network, and the mapping from predicted log-scale to a table index — is
computed here on integers.  The convolutions run as float64 matrix products on
integer-valued operands whose every partial sum stays below 2**53, so BLAS gives the
exact same result in any summation order, on any CPU and with any thread count.  A
bitstream therefore decodes bit-exactly everywhere; only the pixel path (synthesis) is
ordinary float.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

ACT_FRAC = 8  # fractional bits of activations, means and log-scales
WEIGHT_BITS = 15  # |w_int| < 2**15
ACT_LIMIT = float(1 << 20)  # activations clipped to +-2**20 (= +-4096.0): keeps sums < 2**53
PMF_BITS = 16  # integer frequency tables sum to 2**16
NUM_SCALES = 64
TAIL_SIGMAS = 7.0  # Gaussian tables cover +-ceil(7 sigma) before the escape symbol
QUALITY_MAX = 100


def level_position(quality: int, levels: int) -> tuple[int, int]:
    """quality in [0, 100] -> (lower level i, weight f of level i+1 in hundredths)."""
    if not 0 <= quality <= QUALITY_MAX:
        raise ValueError(f"quality {quality} outside [0, {QUALITY_MAX}]")
    p = quality * (levels - 1)
    i = min(p // QUALITY_MAX, levels - 2)
    return i, p - i * QUALITY_MAX


def interp_int(table: np.ndarray, quality: int) -> np.ndarray:
    """Exact linear interpolation of an integer gain table (levels, C) at a quality."""
    i, f = level_position(quality, table.shape[0])
    return (table[i] * (QUALITY_MAX - f) + table[i + 1] * f) // QUALITY_MAX


def interp_float(table: np.ndarray, quality: int) -> np.ndarray:
    """Float interpolation for the encoder-only and pixel-only gains (same rule as training)."""
    i, f = level_position(quality, table.shape[0])
    w = f / QUALITY_MAX
    return ((1 - w) * table[i] + w * table[i + 1]).astype(np.float32)


def _conv_same(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """'same' zero-padded stride-1 conv of integer-valued float64 a (B,C,H,W) with w (O,C,k,k)."""
    b, c, h, wd = a.shape
    o, _, k, _ = w.shape
    if k == 1:
        cols = a.transpose(0, 2, 3, 1).reshape(-1, c)
    else:
        p = k // 2
        ap = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
        win = np.lib.stride_tricks.sliding_window_view(ap, (k, k), axis=(2, 3))  # B,C,H,W,k,k
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    out = cols @ w.reshape(o, -1).T.astype(np.float64)
    return out.reshape(b, h, wd, o).transpose(0, 3, 1, 2)


def _layer(a: np.ndarray, w: np.ndarray, bias: np.ndarray, frac: int, relu: bool) -> np.ndarray:
    acc = _conv_same(a, w) + bias[None, :, None, None]
    out = np.floor((acc + float(1 << (frac - 1))) / float(1 << frac)) if frac > 0 else acc
    if relu:
        out = np.maximum(out, 0.0)
    return np.clip(out, -ACT_LIMIT, ACT_LIMIT)


def _pixel_shuffle(a: np.ndarray) -> np.ndarray:
    b, c, h, w = a.shape
    return a.reshape(b, c // 4, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def hyper_synthesis(
    t: Mapping[str, np.ndarray], z_hat: np.ndarray, qualities: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """z_hat int (B,NZ,h,w) -> (means_int, scale_index) at (B,M,4h,4w); means in 2**-ACT_FRAC units."""
    gains = np.stack([interp_int(t["inv_hgain"], q) for q in qualities])  # B,NZ at 2**-ACT_FRAC
    a = np.clip(z_hat.astype(np.float64) * gains[:, :, None, None], -ACT_LIMIT, ACT_LIMIT)
    a = _layer(a, t["c1_w"], t["c1_b"], int(t["c1_frac"]), relu=True)
    a = np.maximum(_pixel_shuffle(_layer(a, t["c2_w"], t["c2_b"], int(t["c2_frac"]), relu=False)), 0.0)
    a = np.maximum(_pixel_shuffle(_layer(a, t["c3_w"], t["c3_b"], int(t["c3_frac"]), relu=False)), 0.0)
    out = _layer(a, t["c4_w"], t["c4_b"], int(t["c4_frac"]), relu=False).astype(np.int64)
    m = out.shape[1] // 2
    means, log_scales = out[:, :m], out[:, m:]
    index = np.searchsorted(t["scale_thresholds"], log_scales, side="right")
    return means, index.astype(np.int32)
