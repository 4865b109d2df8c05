"""PSNR / MS-SSIM: known properties plus fixed reference values from pytorch-msssim.

The reference values below were computed once with pytorch-msssim 1.0.0 (torch 2.13.0,
float64 tensors in [0, 1], ``ms_ssim(x, y, data_range=1.0)``; for fewer than 5 scales by
composing that library's own ``_ssim`` and ``avg_pool2d`` steps with renormalised
weights).  The test itself needs no torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saic.eval.metrics import ms_ssim, ms_ssim_db, ms_ssim_scales, psnr


def _data_dir() -> Path:
    env = os.environ.get("SAIC_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "../shared/data"


def synth_pair(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic natural-ish image and a posterised, noisy copy (integer maths + sin only)."""
    i = np.arange(h, dtype=np.int64)[:, None, None]
    j = np.arange(w, dtype=np.int64)[None, :, None]
    c = np.arange(3, dtype=np.int64)[None, None, :]
    noise = ((i * 73856093) ^ (j * 19349663) ^ (c * 83492791)) % 41 - 20
    base = 128 + 60 * np.sin(i / 9.0 + c) * np.cos(j / 13.0) + 40 * np.sin((i + 2 * j) / 23.0 - c)
    a = np.clip(np.round(base) + noise, 0, 255).astype(np.uint8)
    b = np.clip((a.astype(np.int64) // 12) * 12 + 6 + (noise // 4), 0, 255).astype(np.uint8)
    return a, b


# (h, w) -> (scales, pytorch-msssim reference, PSNR)
REFERENCE = {
    (256, 384): (5, 0.9943557866323424, 34.960749636051965),
    (171, 203): (5, 0.9943047630480746, 34.949420866451625),
    (64, 64): (3, 0.9910945128691669, 34.90097656026339),
    (100, 37): (2, 0.9829299174560401, 34.957418307356754),
}


@pytest.mark.parametrize("shape", list(REFERENCE))
def test_matches_pytorch_msssim_reference(shape: tuple[int, int]) -> None:
    scales, ref, ref_psnr = REFERENCE[shape]
    a, b = synth_pair(*shape)
    assert ms_ssim_scales(*shape) == scales
    assert ms_ssim(a, b) == pytest.approx(ref, abs=1e-9)
    assert psnr(a, b) == pytest.approx(ref_psnr, abs=1e-9)


def test_single_scale_is_ssim() -> None:
    a, b = synth_pair(64, 64)
    # pytorch_msssim.ssim(x, y, data_range=1.0)
    assert ms_ssim(a, b, scales=1) == pytest.approx(0.9599607932831421, abs=1e-9)


@pytest.mark.parametrize("name,ref,ref_psnr", [
    ("kodim01", 0.9916106796182915, 34.93892728676397),
    ("kodim04", 0.9742637977076138, 34.77904734534038),
])
def test_kodak_reference(name: str, ref: float, ref_psnr: float) -> None:
    path = _data_dir() / "kodak" / f"{name}.png"
    if not path.exists():
        pytest.skip(f"Kodak data not found at {path} (set SAIC_DATA_DIR)")
    a = np.asarray(Image.open(path).convert("RGB"))
    b = ((a // 16) * 16 + 8).astype(np.uint8)  # posterise: deterministic, library-independent
    assert ms_ssim(a, b) == pytest.approx(ref, abs=1e-9)
    assert psnr(a, b) == pytest.approx(ref_psnr, abs=1e-9)


def test_identity_and_symmetry() -> None:
    a, b = synth_pair(200, 180)
    assert psnr(a, a) == math.inf
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim(a, b) == pytest.approx(ms_ssim(b, a), abs=1e-12)
    assert ms_ssim_db(1.0) == math.inf
    assert ms_ssim_db(0.99) == pytest.approx(20.0)


def test_psnr_known_value() -> None:
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a + np.uint8(5)  # MSE 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)


def test_more_distortion_is_worse() -> None:
    a, _ = synth_pair(192, 192)
    noise = ((np.arange(a.size).reshape(a.shape) * 2654435761) % 17 - 8).astype(np.int64)
    mild = np.clip(a.astype(np.int64) + noise // 4, 0, 255).astype(np.uint8)
    strong = np.clip(a.astype(np.int64) + noise * 3, 0, 255).astype(np.uint8)
    assert psnr(a, mild) > psnr(a, strong)
    assert 1.0 > ms_ssim(a, mild) > ms_ssim(a, strong) > 0.0


def test_small_and_invalid_inputs() -> None:
    assert ms_ssim_scales(512, 768) == 5
    assert ms_ssim_scales(161, 161) == 5  # pytorch-msssim's limit: shorter side > 160
    assert ms_ssim_scales(160, 161) == 4
    assert ms_ssim_scales(64, 64) == 3
    a, b = synth_pair(8, 8)  # below the window: filtering is skipped, still a valid number
    assert 0.0 < ms_ssim(a, b) <= 1.0
    with pytest.raises(ValueError):
        ms_ssim(a, b[:4])
    with pytest.raises(TypeError):
        psnr(a.astype(np.float32), b)
