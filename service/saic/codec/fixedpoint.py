"""The entropy-parameter path in exact integer arithmetic.

Everything that decides the entropy coder's tables — hyper-gain interpolation, the
hyper-synthesis network, the context model, and the mapping from predicted log-scale to a
table index — is computed here on integers.  The convolutions run as float64 matrix products on
integer-valued operands whose every partial sum stays below 2**53, so BLAS gives the
exact same result in any summation order, on any CPU and with any thread count.  A
bitstream therefore decodes bit-exactly everywhere; only the pixel path (synthesis) is
ordinary float.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, Mapping

import numpy as np
from threadpoolctl import ThreadpoolController

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


class _Layer:
    """One integer conv layer, prepared once: float64 weights in im2col order (ky, kx, c)."""

    def __init__(self, matrix: np.ndarray, bias: np.ndarray, frac: int, k: int = 1):
        self.k = k
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        # (acc + bias + 2**(f-1)) * 2**-f equals the reference (acc + bias + 2**(f-1)) / 2**f: all
        # integers below 2**53 and scaling by a power of two is exact
        self.offset = bias.astype(np.float64) + (float(1 << (frac - 1)) if frac > 0 else 0.0)
        self.scale = 2.0**-frac if frac > 0 else 1.0

    @classmethod
    def conv(cls, w: np.ndarray, bias: np.ndarray, frac: int, shuffle: bool = False) -> "_Layer":
        """From conv weights (O, C, k, k); `shuffle` reorders the outputs for a pixel shuffle."""
        o, c, k, _ = w.shape
        if shuffle:  # output channels reordered from (c, i, j) to (i, j, c): the shuffle copies whole pixels
            perm = np.arange(o).reshape(o // 4, 4).T.ravel()
            w, bias = w[perm], bias[perm]
        return cls(w.transpose(2, 3, 1, 0).reshape(k * k * c, o), bias, frac, k)

    def __call__(self, a: np.ndarray, relu: bool) -> np.ndarray:
        """a: (B, H+k-1, W+k-1, C) zero-padded NHWC -> (B*H*W, O) requantised, clipped."""
        b, hp, wp, c = a.shape
        h, w = hp - self.k + 1, wp - self.k + 1
        if self.k == 1:
            cols = a.reshape(-1, c)
        else:
            cols6 = np.empty((b, h, w, self.k, self.k, c))
            for dy in range(self.k):
                for dx in range(self.k):
                    cols6[:, :, :, dy, dx] = a[:, dy : dy + h, dx : dx + w]
            cols = cols6.reshape(b * h * w, -1)
        return self.rows(cols, relu)

    def rows(self, cols: np.ndarray, relu: bool) -> np.ndarray:
        """Prepared im2col rows (N, K) -> (N, O) requantised, clipped."""
        return self._requantise(cols @ self.matrix, self.offset, relu)

    def channels_first(self, a: np.ndarray) -> np.ndarray:
        """1x1 layer on NHWC a (B,H,W,C) -> (B,O,H,W): the product lands in NCHW, no transpose copy."""
        b, h, w, c = a.shape
        out = np.matmul(self.matrix.T, a.reshape(b, h * w, c).transpose(0, 2, 1))
        return self._requantise(out, self.offset[:, None], relu=False).reshape(b, -1, h, w)

    def _requantise(self, out: np.ndarray, offset: np.ndarray, relu: bool) -> np.ndarray:
        out += offset
        if self.scale != 1.0:
            out *= self.scale
            np.floor(out, out=out)
        np.clip(out, 0.0 if relu else -ACT_LIMIT, ACT_LIMIT, out=out)
        return out


_BLAS_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    with _BLAS_LOCK, _blas().limit(limits=1, user_api="blas"):
        yield


def _shuffled(out: np.ndarray, b: int, h: int, w: int, pad: int) -> np.ndarray:
    """(B*H*W, 4C) in (i, j, c) channel order -> pixel shuffle x2, NHWC, zero border of `pad`."""
    c = out.shape[1] // 4
    dst = np.zeros((b, 2 * h + 2 * pad, 2 * w + 2 * pad, c))
    inner = dst[:, pad : pad + 2 * h, pad : pad + 2 * w].reshape(b, h, 2, w, 2, c)  # a view
    inner[...] = out.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return dst


class HyperSynthesis:
    """The integer hyper-synthesis of one model, its weights converted once at load.

    Runs in NHWC (im2col copies whole pixels; the last 1x1 layer writes NCHW directly);
    results are identical to the NCHW reference because every operand is an integer-valued
    float64 (exact at any summation order)."""

    def __init__(self, t: Mapping[str, np.ndarray]):
        self._inv_hgain = np.asarray(t["inv_hgain"])
        # scale index = searchsorted(thresholds, log_scale, "right"), tabulated over the thresholds' span
        thresholds = np.asarray(t["scale_thresholds"])
        self._lo, self._hi = int(thresholds[0]) - 1, int(thresholds[-1])
        self._index = np.searchsorted(thresholds, np.arange(self._lo, self._hi + 1), side="right").astype(np.int32)
        self._c = [
            _Layer.conv(t[f"c{i}_w"], t[f"c{i}_b"], int(t[f"c{i}_frac"]), shuffle=i in (2, 3)) for i in (1, 2, 3, 4)
        ]
        if self._c[3].k != 1:
            raise ValueError("the last hyper-synthesis layer must be 1x1 (entropy.npz c4_w)")

    def __call__(self, z_hat: np.ndarray, qualities: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """z_hat int (B,NZ,h,w) -> (means_int int64, scale_index int32) at (B,M,4h,4w)."""
        means, log_scales = self.parameters(z_hat, qualities)
        return means, self.scale_index(log_scales)

    def parameters(self, z_hat: np.ndarray, qualities: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """z_hat int (B,NZ,h,w) -> (means, log-scales) at (B,M,4h,4w), int64 in 2**-ACT_FRAC units.

        BLAS runs single-threaded here: these GEMMs are small, and OpenBLAS's spinning worker
        threads cost 2-4x the CPU time (and wall time on a loaded machine) for no gain."""
        with single_threaded_blas():
            return self._run(z_hat, qualities)

    def scale_index(self, log_scales: np.ndarray) -> np.ndarray:
        """Log-scales (2**-ACT_FRAC units) -> int32 index of the entropy coder's scale table."""
        clipped = np.clip(log_scales, self._lo, self._hi) - self._lo
        return self._index.take(clipped.astype(np.intp))

    def _run(self, z_hat: np.ndarray, qualities: list[int]) -> tuple[np.ndarray, np.ndarray]:
        b, nz, h, w = z_hat.shape
        gains = np.stack([interp_int(self._inv_hgain, q) for q in qualities]).astype(np.float64)
        p = self._c[0].k // 2
        a = np.zeros((b, h + 2 * p, w + 2 * p, nz))
        np.clip(z_hat.transpose(0, 2, 3, 1) * gains[:, None, None, :], -ACT_LIMIT, ACT_LIMIT, out=a[:, p : p + h, p : p + w])
        a = self._c[0](a, relu=True).reshape(b, h, w, -1)
        a = np.pad(a, ((0, 0), (self._c[1].k // 2,) * 2, (self._c[1].k // 2,) * 2, (0, 0)))
        a = _shuffled(self._c[1](a, relu=True), b, h, w, self._c[2].k // 2)
        a = _shuffled(self._c[2](a, relu=True), b, 2 * h, 2 * w, 0)
        out = self._c[3].channels_first(a).astype(np.int64)
        m = out.shape[1] // 2
        return out[:, :m], out[:, m:]


# the 5x5 window of the context convolutions
WINDOW = [(dy, dx) for dy in range(5) for dx in range(5)]
CONTEXT_CHUNK = 2048  # latent positions per context GEMM (x batch): bounds its im2col memory


def anchor_mask(h: int, w: int) -> np.ndarray:
    """(h, w) bool: the checkerboard's anchors, (i + j) even."""
    return (np.add.outer(np.arange(h), np.arange(w)) % 2) == 0


def context_prefix(step: int, slice_width: int, dy: int, dx: int) -> int:
    """How many leading latent channels are already decoded at window tap (dy, dx) when step
    `step` is decoded (steps: slice s's anchors are 2s, its non-anchors 2s + 1).  Earlier
    slices are complete; the current slice's anchors are known to its non-anchor step, and
    they sit at the opposite-colour taps."""
    s, non_anchor = divmod(step, 2)
    return (s + 1) * slice_width if non_anchor and (dy + dx) % 2 == 1 else s * slice_width


def context_parts(slices: int, channels: int, h: int, w: int) -> list[tuple[slice, np.ndarray]]:
    """The coding order of a context model: per channel slice, its anchors then its non-anchors
    as (channels, (h, w) position mask); without a context (slices 0) one part, everything."""
    if slices == 0:
        return [(slice(0, channels), np.ones((h, w), bool))]
    width = channels // slices
    anchor = anchor_mask(h, w)
    return [(slice(s * width, (s + 1) * width), m) for s in range(slices) for m in (anchor, ~anchor)]


class ContextModel:
    """Integer twin of saic.training.model.ContextModel: the means and log-scales of each
    coding step's latents from everything decoded before it and the hyper-prior's prediction.
    Each step's window convolution reads only the (tap, channel) pairs already decoded."""

    def __init__(self, t: Mapping[str, np.ndarray]):
        self.slices = int(t["context_slices"])
        self._lo, self._hi = (float(v) for v in t["x_log_scale_range"])
        self._steps = []
        for k in range(1, 2 * self.slices):
            w = np.asarray(t[f"x{k}_w"])
            width = w.shape[1] // self.slices
            taps = [(dy, dx, context_prefix(k, width, dy, dx)) for dy, dx in WINDOW]
            taps = [tap for tap in taps if tap[2]]
            matrix = np.concatenate([w[:, :n, dy, dx].T for dy, dx, n in taps], axis=0)
            layers = [_Layer(matrix, t[f"x{k}_b"], int(t[f"x{k}_frac"]))]
            layers += [_Layer.conv(t[f"p{k}{i}_w"], t[f"p{k}{i}_b"], int(t[f"p{k}{i}_frac"])) for i in (1, 2, 3)]
            self._steps.append((taps, layers))

    def __call__(
        self, step: int, y_hat: np.ndarray, means: np.ndarray, log_scales: np.ndarray, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Parameters of step `step` >= 1 at `positions` ((h, w) mask) for its channel slice.

        y_hat: decoded latents in 2**-ACT_FRAC units (B,M,H,W), read only where already decoded;
        means, log_scales: the hyper-prior's.  Returns int64 (means, log_scales) (B, width, P)."""
        taps, (ctx, p1, p2, p3) = self._steps[step - 1]
        b, m, h, w = means.shape
        width = m // self.slices
        ii, jj = np.nonzero(positions)
        if ii.size == 0:
            return np.zeros((b, width, 0), np.int64), np.zeros((b, width, 0), np.int64)
        s = (step // 2) * width
        new_mu = np.empty((b, width, ii.size), np.int64)
        new_ls = np.empty((b, width, ii.size), np.int64)
        with single_threaded_blas():
            a = np.zeros((b, h + 4, w + 4, max(n for _, _, n in taps)))
            a[:, 2 : 2 + h, 2 : 2 + w] = y_hat[:, : a.shape[3]].transpose(0, 2, 3, 1)
            np.clip(a, -ACT_LIMIT, ACT_LIMIT, out=a)
            # positions in chunks: the im2col rows of a large image would otherwise take GBs
            for lo in range(0, ii.size, CONTEXT_CHUNK):
                ci, cj = ii[lo : lo + CONTEXT_CHUNK], jj[lo : lo + CONTEXT_CHUNK]
                cols = np.concatenate([a[:, ci + dy, cj + dx, :n] for dy, dx, n in taps], axis=2)  # (B, P, K)
                c = ctx.rows(cols.reshape(b * ci.size, -1), relu=False)
                mu = means[:, :, ci, cj].transpose(0, 2, 1).reshape(-1, m).astype(np.float64)
                ls = np.clip(log_scales[:, :, ci, cj].transpose(0, 2, 1).reshape(-1, m), self._lo, self._hi)
                d = p3.rows(p2.rows(p1.rows(np.concatenate([mu, ls, c], axis=1), relu=True), relu=True), relu=False)
                part = (b, ci.size, width)
                new_mu[:, :, lo : lo + ci.size] = (mu[:, s : s + width] + d[:, :width]).reshape(part).transpose(0, 2, 1)
                new_ls[:, :, lo : lo + ci.size] = np.clip(
                    ls[:, s : s + width] + d[:, width:], self._lo, self._hi
                ).reshape(part).transpose(0, 2, 1)
        return new_mu, new_ls


def hyper_synthesis(
    t: Mapping[str, np.ndarray], z_hat: np.ndarray, qualities: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """z_hat int (B,NZ,h,w) -> (means_int, scale_index) at (B,M,4h,4w); means in 2**-ACT_FRAC units.

    One-off form; a loaded model keeps a `HyperSynthesis` so the weights are prepared once."""
    return HyperSynthesis(t)(z_hat, qualities)

