"""Compressed-domain classification: tiny10 labels straight from a saic bitstream.

The layered-codec idea: a machine does not need pixels.  Entropy decoding alone yields the
quantised latent y_hat (`CodecModel.decode_latents`, no synthesis transform), and a small
head trained on those latents of the *frozen* codec predicts the class.  This skips the
synthesis transform and the pixel classifier, and the bits it needs are the bitstream's.

A head directory (written by `saic.training.latent_head`) holds

* `latent_head.onnx`: input `y_hat` float32 (B,M,h,w) (the inverse-gained latent; any h, w,
  global average pooling at the end), output `logits` (B,K);
* `manifest.json`: `kind` "latent_head", `id`, `codec_id` and `codec_sha256` (the one codec
  whose latents it reads: another codec's latents mean something else), `classes`,
  `files` (name -> sha256), `sha256` (of the onnx), measured accuracy;
* `MODEL_CARD.md`.

It lives in its own directory (`models/<codec>-latent-head/`) so adding it leaves the
codec's manifest hash (and bitstream tag) untouched.  Loading verifies the file hashes.
Trained on 64x64 tiny10 images (4x4 latents); other sizes run (the head pools globally) but
their accuracy is not measured.  numpy + onnxruntime only, no torch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from saic.codec import bitstream
from saic.codec.errors import ModelLoadError, ModelMismatchError
from saic.codec.model import CodecModel, file_sha256, padded_size

from .classifier import softmax

log = logging.getLogger("saic.semantics")

KIND = "latent_head"
ONNX_FILE = "latent_head.onnx"


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("kind") == KIND else None


class LatentHead:
    """One loaded head: logits from latents, or top-k labels from bitstreams of its codec."""

    def __init__(self, model_dir: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        self.path = Path(model_dir)
        manifest = _read_manifest(self.path)
        if manifest is None:
            raise ModelLoadError(f"{self.path}: no manifest.json of kind {KIND!r}")
        onnx_path = self.path / ONNX_FILE
        if not onnx_path.is_file():
            raise ModelLoadError(f"{onnx_path}: missing")
        if file_sha256(onnx_path) != manifest.get("files", {}).get(ONNX_FILE) or manifest.get("sha256") != manifest["files"][ONNX_FILE]:
            raise ModelLoadError(f"{onnx_path}: sha256 does not match the manifest (corrupt or replaced file)")
        self.manifest = manifest
        self.id: str = manifest["id"]
        self.sha256: str = manifest["sha256"]
        self.codec_id: str = manifest["codec_id"]
        self.codec_sha256: str = manifest["codec_sha256"]
        self.classes: list[str] = list(manifest["classes"])
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        have = ort.get_available_providers()
        chosen = [p for p in (providers or ("CUDAExecutionProvider",)) if p in have and p != "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=chosen + ["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - an unreadable graph is a load error like any other
            raise ModelLoadError(f"{onnx_path}: {exc}") from exc
        out = self.session.get_outputs()[0].shape
        if isinstance(out[-1], int) and out[-1] != len(self.classes):
            raise ModelLoadError(f"{self.path}: graph has {out[-1]} outputs for {len(self.classes)} classes")

    def logits(self, y_hat: np.ndarray) -> np.ndarray:
        """(B,M,h,w) float32 latents -> (B,K) logits."""
        return self.session.run(["logits"], {"y_hat": np.ascontiguousarray(y_hat, np.float32)})[0]

    def check_codec(self, codec: CodecModel) -> None:
        if codec.sha256 != self.codec_sha256:
            raise ModelMismatchError(
                f"latent head {self.id} reads latents of codec {self.codec_id} ({self.codec_sha256[:12]}), "
                f"not of {codec.id} ({codec.sha256[:12]})")

    def probabilities(self, codec: CodecModel, streams: Sequence[bytes | bitstream.Bitstream],
                      timings: dict[str, float] | None = None) -> np.ndarray:
        """Bitstreams of `codec` -> (N,K) class probabilities, entropy decoding + head only
        (same-padded-size streams share one decode and one head run).  `timings` gets the
        codec's entropy stages plus `latent_head`."""
        self.check_codec(codec)
        parsed = [s if isinstance(s, bitstream.Bitstream) else codec.parse(s) for s in streams]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(parsed):
            groups.setdefault(padded_size(*p.header.coded_size), []).append(i)
        out = np.empty((len(parsed), len(self.classes)), np.float64)
        for idx in groups.values():
            y_hat = codec.decode_latents([parsed[i] for i in idx], timings)
            t0 = time.perf_counter()
            out[idx] = softmax(self.logits(y_hat).astype(np.float64))
            if timings is not None:
                timings["latent_head"] = timings.get("latent_head", 0.0) + time.perf_counter() - t0
        return out

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
        """One probability row -> [{"name", "probability"}, ...], most likely first (k capped at K)."""
        order = np.argsort(-probs, kind="stable")[: max(1, min(int(k), len(self.classes)))]
        return [{"name": self.classes[i], "probability": float(probs[i])} for i in order]


def find_heads(root: str | Path) -> dict[str, Path]:
    """Head directories under `root` by the sha256 of the codec they belong to (manifests only;
    nothing is loaded).  Two heads for one codec: the id sorting last wins, with a warning."""
    found: dict[str, Path] = {}
    root = Path(root)
    if not root.is_dir():
        return found
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _read_manifest(d)
        if m is None or "codec_sha256" not in m:
            continue
        if m["codec_sha256"] in found:
            log.warning("two latent heads for codec %s: using %s", m["codec_sha256"][:12], d)
        found[m["codec_sha256"]] = d
    return found


def head_for(codec: CodecModel, root: str | Path | None = None, **kwargs: Any) -> LatentHead | None:
    """The head for `codec` found under `root` (default: the folder holding the codec), or None."""
    path = find_heads(root if root is not None else codec.path.parent).get(codec.sha256)
    return None if path is None else LatentHead(path, **kwargs)


class HeadRegistry:
    """The heads of a set of loaded codecs, loaded once (the server's view).

    A codec without a head is simply absent (`get` returns None); a head directory that exists
    but fails to load does not stop the codec from being served: the error is kept and raised
    by `get`, so classify answers "model unavailable" while compress/decompress keep working."""

    def __init__(self, root: str | Path, codecs: Sequence[CodecModel], providers: Sequence[str] | None = None,
                 threads: int | None = None):
        found = find_heads(root)
        self._heads: dict[str, LatentHead] = {}
        self._errors: dict[str, ModelLoadError] = {}
        for codec in codecs:
            path = found.get(codec.sha256)
            if path is None:
                continue
            try:
                self._heads[codec.sha256] = LatentHead(path, providers=providers, threads=threads)
                log.info("latent head %s for model %s", self._heads[codec.sha256].id, codec.id)
            except ModelLoadError as exc:
                log.error("latent head for model %s not loaded: %s", codec.id, exc)
                self._errors[codec.sha256] = exc

    def get(self, codec: CodecModel) -> LatentHead | None:
        if codec.sha256 in self._errors:
            raise ModelLoadError(f"compressed-domain head for model {codec.id} failed to load: {self._errors[codec.sha256]}")
        return self._heads.get(codec.sha256)

    def __len__(self) -> int:
        return len(self._heads)
