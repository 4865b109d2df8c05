"""tiny10 classifier runtime (onnxruntime + numpy, no torch).

A model directory (written by `saic.training.export_classifier`) holds `classifier.onnx`
(x float32 (B,3,64,64) in [0,1] -> `logits` (B,10), `features` (B,C,h,w)), `head.npz` (the
linear head W, b that GSW needs), `manifest.json` and `MODEL_CARD.md`.  Loading verifies
every file's sha256 against the manifest and that the head reproduces the graph's logits
(logits == mean_hw(features) @ W.T + b), so GSW weights always belong to the graph in use.

Resize rule for inputs that are not 64x64 (e.g. Kodak 768x512 on the server): resize so the
*shorter* side is 64 px (Pillow bicubic, which antialiases when downscaling; aspect ratio
kept, long side rounded), then take the central 64x64 crop (offset floor((L-64)/2)).  The
classifier was trained on whole 64x64 objects, so keeping the aspect ratio and the centre
matches its training distribution better than squashing the whole frame.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from saic.codec.errors import InvalidImageError, ModelLoadError
from saic.codec.model import file_sha256

MODEL_DIR_ENV = "SAIC_SEMANTIC_MODEL_DIR"
DEFAULT_MODEL_ID = "tiny10-classifier"
Images = np.ndarray | Sequence[np.ndarray]


def repo_models_dir() -> Path:
    """`models/` at the repository root (service/saic/semantics/ -> ../../../models)."""
    return Path(__file__).resolve().parents[3] / "models"


def default_model_dir() -> Path:
    """$SAIC_SEMANTIC_MODEL_DIR if set, else models/tiny10-classifier in the repository."""
    env = os.environ.get(MODEL_DIR_ENV)
    return Path(env) if env else repo_models_dir() / DEFAULT_MODEL_ID


def resize_to_input(image: np.ndarray, size: int = 64) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8 by the documented rule (shorter side to `size`,
    bicubic, center crop).  Images already of that size are returned unchanged."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def _check_image(im: np.ndarray) -> None:
    if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3 or 0 in im.shape:
        raise InvalidImageError(
            f"expected HxWx3 uint8 images, got {getattr(im, 'dtype', type(im))} {getattr(im, 'shape', '')}")


class SemanticClassifier:
    """One loaded classifier: `predict` uint8 images -> (logits, features), in batches."""

    def __init__(self, model_dir: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 batch_size: int = 64):
        self.path = Path(model_dir)
        mpath = self.path / "manifest.json"
        try:
            self.manifest: dict = json.loads(mpath.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{mpath}: cannot read manifest: {exc}") from exc
        files = self.manifest.get("files", {})
        for name in ("classifier.onnx", "head.npz"):
            p = self.path / name
            if not p.is_file():
                raise ModelLoadError(f"{p}: missing")
            if file_sha256(p) != files.get(name):
                raise ModelLoadError(f"{p}: sha256 does not match the manifest (corrupt or replaced file)")
        if self.manifest.get("sha256") != files["classifier.onnx"]:
            raise ModelLoadError(f"{mpath}: sha256 is not the hash of classifier.onnx")
        self.id: str = self.manifest["id"]
        self.sha256: str = self.manifest["sha256"]
        self.classes: list[str] = list(self.manifest["classes"])
        self.input_size: int = int(self.manifest["input_size"][0])
        self.batch_size = batch_size
        with np.load(self.path / "head.npz") as head:
            self.head_weight = head["weight"].astype(np.float32)  # (K, C)
            self.head_bias = head["bias"].astype(np.float32)  # (K,)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        have = ort.get_available_providers()
        chosen = list(providers) if providers else [p for p in ("CUDAExecutionProvider",) if p in have]
        chosen = [p for p in chosen if p in have and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path / "classifier.onnx"), opts, providers=chosen)
        self._check_head()

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def _check_head(self) -> None:
        """The head in head.npz must reproduce the graph's logits (else GSW would be wrong)."""
        ramp = np.linspace(0, 1, 3 * self.input_size**2, dtype=np.float32).reshape(1, 3, self.input_size, -1)
        x = np.concatenate([ramp, 1 - ramp, np.full_like(ramp, 0.5)])
        logits, feats = self.session.run(["logits", "features"], {"x": x})
        if feats.shape[1] != self.head_weight.shape[1] or logits.shape[1] != len(self.classes):
            raise ModelLoadError(f"{self.path}: head/classes do not match the graph's outputs")
        recon = feats.mean(axis=(2, 3)) @ self.head_weight.T + self.head_bias
        if not np.allclose(recon, logits, rtol=1e-3, atol=1e-3 * (1 + np.abs(logits).max())):
            raise ModelLoadError(f"{self.path}: head.npz does not reproduce the graph's logits")
        self.feature_shape: tuple[int, int, int] = tuple(int(v) for v in feats.shape[1:])  # type: ignore[assignment]

    def preprocess(self, images: Images) -> np.ndarray:
        """uint8 images (N,H,W,3 array or a list of HxWx3 of any sizes) -> float32 (N,3,64,64)."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        out = np.empty((len(images), 3, self.input_size, self.input_size), np.float32)
        for i, im in enumerate(images):
            _check_image(im)
            out[i] = resize_to_input(im, self.input_size).transpose(2, 0, 1)
        out *= 1 / 255
        return out

    def predict(self, images: Images) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N,K) and last feature maps (N,C,h,w), float32; run in batches of batch_size."""
        x = self.preprocess(images)
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, *self.feature_shape), np.float32)
        logits, feats = [], []
        for i in range(0, len(x), self.batch_size):
            lo, fe = self.session.run(["logits", "features"], {"x": x[i : i + self.batch_size]})
            logits.append(lo)
            feats.append(fe)
        return np.concatenate(logits), np.concatenate(feats)

    def classify(self, images: Images) -> list[str]:
        logits, _ = self.predict(images)
        return [self.classes[i] for i in logits.argmax(1)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def load_classifier(model_dir: str | Path | None = None, **kwargs: object) -> SemanticClassifier:
    """Load a classifier directory (default: `default_model_dir()`)."""
    return SemanticClassifier(model_dir or default_model_dir(), **kwargs)  # type: ignore[arg-type]
