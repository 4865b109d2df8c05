"""All codec models in a folder, addressable by id and by bitstream tag."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, ModelMismatchError, UnknownModelError
from .model import CodecModel

log = logging.getLogger("saic.codec")

REPO_MODELS = Path(__file__).resolve().parents[3] / "models"
DEFAULT_FILE = "DEFAULT"  # models/DEFAULT names the default codec model id


def default_model_dir() -> Path:
    """$SAIC_MODEL_DIR, else the repository's models/ folder."""
    return Path(os.environ.get("SAIC_MODEL_DIR", REPO_MODELS))


def is_codec_dir(path: Path) -> bool:
    """True for a directory whose manifest.json says kind "codec"; a manifest.json that exists
    but cannot be read is a ModelLoadError (a damaged model must not silently drop out)."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model directory {path}: manifest.json is unreadable ({e})") from None
    return isinstance(doc, dict) and doc.get("kind") == "codec"


class ModelRegistry:
    """Loads every codec model directory under `root`; `options` go to each CodecModel
    (providers, threads, max_pixels, precision, tile, spinning, optimization)."""

    def __init__(self, root: str | os.PathLike | None = None, **options: Any):
        self.root = Path(root) if root is not None else default_model_dir()
        if not self.root.is_dir():
            raise ModelLoadError(f"model directory {self.root} does not exist")
        dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and is_codec_dir(p))
        if not dirs:
            raise ModelLoadError(f"no codec models (manifest.json with kind 'codec') under {self.root}")
        self.models: dict[str, CodecModel] = {}
        for d in dirs:
            m = CodecModel(d, **options)
            if m.id in self.models:
                raise ModelLoadError(f"two model directories claim id {m.id}")
            self.models[m.id] = m
        self._by_tag = {m.tag: m for m in self.models.values()}
        default_file = self.root / DEFAULT_FILE
        wanted = default_file.read_text().strip() if default_file.is_file() else None
        self.default_id = wanted if wanted in self.models else next(iter(self.models))

    def get(self, model_id: str | None = None) -> CodecModel:
        if model_id is None or model_id == "":
            return self.models[self.default_id]
        try:
            return self.models[model_id]
        except KeyError:
            raise UnknownModelError(f"unknown model {model_id!r}; loaded: {', '.join(self.models)}") from None

    def for_tag(self, tag: int) -> CodecModel:
        try:
            return self._by_tag[tag]
        except KeyError:
            raise ModelMismatchError(f"no loaded model has tag {tag:04x}; loaded: {', '.join(self.models)}") from None
