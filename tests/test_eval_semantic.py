"""`saic eval semantic`: interpolation rules, correlations, labels from manifests, and a real end-to-end
run (shipped codec + classifiers, JPEG/WebP) on a small tiny10-shaped folder, with its caches and CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, make_photo
from saic.eval import semantic as sem


def _pts(bpps: list[float], accs: list[float]) -> list[dict]:
    return [{"quality": i, "bpp": b, "payload_bpp": b / 2, "judge_top1": a} for i, (b, a) in enumerate(zip(bpps, accs))]


def test_at_rate_interpolates_in_log_bpp_and_never_extrapolates() -> None:
    pts = _pts([0.5, 0.25, 1.0], [0.4, 0.2, 0.6])  # unsorted on purpose
    mid = sem.at_rate(pts, math.sqrt(0.25 * 0.5), "judge_top1")  # geometric middle of 0.25 and 0.5
    assert mid["value"] == pytest.approx(0.3) and mid["from"] == [1, 0]
    assert sem.at_rate(pts, 0.5, "judge_top1")["value"] == pytest.approx(0.4)
    low = sem.at_rate(pts, 0.125, "judge_top1")
    assert low["value"] is None and low["reason"] == "below" and low["min_bpp"] == 0.25
    assert sem.at_rate(pts, 2.0, "judge_top1")["reason"] == "above"
    assert sem.at_rate(pts, 0.125, "judge_top1", "payload_bpp")["value"] == pytest.approx(0.2)  # payload reaches it
    assert sem.at_rate([{"quality": 0, "bpp": 1, "payload_bpp": None, "judge_top1": 1}], 1, "judge_top1",
                       "payload_bpp")["value"] is None
    assert "no payload" in sem._cell(sem.at_rate([], 1, "judge_top1"))


def test_rank_correlations() -> None:
    pts = [{"judge_top1": a, "si": a * 2, "psnr": -a, "ms_ssim": (a - 0.3) ** 2} for a in (0.1, 0.2, 0.3, 0.4, 0.5)]
    c = sem.rank_correlations(pts)
    assert c["si"]["spearman"] == pytest.approx(1) and c["si"]["kendall"] == pytest.approx(1)
    assert c["psnr"]["spearman"] == pytest.approx(-1)
    assert c["n_points"] == 5


def test_labels_come_from_manifests() -> None:
    assert sem.manifest_label({"id": "saic-small"}) == "saic saic-small"
    assert sem.manifest_label({"id": "x", "training": {"beta": 0}}) == "saic x (MSE twin, β=0)"
    assert sem.manifest_label({"id": "x", "training": {"beta": 300.0}}) == "saic x (SAIC, β=300)"
    assert sem.manifest_label({"id": "x", "training": {"beta": 1e3, "weighting": "uniform"}}) == "saic x (plain feature loss, β=1000)"
    assert sem.manifest_label({"id": "x", "label": "mine"}) == "mine"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny10/test with two 64x64 JPEGs per class (synthetic photos: the pipeline, not the accuracy, is tested)."""
    from PIL import Image

    classes = json.loads((MODELS / "tiny10-classifier" / "manifest.json").read_text())["classes"]
    root = tmp_path_factory.mktemp("data")
    for i, c in enumerate(classes):
        d = root / "tiny10" / "test" / c
        d.mkdir(parents=True)
        for k in range(2):
            im = make_photo(64, 64, seed=10 * i + k)
            Image.fromarray(im if k else im[..., :1].repeat(3, axis=2)).save(d / f"{c}_{k}.JPEG", quality=90)
    return root


def _need_models() -> None:
    for d in ("saic-small", "tiny10-classifier", "tiny10-judge"):
        if not (MODELS / d / "manifest.json").is_file():
            pytest.skip(f"models/{d} is not shipped")


