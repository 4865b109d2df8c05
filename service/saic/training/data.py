"""In-memory random-crop sampler over folders of natural photos (codec training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}


def list_images(folders: list[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        files += sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return files


class CropSampler:
    """Holds every image (and a half-size copy of large ones) as uint8; samples random crops.

    Downscaled copies act like a camera with fewer, cleaner pixels: they add the sharper,
    less noisy statistics that Kodak-like photos have.
    """

    def __init__(self, folders: list[Path], crop: int = 128, seed: int = 0):
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        self.images: list[np.ndarray] = []
        for path in list_images(folders):
            im = Image.open(path).convert("RGB")
            for scale in (1.0, 0.5, 0.75):
                w, h = round(im.width * scale), round(im.height * scale)
                if min(w, h) < crop:
                    continue
                self.images.append(np.asarray(im if scale == 1.0 else im.resize((w, h), Image.LANCZOS)))
        if not self.images:
            raise ValueError(f"no training images of at least {crop}px in {folders}")
        sizes = np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)
        self.weights = sizes / sizes.sum()

    def batch(self, n: int) -> np.ndarray:
        out = np.empty((n, self.crop, self.crop, 3), np.uint8)
        idx = self.rng.choice(len(self.images), size=n, p=self.weights)
        for k, i in enumerate(idx):
            im = self.images[i]
            y = self.rng.integers(0, im.shape[0] - self.crop + 1)
            x = self.rng.integers(0, im.shape[1] - self.crop + 1)
            c = im[y : y + self.crop, x : x + self.crop]
            if self.rng.random() < 0.5:
                c = c[:, ::-1]
            if self.rng.random() < 0.5:
                c = c.transpose(1, 0, 2)
            out[k] = c
        return out
