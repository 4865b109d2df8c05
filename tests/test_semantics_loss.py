"""saic.training.semantic_loss.semantic_distortion on tiny inputs (torch; skipped without it)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from saic.training.classifier import build  # noqa: E402
from saic.training.semantic_loss import gsw, semantic_distortion  # noqa: E402


@pytest.fixture()
def clf() -> torch.nn.Module:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build("resnet")
    for m in model.modules():  # non-trivial residual branches and BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval().requires_grad_(False)
    return model


def test_zero_for_identical_positive_otherwise(clf: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32)
    assert semantic_distortion(clf, x, x.clone()).item() == 0.0
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    d = semantic_distortion(clf, x, noisy, reduction="none")
    assert d.shape == (2,) and (d > 0).all()
    assert semantic_distortion(clf, x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1)) > d.mean()


def test_gradient_reaches_x_hat_only(clf: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    clf.requires_grad_(True)  # even with trainable parameters, the GSW pass must not touch them
    gsw(clf, x)
    assert all(p.grad is None for p in clf.parameters())
    clf.requires_grad_(False)
    semantic_distortion(clf, x, x_hat).backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in clf.parameters())


def test_gsw_are_detached_normalised_gradcam_weights(clf: torch.nn.Module) -> None:
    x = torch.rand(3, 3, 32, 32)
    (g,), (a,) = gsw(clf, x)
    assert not g.requires_grad and not a.requires_grad
    torch.testing.assert_close(g.sum(1), torch.ones(3))
    c = clf(x).argmax(1)
    w = clf.head.weight[c].clamp_min(0)
    torch.testing.assert_close(g, w / w.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)  # closed form, last layer
    (raw,), _ = gsw(clf, x, normalize=False)
    torch.testing.assert_close(raw, clf.head.weight[c] / (a.shape[2] * a.shape[3]), rtol=1e-4, atol=1e-7)
    labels = (c + 1) % 10
    (g_lab,), _ = gsw(clf, x, labels=labels)
    w_lab = clf.head.weight[labels].clamp_min(0)
    torch.testing.assert_close(g_lab, w_lab / w_lab.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)


def test_several_layers_and_plain_form(clf: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32)
    x_hat = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    layers = ("body.4", "body.5", "body")
    d = semantic_distortion(clf, x, x_hat, layers=layers, reduction="none")
    singles = torch.stack([semantic_distortion(clf, x, x_hat, layers=(n,), reduction="none") for n in layers])
    torch.testing.assert_close(d, singles.mean(0))
    (g,), (a,) = gsw(clf, x, layers=("body.4",))
    with torch.no_grad():
        a_hat = clf.body[:5](clf.norm(x_hat))
    plain = (g * (a - a_hat).pow(2).mean(dim=(2, 3))).sum(1)
    torch.testing.assert_close(semantic_distortion(clf, x, x_hat, layers=("body.4",), normalize=False,
                                                   reduction="none"), plain)


def test_uniform_weighting_is_the_plain_feature_loss(clf: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32)
    x_hat = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        a, a_hat = clf.body(clf.norm(x)), clf.body(clf.norm(x_hat))
    rel = (a - a_hat).pow(2).sum(dim=(1, 2, 3)) / a.pow(2).sum(dim=(1, 2, 3))
    u = semantic_distortion(clf, x, x_hat, reduction="none", weighting="uniform")
    torch.testing.assert_close(u, rel)
    assert not torch.allclose(u, semantic_distortion(clf, x, x_hat, reduction="none"))  # GSW weighs channels
    with pytest.raises(ValueError, match="weighting"):
        semantic_distortion(clf, x, x_hat, weighting="cam")


def test_mode_restored_and_errors(clf: torch.nn.Module) -> None:
    x = torch.rand(1, 3, 32, 32)
    clf.train()
    semantic_distortion(clf, x, x)
    assert clf.training
    with pytest.raises(ValueError, match="no such layer"):
        semantic_distortion(clf, x, x, layers=("nope",))
    with pytest.raises(ValueError, match="reduction"):
        semantic_distortion(clf, x, x, reduction="sum")
