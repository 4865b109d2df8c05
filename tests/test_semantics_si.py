"""SI metric (saic.semantics.si) with the shipped classifier and real JPEG distortion."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import MODELS, make_photo, shared_data_dir
from saic.codec.errors import InvalidImageError, InvalidParameterError
from saic.semantics import si
from saic.semantics.classifier import MODEL_DIR_ENV, SemanticClassifier

# not 75: tiny10 files are JPEGs saved at ~75, and re-encoding at the same quality is nearly lossless
QUALITIES = (95, 60, 40, 20, 10, 5)


@pytest.fixture(scope="module")
def scorer() -> si.SIScorer:
    return si.SIScorer(SemanticClassifier(MODELS / "tiny10-classifier", threads=1))


def jpeg(im: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def sample_images(n: int = 10) -> list[np.ndarray]:
    """n tiny10 test images (one per class, in class order); synthetic photos without the data."""
    root = shared_data_dir() / "tiny10" / "test"
    if not root.is_dir():
        return [make_photo(64, 64, seed=s) for s in range(n)]
    out = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir())[:n]:
        out.append(np.asarray(Image.open(sorted(cls.iterdir())[7]).convert("RGB")))
    return out


def test_identity_is_the_maximum(scorer: si.SIScorer) -> None:
    images = sample_images(4)
    for r in scorer.score_batch(images, images):
        assert (r.si, r.pixel, r.semantic, r.agreement) == (1.0, 1.0, 1.0, 1.0)
        assert r.top1_match and math.isinf(r.psnr_db) and r.feature_error == 0.0
    for im in images:
        worse = scorer.score(im, jpeg(im, 90))
        assert 0.0 < worse.si < 1.0


def test_si_decreases_as_jpeg_quality_drops(scorer: si.SIScorer) -> None:
    images = sample_images(10)
    rows = {q: scorer.score_batch(images, [jpeg(im, q) for im in images]) for q in QUALITIES}
    mean = {q: {k: float(np.mean([getattr(r, k) for r in rows[q]])) for k in ("si", "pixel", "semantic")}
            for q in QUALITIES}
    for hi, lo in zip(QUALITIES, QUALITIES[1:]):
        for k in ("si", "pixel", "semantic"):
            assert mean[lo][k] < mean[hi][k], f"mean {k}: q={lo} {mean[lo][k]:.4f} >= q={hi} {mean[hi][k]:.4f}"
    assert mean[95]["si"] > 0.8 and mean[5]["si"] < mean[95]["si"] - 0.15  # the range is actually used


def test_batch_and_single_agree(scorer: si.SIScorer) -> None:
    images = sample_images(4) + [make_photo(512, 768, seed=2)]
    decoded = [jpeg(im, 20) for im in images]
    batch = scorer.score_batch(images, decoded)
    for im, d, r in zip(images, decoded, batch):
        single = scorer.score(im, d)
        assert single.original_class == r.original_class and single.decoded_class == r.decoded_class
        for k in ("si", "pixel", "semantic", "agreement", "feature_error"):
            assert getattr(single, k) == pytest.approx(getattr(r, k), rel=1e-4, abs=1e-6)


def test_terms_and_ranges(scorer: si.SIScorer) -> None:
    im = sample_images(1)[0]
    r = scorer.score(im, jpeg(im, 10))
    p = scorer.params
    assert r.si == pytest.approx(p.w_pixel * r.pixel + p.w_semantic * r.semantic + p.w_agreement * r.agreement)
    assert r.pixel == pytest.approx(1 / (1 + 10 ** ((p.psnr0_db - r.psnr_db) / 10)))
    assert r.semantic == pytest.approx(1 / (1 + r.feature_error / p.e0))
    assert 0 <= r.agreement <= 1 and r.agreement == pytest.approx(min(1.0, r.p_decoded / r.p_original))
    flat = np.full_like(im, 128)
    worst = scorer.score(im, flat)
    assert 0.0 <= worst.si < r.si


def test_label_sets_the_reference_class(scorer: si.SIScorer) -> None:
    im = sample_images(1)[0]
    d = jpeg(im, 30)
    free = scorer.score(im, d)
    other = (scorer.classifier.classes.index(free.original_class) + 1) % len(scorer.classifier.classes)
    forced = scorer.score(im, d, label=other)
    assert forced.reference_class == scorer.classifier.classes[other]
    assert forced.pixel == free.pixel and forced.feature_error != free.feature_error
    with pytest.raises(InvalidParameterError):
        scorer.score(im, d, label=10)


def test_bad_pairs_rejected(scorer: si.SIScorer) -> None:
    im = make_photo(64, 64)
    with pytest.raises(InvalidParameterError):
        scorer.score(im, make_photo(64, 48))
    with pytest.raises(InvalidImageError):
        scorer.score(im, im.astype(np.float32))
    with pytest.raises(InvalidParameterError):
        scorer.score_batch([im, im], [im])
    assert scorer.score_batch([], []) == []


def test_si_parts_is_json_ready_and_uses_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_DIR_ENV, str(MODELS / "tiny10-classifier"))
    im = make_photo(96, 128, seed=5)
    parts = si.si_parts(im, im)
    assert json.loads(json.dumps(parts)) == parts
    assert parts["si"] == 1.0 and parts["psnr_db"] is None
    assert {"si", "pixel", "semantic", "agreement", "original_class", "decoded_class", "top1_match"} <= parts.keys()
    parts2 = si.si_parts(im, jpeg(im, 25))
    assert parts2["si"] < 1.0 and isinstance(parts2["psnr_db"], float)
    assert si.load_default() is si.load_default()
