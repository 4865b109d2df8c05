"""Compressed-domain head: the shipped head belongs to the shipped codec, classifies real bitstreams
without synthesis, refuses corrupt files and other codecs; the training export round-trips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, make_photo, shared_data_dir
from saic.codec.errors import ModelLoadError, ModelMismatchError
from saic.semantics import latent


@pytest.fixture(scope="module")
def codec():  # noqa: ANN201
    if not (MODELS / "saic-small" / "manifest.json").is_file():
        pytest.skip("models/saic-small is not shipped")
    from saic.codec.model import CodecModel

    return CodecModel(MODELS / "saic-small", threads=1)


@pytest.fixture(scope="module")
def head_dir(codec) -> Path:  # noqa: ANN001
    heads = [d for d in MODELS.iterdir() if (d / "manifest.json").is_file()
             and json.loads((d / "manifest.json").read_text()).get("kind") == latent.KIND]
    if not heads:
        pytest.skip("no latent head is shipped under models/")
    return heads[0]


def test_shipped_head_belongs_to_the_shipped_codec(codec, head_dir: Path) -> None:  # noqa: ANN001
    """Fails when the codec was re-exported without retraining its head (the latents changed meaning):
    python -m saic.training.latent_head --codec models/saic-small --out runs/latent-head"""
    m = json.loads((head_dir / "manifest.json").read_text())
    assert m["codec_id"] == codec.id
    assert m["codec_sha256"] == codec.sha256, "latent head was trained for another version of the codec: retrain it"
    assert latent.find_heads(MODELS)[codec.sha256] == head_dir
    assert (head_dir / "MODEL_CARD.md").is_file()


def test_probabilities_from_bitstreams(codec, head_dir: Path) -> None:  # noqa: ANN001
    head = latent.head_for(codec, MODELS, threads=1)
    assert head is not None and head.classes == json.loads((MODELS / "tiny10-classifier" / "manifest.json").read_text())["classes"]
    images = [make_photo(64, 64, seed=s) for s in range(3)] + [make_photo(48, 80, seed=9)]
    streams = codec.compress_batch(images, [10, 50, 90, 50])
    timings: dict[str, float] = {}
    probs = head.probabilities(codec, streams, timings)
    assert probs.shape == (4, 10) and np.allclose(probs.sum(1), 1) and (probs >= 0).all()
    assert {"entropy_decode", "entropy_params", "latent_head"} <= set(timings) and "synthesis" not in timings
    one = head.probabilities(codec, streams[1:2])  # batching changes nothing
    assert np.allclose(one[0], probs[1], atol=1e-5)
    top = head.top_k(probs[0], 3)
    assert [t["name"] for t in top] == [head.classes[i] for i in np.argsort(-probs[0])[:3]]
    assert len(head.top_k(probs[0], 50)) == 10 and head.top_k(probs[0], 0)[0] == top[0]


def test_refuses_corrupt_files_and_other_codecs(codec, head_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad"
    shutil.copytree(head_dir, bad)
    data = bytearray((bad / latent.ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / latent.ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        latent.LatentHead(bad)
    other = tmp_path / "other"
    shutil.copytree(head_dir, other)
    m = json.loads((other / "manifest.json").read_text())
    m["codec_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    head = latent.LatentHead(other)
    stream = codec.compress_batch([make_photo(64, 64)], [50])[0]
    with pytest.raises(ModelMismatchError):
        head.probabilities(codec, [stream])
    with pytest.raises(ModelLoadError):
        latent.LatentHead(tmp_path)  # no manifest


def test_head_registry_keeps_serving_without_or_with_a_broken_head(codec, head_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    assert latent.HeadRegistry(tmp_path, [codec]).get(codec) is None  # no head: None (the server answers 501)
    shutil.copytree(head_dir, tmp_path / "h")
    assert latent.HeadRegistry(tmp_path, [codec]).get(codec).codec_sha256 == codec.sha256
    (tmp_path / "h" / latent.ONNX_FILE).write_bytes(b"garbage")
    broken = latent.HeadRegistry(tmp_path, [codec])
    with pytest.raises(ModelLoadError, match="failed to load"):
        broken.get(codec)


def test_accuracy_on_real_test_images(codec, head_dir: Path) -> None:  # noqa: ANN001
    """Well above chance (10 %) on 200 real tiny10/test images at quality 100."""
    root = shared_data_dir() / "tiny10" / "test"
    if not root.is_dir():
        pytest.skip(f"tiny10 not found at {root} (set SAIC_DATA_DIR)")
    from saic.eval.semantic import load_tiny10

    head = latent.head_for(codec, MODELS, threads=1)
    ds = load_tiny10(root.parents[1], head.classes, every=14)
    streams = codec.compress_batch(list(ds.images), [100] * len(ds.images))
    acc = float(np.mean(head.probabilities(codec, streams).argmax(1) == ds.labels))
    assert acc > 0.25, acc


def test_training_export_round_trip(codec, tmp_path: Path) -> None:  # noqa: ANN001
    """A small untrained net through the real export path: ONNX == torch, manifest, card, runtime load."""
    torch = pytest.importorskip("torch")
    from saic.training import latent_head as lh

    rng = np.random.default_rng(0)
    streams = codec.compress_batch([make_photo(64, 64, seed=s) for s in range(6)], [0, 20, 40, 60, 80, 100])
    y = codec.decode_latents([codec.parse(s) for s in streams]).astype(np.float16)
    d = {"val_y": np.concatenate([y, y]), "val_labels": rng.integers(0, 10, 12), "val_q": np.repeat(lh.VAL_QUALITIES, 4)}
    torch.manual_seed(0)
    net = lh.LatentHeadNet(y.shape[1], y.astype(np.float32).mean((0, 2, 3)), y.astype(np.float32).std((0, 2, 3)) + 1e-3, width=16)
    rec = {"steps": 0, "epochs": 0, "wall_seconds": 0, "latent_seconds": 0, "hardware": "test", "history": [],
           "config": {"width": 16, "dropout": 0.3, "n_train_images": 0, "copies": 2, "n_train": 0, "lr": 1e-3,
                      "wd": 0.0, "batch": 8, "minutes": 0, "seed": 0}}
    m = lh.export(net, codec, tmp_path / "head", d, rec)
    assert m["kind"] == latent.KIND and m["codec_sha256"] == codec.sha256 and m["export_check"]["max_abs_logits"] < 1e-4
    head = latent.LatentHead(tmp_path / "head")
    assert head.probabilities(codec, streams).shape == (6, 10)
    assert "Compressed-domain" in (tmp_path / "head" / "MODEL_CARD.md").read_text()