def test_end_to_end_run_cache_and_cli(tiny_root: Path, tmp_path: Path) -> None:
    _need_models()
    grids = {"saic-small": [0, 100], "jpeg420": [1, 50], "webp": [0, 50]}
    out, cache = tmp_path / "out", tmp_path / "cache"
    doc = sem.run_semantic([MODELS / "saic-small"], tiny_root, out, cache, ["jpeg420", "webp"], grids,
                           rates=[0.125, 1.0], show_progress=False)
    assert doc["dataset"]["n_images"] == 20
    assert set(doc["codecs"]) == {"saic:saic-small", "jpeg420", "webp"}
    ours = doc["codecs"]["saic:saic-small"]
    assert ours["label"] == "saic saic-small" and [p["quality"] for p in ours["points"]] == [0, 100]
    for res in doc["codecs"].values():
        lo, hi = res["points"]
        assert lo["bpp"] < hi["bpp"] and 0 < lo["payload_bpp"] < lo["bpp"]
        for p in res["points"]:
            assert 0 <= p["task_top1"] <= 1 and 0 <= p["judge_top1"] <= 1 and 0 < p["si"] < 1 and 0 < p["ms_ssim"] < 1
    # JPEG's container alone is far above 0.125 bpp on 64x64: reported as unreachable, not extrapolated
    jpeg = doc["at_rate"]["jpeg420"]["0.125"]["judge_top1@bpp"]
    assert jpeg["value"] is None and jpeg["reason"] == "below" and jpeg["min_bpp"] > 0.5
    o = doc["originals"]
    assert o["bpp"] == 24 and o["si"] == pytest.approx(1) and 0 < o["png_bpp"] < 24
    assert doc["correlations"]["points"]["n_points"] == 6
    if "head_top1" in ours["points"][0]:  # a latent head ships for this codec
        cd = doc["compressed_domain"]["saic:saic-small"]
        assert cd["points"][0]["x_fewer_bits_than_raw"] == pytest.approx(24 / ours["points"][0]["bpp"])
        assert {r["batch"] for r in cd["timing"]["rows"]} == {1, 32}
    table = (out / "table.md").read_text()
    assert "not reachable" in table and "Top-1 at 0.125 bpp (headline)" in table and "Spearman" in table
    assert (out / "accuracy_vs_bpp.png").stat().st_size > 10_000
    assert json.loads((out / "semantic.json").read_text())["codecs"]["webp"]["points"] == doc["codecs"]["webp"]["points"]

    # the caches: streams and scores are reused (identical numbers), a new grid point only adds its files
    n_files = len(list(cache.rglob("*.npz")))
    again = sem.run_semantic([MODELS / "saic-small"], tiny_root, out, cache, ["jpeg420", "webp"], grids,
                             rates=[0.125], timing=False, plot=False, show_progress=False)
    assert again["codecs"] == doc["codecs"] and len(list(cache.rglob("*.npz"))) == n_files

    from saic.cli import main as saic_main

    rc = saic_main(["eval", "semantic", "--models", str(MODELS / "saic-small"), "--data", str(tiny_root), "--out",
                    str(tmp_path / "cli"), "--cache", str(cache), "--baselines", "jpeg420", "--grid", "jpeg420=1,50,90",
                    "--grid", "saic-small=0,100", "--every", "2", "--no-timing", "--no-plot", "--quiet"])
    assert rc == 0
    cli_doc = json.loads((tmp_path / "cli" / "semantic.json").read_text())
    assert cli_doc["dataset"]["n_images"] == 10 and cli_doc["dataset"]["every"] == 2
    assert cli_doc["codecs"]["jpeg420"]["qualities"] == [1, 50, 90]


def test_subset_loader_keeps_class_order(tiny_root: Path) -> None:
    classes = ["bird", "boat", "bus_train", "car", "cat", "dog", "hoofed", "insect", "monkey", "truck"]
    full = sem.load_tiny10(tiny_root, classes)
    sub = sem.load_tiny10(tiny_root, classes, every=4)
    assert full.images.shape == (20, 64, 64, 3) and full.images.dtype == np.uint8  # grayscale JPEGs became RGB
    assert list(full.labels) == [i // 2 for i in range(20)]
    assert sub.names == full.names[::4] and sub.fingerprint != full.fingerprint
    with pytest.raises(FileNotFoundError):
        sem.load_tiny10(tiny_root / "missing", classes)


def test_memo_classifier_gives_the_same_si_and_classifies_originals_once() -> None:
    _need_models()
    from saic.semantics.classifier import SemanticClassifier
    from saic.semantics.si import SIScorer

    task = SemanticClassifier(MODELS / "tiny10-classifier", threads=1)
    originals = [make_photo(64, 64, seed=s) for s in range(3)]
    decoded = [np.clip(o.astype(int) + 9, 0, 255).astype(np.uint8) for o in originals]
    memo = sem.MemoClassifier(task, originals)
    calls: list[int] = []
    inner_predict = task.predict
    task.predict = lambda ims: (calls.append(len(ims)), inner_predict(ims))[1]  # count classifier work
    for _ in range(2):
        a = SIScorer(memo).score_batch(originals, decoded)
    assert calls == [6, 3]  # second round: only the decoded images
    b = SIScorer(task).score_batch(originals, decoded)
    assert [r.si for r in a] == pytest.approx([r.si for r in b], abs=1e-9)
    assert memo.id == task.id and memo.classes == task.classes


def test_committed_results_belong_to_the_committed_models() -> None:
    """models/semantic_eval was measured with the codecs and classifiers that are committed now:
    re-exporting one without re-running `saic eval semantic` fails here."""
    doc = json.loads((MODELS / "semantic_eval" / "semantic.json").read_text())
    for role, name in (("task", "tiny10-classifier"), ("judge", "tiny10-judge")):
        assert doc["classifiers"][role]["sha256"] == json.loads((MODELS / name / "manifest.json").read_text())["sha256"]
    dirs = {p.parent.name: p.parent for p in MODELS.glob("**/manifest.json")}
    saic_rows = [k.split(":", 1)[1] for k, v in doc["codecs"].items() if v["kind"] == "saic"]
    assert {"saic-semantic", "saic-mse-twin"} <= set(saic_rows)
    for model_id in saic_rows:
        sha = json.loads((dirs[model_id] / "manifest.json").read_text())["sha256"]
        assert f"sha256 {sha}" in doc["codecs"][f"saic:{model_id}"]["settings"], f"{model_id}: re-run saic eval semantic"
    # every shipped compressed-domain head of an evaluated codec was measured, in its committed version
    for manifest in MODELS.glob("*/manifest.json"):
        head = json.loads(manifest.read_text())
        if head.get("kind") == "latent_head" and head["codec_id"] in saic_rows:
            measured = doc["codecs"][f"saic:{head['codec_id']}"].get("latent_head", {})
            assert measured.get("sha256") == head["sha256"], f"{manifest.parent.name}: re-run saic eval semantic"
    # the headline the SAIC model ships on: the judge at 0.125 bpp beats the MSE twin's
    at = doc["at_rate"]
    assert at["saic:saic-semantic"]["0.125"]["judge_top1@bpp"]["value"] > at["saic:saic-mse-twin"]["0.125"]["judge_top1@bpp"]["value"]
