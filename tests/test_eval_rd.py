"""RD runner end to end on small real files: baselines, caching, report, plot, CLI, our model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from saic.cli import main as saic_main
from saic.eval.rd import bd_table, dataset_fingerprint, list_images, run_rd, synthetic_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(synthetic_image(64, 96, seed=1)).save(d / "a.png")
    Image.fromarray(synthetic_image(80, 64, seed=2)).save(d / "b.png")
    (d / "notes.txt").write_text("not an image")
    return d


def test_baselines_run_cache_and_report(image_dir: Path, tmp_path: Path) -> None:
    doc = run_rd(image_dir, tmp_path, baselines=["jpeg420", "webp"], show_progress=False)
    assert [p.name for p in list_images(image_dir)] == ["a.png", "b.png"]
    assert doc["dataset"]["n_images"] == 2
    for name in ("jpeg420", "webp"):
        pts = doc["codecs"][name]["points"]
        assert len(pts) == 8 and len(pts[0]["images"]) == 2
        bpps = [p["bpp"] for p in pts]
        assert bpps == sorted(bpps)  # the grids are in increasing-rate order
        assert all(p["payload_bpp"] < p["bpp"] for p in pts)
        assert pts[-1]["psnr"] > pts[0]["psnr"]
        assert 0 < pts[0]["ms_ssim"] < pts[-1]["ms_ssim"] < 1
        one = pts[0]["images"][0]
        assert one["bpp"] == pytest.approx(8 * one["bytes"] / (64 * 96))
    row = doc["bd"]["anchors"][0]
    assert row["anchor"] == "jpeg420" and row["test"] == "webp"
    assert math.isfinite(row["bd_rate_psnr_percent"])
    for f in ("rd.json", "baselines_rd.json", "bd_rate.md", "rd.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "WebP" in (tmp_path / "bd_rate.md").read_text()
    saved = json.loads((tmp_path / "rd.json").read_text())
    assert saved["dataset"]["fingerprint"] == dataset_fingerprint(list_images(image_dir))
    assert saved["codecs"]["webp"]["points"][3]["psnr"] == pytest.approx(pts[3]["psnr"], abs=1e-6)

    # second run: baselines come from the cache (identical numbers and recorded run time)
    again = run_rd(image_dir, tmp_path, baselines=["jpeg420", "webp"], show_progress=False, plot=False)
    assert again["codecs"]["webp"] == saved["codecs"]["webp"]
    # a cache for other images is ignored
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(synthetic_image(64, 64, seed=3)).save(other / "c.png")
    third = run_rd(other, tmp_path / "o", baselines=["jpeg420"], cache_files=[tmp_path / "baselines_rd.json"],
                   show_progress=False, plot=False)
    assert third["dataset"]["names"] == ["c.png"]


def test_bd_table_of_identical_codecs_is_zero(image_dir: Path, tmp_path: Path) -> None:
    doc = run_rd(image_dir, tmp_path, baselines=["jpeg444"], show_progress=False, plot=False)
    res = {"x": doc["codecs"]["jpeg444"], "y": doc["codecs"]["jpeg444"]}
    (row,) = bd_table(res, "y", ["x"])
    assert row["bd_rate_psnr_percent"] == pytest.approx(0.0, abs=1e-9)
    assert row["bd_rate_ms_ssim_percent"] == pytest.approx(0.0, abs=1e-9)


def test_cli_eval_rd(image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = saic_main(["eval", "rd", "--images", str(image_dir), "--out", str(tmp_path), "--baselines", "avif",
                    "--limit", "1", "--no-plot", "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "rd.json").read_text())
    assert list(doc["codecs"]) == ["avif"] and doc["dataset"]["names"] == ["a.png"]
    assert "AVIF" in capsys.readouterr().out


def _shipped_model() -> Path | None:
    models = REPO / "models"
    for d in sorted(models.iterdir()) if models.is_dir() else []:
        m = d / "manifest.json"
        if m.is_file() and json.loads(m.read_text()).get("kind", "codec") == "codec":
            return d
    return None


def test_our_model_through_rd(image_dir: Path, tmp_path: Path) -> None:
    model = _shipped_model()
    if model is None:
        pytest.skip("no shipped codec model under models/")
    doc = run_rd(image_dir, tmp_path, model=model, baselines=["jpeg420"], model_qualities=[10, 90],
                 half_qualities=[0, 100], show_progress=False, plot=False)
    ours, half = sorted(k for k in doc["codecs"] if k.startswith("saic:"))
    assert half == ours + ":half"
    lo, hi = doc["codecs"][ours]["points"]
    h0, h100 = doc["codecs"][half]["points"]
    assert h0["bpp"] < h100["bpp"] and h0["psnr"] < h100["psnr"] and h0["bpp"] < lo["bpp"]
    assert doc["bd"]["ours_with_half"][0]["anchor"] == "jpeg420"
    assert "full or half resolution" in (tmp_path / "bd_rate.md").read_text()
    assert lo["bpp"] < hi["bpp"] and lo["psnr"] < hi["psnr"]
    assert 0 < lo["payload_bpp"] < lo["bpp"]
    assert set(doc["codecs"][ours]["stage_seconds"]) >= {"analysis", "synthesis"}
    assert doc["bd"]["ours"][0]["anchor"] == "jpeg420"
    assert np.isfinite(lo["ms_ssim"])


def test_committed_kodak_baselines_match_the_data_and_grids() -> None:
    """models/baselines/kodak_rd.json must be usable as a cache: same images, grids, settings."""
    import os

    from saic.eval.baselines import BASELINES
    from saic.eval.rd import baseline_codec, load_cached_baselines

    cache = REPO / "models" / "baselines" / "kodak_rd.json"
    doc = json.loads(cache.read_text())
    assert set(doc["codecs"]) == set(BASELINES)
    for name, res in doc["codecs"].items():
        bpp = [p["bpp"] for p in res["points"]]
        psnrs = [p["psnr"] for p in res["points"]]
        assert bpp == sorted(bpp) and psnrs == sorted(psnrs) and len(res["points"][0]["images"]) == 24
    kodak = Path(os.environ.get("SAIC_DATA_DIR", REPO / "../shared/data")) / "kodak"
    if not kodak.is_dir():
        pytest.skip(f"Kodak data not found at {kodak}")
    wanted = {n: baseline_codec(b) for n, b in BASELINES.items()}
    found = load_cached_baselines([cache], dataset_fingerprint(list_images(kodak)), wanted)
    assert set(found) == set(BASELINES)
