"""Regenerate the golden bitstream after the default model changes:

    python tests/golden/make_golden.py

Writes golden.saic (a fixed synthetic image, compressed by the default model),
golden_half.saic (the same at half resolution) and golden.json (model hash, sha256 of the
decoded latents and of the decoded pixels of each).
The bitstream is only regenerated when the model changes; the test then decodes the
committed bytes on every CI run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from saic.codec import ModelRegistry

HERE = Path(__file__).resolve().parent


def golden_image() -> np.ndarray:
    """A deterministic image with edges, gradients and texture (no data files needed)."""
    yy, xx = np.mgrid[0:96, 0:160].astype(np.float64)
    r = 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    g = np.where((xx - 80) ** 2 + (yy - 48) ** 2 < 900, 220.0, 40.0 + yy)
    b = (xx * 1.5 + ((xx.astype(int) // 8 + yy.astype(int) // 8) % 2) * 60) % 256
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def _golden(model, name: str, downscale: int) -> dict:
    data = model.compress_batch([golden_image()], [60], downscales=[downscale])[0]
    latents = model.decode_latents([model.parse(data)])
    pixels = model.decompress_batch([data])[0]
    (HERE / name).write_bytes(data)
    return {
        "bitstream": name,
        "latent_sha256": hashlib.sha256(latents.tobytes()).hexdigest(),
        "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
    }


def main() -> None:
    model = ModelRegistry(HERE.parents[1] / "models").get()
    spec = {"model_id": model.id, "model_sha256": model.sha256, **_golden(model, "golden.saic", 1)}
    spec["half"] = _golden(model, "golden_half.saic", 2)
    (HERE / "golden.json").write_text(json.dumps(spec, indent=2) + "\n")
    print(json.dumps(spec))


if __name__ == "__main__":
    main()
