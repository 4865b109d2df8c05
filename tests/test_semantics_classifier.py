"""The shipped tiny10 classifiers through the torch-free runtime (saic.semantics.classifier)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import MODELS, make_photo, shared_data_dir
from saic.codec.errors import InvalidImageError, ModelLoadError
from saic.semantics import classifier as C

MODEL_DIRS = [MODELS / "tiny10-classifier", MODELS / "tiny10-judge"]


def tiny10_test_sample(per_class: int) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """`per_class` evenly spaced images per class from tiny10/test (skips without the data)."""
    root = shared_data_dir() / "tiny10" / "test"
    if not root.is_dir():
        pytest.skip(f"tiny10 test split not found at {root} (set SAIC_DATA_DIR)")
    images, labels = [], []
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    for label, name in enumerate(classes):
        files = sorted((root / name).iterdir())
        for path in files[:: max(1, len(files) // per_class)][:per_class]:
            images.append(np.asarray(Image.open(path).convert("RGB")))
            labels.append(label)
    return images, np.asarray(labels), classes


@pytest.fixture(scope="module", params=MODEL_DIRS, ids=lambda p: p.name)
def model(request: pytest.FixtureRequest) -> C.SemanticClassifier:
    return C.SemanticClassifier(request.param, threads=1)


def test_accuracy_well_above_chance(model: C.SemanticClassifier) -> None:
    images, labels, classes = tiny10_test_sample(per_class=15)
    assert classes == model.classes
    logits, feats = model.predict(images)
    acc = float((logits.argmax(1) == labels).mean())
    assert acc >= 0.6, f"{model.id}: top-1 {acc:.3f} on {len(labels)} test images (chance 0.10)"
    # the manifest's full-test-set number is consistent with this sample (150 images: +-4 sigma)
    assert abs(acc - model.manifest["accuracy"]["test_top1"]) < 0.16
    assert feats.shape == (len(images), *model.feature_shape)


def test_batch_and_single_agree(model: C.SemanticClassifier) -> None:
    images = [make_photo(64, 64, seed=s) for s in range(5)] + [make_photo(100, 70, seed=9)]
    logits, feats = model.predict(images)
    for i, im in enumerate(images):
        lo, fe = model.predict([im])
        np.testing.assert_allclose(lo[0], logits[i], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fe[0], feats[i], rtol=1e-4, atol=1e-4)
    small = C.SemanticClassifier(model.path, threads=1, batch_size=2)
    lo2, _ = small.predict(np.stack(images[:5]))
    np.testing.assert_allclose(lo2, logits[:5], rtol=1e-4, atol=1e-4)


def test_resize_rule_shorter_side_then_center_crop() -> None:
    im = make_photo(512, 768, seed=3)  # Kodak landscape size
    out = C.resize_to_input(im)
    ref = Image.fromarray(im).resize((96, 64), Image.Resampling.BICUBIC).crop((16, 0, 80, 64))
    assert out.shape == (64, 64, 3) and np.array_equal(out, np.asarray(ref))
    portrait = C.resize_to_input(make_photo(768, 512, seed=3))
    assert portrait.shape == (64, 64, 3)
    tiny = C.resize_to_input(make_photo(20, 30, seed=1))  # upscaled, same rule
    assert tiny.shape == (64, 64, 3)
    same = make_photo(64, 64)
    assert C.resize_to_input(same) is same


def test_mixed_sizes_in_one_call(model: C.SemanticClassifier) -> None:
    images = [make_photo(512, 768), make_photo(64, 64), make_photo(33, 90)]
    logits, feats = model.predict(images)
    assert logits.shape == (3, len(model.classes)) and feats.shape[0] == 3
    assert model.classify(images)[0] in model.classes


@pytest.mark.parametrize("bad", [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32),
                                 np.zeros((64, 64, 4), np.uint8), np.zeros((0, 64, 3), np.uint8)])
def test_bad_images_rejected(model: C.SemanticClassifier, bad: np.ndarray) -> None:
    with pytest.raises(InvalidImageError):
        model.predict([bad])


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(MODELS / "tiny10-classifier", dst)
    return dst


def test_corrupt_file_refused(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    data = bytearray((d / "classifier.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "classifier.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        C.SemanticClassifier(d)


def test_head_that_does_not_match_graph_refused(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    with np.load(d / "head.npz") as h:
        w, b = h["weight"], h["bias"]
    np.savez(d / "head.npz", weight=w[::-1].copy(), bias=b)  # classes permuted
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["head.npz"] = C.file_sha256(d / "head.npz")
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelLoadError, match="reproduce"):
        C.SemanticClassifier(d)


def test_default_dir_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(C.MODEL_DIR_ENV, raising=False)
    assert C.default_model_dir() == MODELS / "tiny10-classifier"
    monkeypatch.setenv(C.MODEL_DIR_ENV, str(tmp_path))
    assert C.default_model_dir() == tmp_path


def test_model_files_are_small() -> None:
    for d in MODEL_DIRS:
        manifest = json.loads((d / "manifest.json").read_text())
        total = sum((d / name).stat().st_size for name in manifest["files"])
        assert total < 5 * 2**20, f"{d.name}: {total} bytes"
        assert (d / "MODEL_CARD.md").is_file()
        assert manifest["sha256"] == C.file_sha256(d / "classifier.onnx")
