"""Semantic Information (SI): how much of an original image a decoded image keeps, for a
human (pixels) and for the downstream classifier (features + prediction).  docs/si.md.

    SI = w_p * P + w_s * S + w_a * A            in [0, 1], 1 for an identical image

    P = 1 / (1 + MSE / MSE_0)                  pixel term, MSE over all RGB samples (0..255)
                                               at full resolution; MSE_0 = 255^2 / 10^(PSNR_0/10)
    e = sum_k g_k ||F_k - F^_k||^2 / sum_k g_k ||F_k||^2     GSW-weighted relative feature error
    S = 1 / (1 + e / e_0)                      semantic term
    A = min(1, p^(c) / p(c))                   agreement: probability the decoded image gives
                                               the original's class c, relative to the original's

F, F^ are the classifier's last feature maps of original and decoded (both through the same
resize rule), g the GSW of class c (true label when given, else the original's top-1).
The service calls `si_parts` for POST /v1/score-si.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from saic.codec.errors import InvalidImageError, InvalidParameterError

from .classifier import SemanticClassifier, default_model_dir, softmax
from .gsw import gsw_weights


@dataclass(frozen=True)
class SIParams:
    """Calibration (docs/si.md): each term is 0.5 at its reference distortion."""

    psnr0_db: float = 25.0  # P = 0.5 at 25 dB PSNR
    e0: float = 0.2  # S = 0.5 at 20% relative GSW-weighted feature error (feature SNR 7 dB)
    w_pixel: float = 0.25
    w_semantic: float = 0.5
    w_agreement: float = 0.25


@dataclass(frozen=True)
class SIResult:
    si: float
    pixel: float
    semantic: float
    agreement: float
    psnr_db: float  # inf for identical images
    feature_error: float  # e above
    original_class: str
    decoded_class: str
    top1_match: bool
    p_original: float  # p(c) given by the original
    p_decoded: float  # p^(c) given by the decoded image
    reference_class: str  # c: the class GSW and agreement refer to

    def to_dict(self) -> dict:
        """JSON-ready (an infinite PSNR becomes None)."""
        d = asdict(self)
        if not math.isfinite(d["psnr_db"]):
            d["psnr_db"] = None
        return d


def _pair(original: np.ndarray, decoded: np.ndarray) -> None:
    for name, im in (("original", original), ("decoded", decoded)):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise InvalidImageError(f"{name}: expected HxWx3 uint8, got {getattr(im, 'dtype', type(im))} "
                                    f"{getattr(im, 'shape', '')}")
    if original.shape != decoded.shape:
        raise InvalidParameterError(f"original {original.shape[:2]} and decoded {decoded.shape[:2]} differ in size")


def mse_rgb(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


class SIScorer:
    """SI with one classifier and one parameter set."""

    def __init__(self, classifier: SemanticClassifier, params: SIParams = SIParams()):
        self.classifier = classifier
        self.params = params
        self.mse0 = 255.0**2 / 10 ** (params.psnr0_db / 10)

    def score(self, original: np.ndarray, decoded: np.ndarray, label: int | None = None) -> SIResult:
        return self.score_batch([original], [decoded], None if label is None else [label])[0]

    def score_batch(self, originals: Sequence[np.ndarray], decoded: Sequence[np.ndarray],
                    labels: Sequence[int] | None = None) -> list[SIResult]:
        """Score N pairs with one classifier pass over 2N images (any sizes, pairwise equal)."""
        if len(originals) != len(decoded) or (labels is not None and len(labels) != len(originals)):
            raise InvalidParameterError("originals, decoded (and labels) must have the same length")
        for o, d in zip(originals, decoded):
            _pair(o, d)
        n = len(originals)
        if n == 0:
            return []
        logits, feats = self.classifier.predict(list(originals) + list(decoded))
        probs = softmax(logits.astype(np.float64))
        top = logits.argmax(1)
        k = len(self.classifier.classes)
        ref = top[:n] if labels is None else np.asarray(labels, np.int64)
        if ref.min() < 0 or ref.max() >= k:
            raise InvalidParameterError(f"labels must be class indices in [0, {k})")
        g = gsw_weights(self.classifier.head_weight, ref)  # (N, C)
        f, fh = feats[:n].astype(np.float64), feats[n:].astype(np.float64)
        num = np.einsum("nc,nc->n", g, ((f - fh) ** 2).sum(axis=(2, 3)))
        den = np.einsum("nc,nc->n", g, (f**2).sum(axis=(2, 3)))
        err = np.where(num == 0, 0.0, num / np.maximum(den, 1e-12))
        p = self.params
        out = []
        for i in range(n):
            mse = mse_rgb(originals[i], decoded[i])
            pixel = 1.0 / (1.0 + mse / self.mse0)
            semantic = 1.0 / (1.0 + err[i] / p.e0)
            c = int(ref[i])
            p_o, p_d = float(probs[i, c]), float(probs[n + i, c])
            agreement = 1.0 if p_d >= p_o else p_d / p_o
            si = p.w_pixel * pixel + p.w_semantic * semantic + p.w_agreement * agreement
            out.append(SIResult(
                si=float(si), pixel=float(pixel), semantic=float(semantic), agreement=float(agreement),
                psnr_db=float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse)),
                feature_error=float(err[i]),
                original_class=self.classifier.classes[int(top[i])],
                decoded_class=self.classifier.classes[int(top[n + i])],
                top1_match=bool(top[i] == top[n + i]), p_original=p_o, p_decoded=p_d,
                reference_class=self.classifier.classes[c],
            ))
        return out


@lru_cache(maxsize=4)
def _load(path: str) -> SIScorer:
    return SIScorer(SemanticClassifier(path))


def load_default() -> SIScorer:
    """The scorer for $SAIC_SEMANTIC_MODEL_DIR or models/tiny10-classifier (loaded once)."""
    return _load(str(Path(default_model_dir()).resolve()))


def score(original: np.ndarray, decoded: np.ndarray, label: int | None = None) -> SIResult:
    return load_default().score(original, decoded, label)


def score_batch(originals: Sequence[np.ndarray], decoded: Sequence[np.ndarray],
                labels: Sequence[int] | None = None) -> list[SIResult]:
    return load_default().score_batch(originals, decoded, labels)


def si_parts(original: np.ndarray, decoded: np.ndarray) -> dict:
    """JSON-ready SI breakdown for POST /v1/score-si (HxWx3 uint8, same size), with the
    classifier's id and hash: SI values are only comparable under the same classifier."""
    scorer = load_default()
    return {**scorer.score(original, decoded).to_dict(), "model": scorer.classifier.id,
            "model_sha256": scorer.classifier.sha256}
