"""GSW closed form vs torch autograd Grad-CAM; ONNX export vs torch; runtime vs training loss.

Uses freshly built (randomised) torch models of both architectures, exported to a temporary
model directory, so it needs no checkpoint; skipped where torch is not installed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from conftest import MODELS, REPO, make_photo  # noqa: E402
from saic.semantics.classifier import SemanticClassifier  # noqa: E402
from saic.semantics.gsw import gradcam_alpha, gsw_weights  # noqa: E402
from saic.semantics.si import SIScorer  # noqa: E402
from saic.training import classifier as TC  # noqa: E402
from saic.training.export_classifier import write_bundle  # noqa: E402
from saic.training.semantic_loss import semantic_distortion  # noqa: E402

ARCHS = sorted(TC.ARCHS)


def randomised(arch: str, seed: int = 0) -> TC.Classifier:
    """A model with non-trivial BatchNorm statistics and affine parameters (eval mode)."""
    torch.manual_seed(seed)
    model = TC.build(arch)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=ARCHS)
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    torch.set_num_threads(1)
    model = randomised(request.param)
    d = tmp_path_factory.mktemp(request.param)
    write_bundle(model, d, f"test-{request.param}", {"accuracy": {"test_top1": None}})
    return model, d


@pytest.mark.parametrize("arch", ARCHS)
def test_gsw_closed_form_equals_autograd_gradcam(arch: str) -> None:
    model = randomised(arch, seed=1)
    x = torch.rand(4, 3, 64, 64)
    feats = model.features(x).detach().requires_grad_(True)
    logits = model.head(feats.mean(dim=(2, 3)))
    c = logits.argmax(1)
    logits.gather(1, c[:, None]).sum().backward()
    alpha_autograd = feats.grad.mean(dim=(2, 3)).numpy()  # Grad-CAM: spatial mean of d y_c / d A_k
    h, w = feats.shape[2:]
    w_head = model.head.weight.detach().numpy()
    np.testing.assert_allclose(gradcam_alpha(w_head, c.numpy(), h * w), alpha_autograd, rtol=1e-5, atol=1e-9)
    g = gsw_weights(w_head, c.numpy())
    np.testing.assert_allclose(g.sum(1), 1.0)
    assert (g >= 0).all() and (g[w_head[c.numpy()] <= 0] == 0).all()


def test_onnx_matches_torch(bundle: tuple) -> None:
    model, d = bundle
    clf = SemanticClassifier(d, threads=1)  # also checks sha256 and head.npz vs graph
    images = np.stack([make_photo(64, 64, seed=s) for s in range(6)])
    logits, feats = clf.predict(images)
    with torch.no_grad():
        t_logits, t_feats = model.forward_both(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(logits, t_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(feats, t_feats.numpy(), rtol=1e-4, atol=1e-4)
    assert json.loads((d / "manifest.json").read_text())["outputs"]["features"][1:] == list(t_feats.shape[1:])


def test_runtime_feature_error_equals_training_loss(bundle: tuple) -> None:
    """SI's semantic error e (numpy, closed-form GSW) == semantic_distortion (torch, autograd GSW)."""
    model, d = bundle
    scorer = SIScorer(SemanticClassifier(d, threads=1))
    rng = np.random.default_rng(0)
    originals = [make_photo(64, 64, seed=s) for s in range(4)]
    decoded = [np.clip(o.astype(int) + rng.integers(-25, 26, o.shape), 0, 255).astype(np.uint8) for o in originals]
    e_runtime = np.array([r.feature_error for r in scorer.score_batch(originals, decoded)])
    to_t = lambda ims: torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    e_torch = semantic_distortion(model, to_t(originals), to_t(decoded), reduction="none").detach().numpy()
    np.testing.assert_allclose(e_runtime, e_torch, rtol=2e-3, atol=1e-7)


@pytest.mark.skipif(not (REPO / "runs/tiny10-classifier/ckpt.pt").exists(), reason="training checkpoint not present")
def test_shipped_onnx_matches_its_checkpoint() -> None:
    model, _ = TC.load_checkpoint(REPO / "runs/tiny10-classifier/ckpt.pt")
    clf = SemanticClassifier(MODELS / "tiny10-classifier", threads=1)
    w = model.head.weight.detach().numpy()
    if not np.array_equal(w, clf.head_weight):
        pytest.skip("checkpoint in runs/ is not the one that was exported")
    images = np.stack([make_photo(64, 64, seed=s) for s in range(4)])
    logits, _ = clf.predict(images)
    with torch.no_grad():
        t_logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(logits, t_logits.numpy(), rtol=1e-4, atol=1e-4)
