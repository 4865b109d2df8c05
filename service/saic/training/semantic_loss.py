"""SAIC semantic distortion for codec training: GSW-weighted feature-map distance.

    loss = bpp + lambda * (255^2 * MSE + beta * semantic_distortion(clf, x, x_hat))

For each listed layer l of a frozen classifier, GSW are the Grad-CAM channel weights of the
class score computed by autograd on the *original* x,
    alpha_lk = mean_ij d y_c / d A_lk(i,j),     g_lk = max(alpha_lk, 0) / sum_j max(alpha_lj, 0),
detached (they are targets, not something the codec may change), with c the label when
given, else the classifier's top-1 on x.  The distortion of sample n is

    D_n = 1/L * sum_l  sum_k g_lk ||A_lk(x) - A_lk(x_hat)||^2 / sum_k g_lk ||A_lk(x)||^2   (normalize=True)
    D_n = 1/L * sum_l  sum_k g_lk mean_ij (A_lk(x) - A_lk(x_hat))^2                     (normalize=False)

For the last feature map (layer "body" of `saic.training.classifier.Classifier`) and
normalize=True this is exactly the feature error `e` of the SI metric (saic.semantics.si),
so the training loss and the reported metric measure the same thing.  The relative form
is scale-free across layers and images; the plain form is the paper's weighted MSE.
Gradients flow into x_hat only; the classifier is run in eval mode (BatchNorm statistics
frozen) and its parameters receive no gradient from this function's GSW pass.

`weighting="uniform"` replaces GSW by g_lk = 1/C (a plain feature loss): the ablation that
shows what the gradient weights add.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_LAYERS = ("body",)
WEIGHTINGS = ("gsw", "uniform")


def _capture(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward x; return the logits and the outputs of the named submodules."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"no such layer(s) {missing}; some of: {[n for n in modules if n][:12]}")
    acts: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: acts.__setitem__(name, out))
             for name in layers]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, [acts[name] for name in layers]


def gsw(classifier: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None,
        layers: Sequence[str] = DEFAULT_LAYERS, normalize: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: GSW (B,C) (detached; positive part normalised to sum 1 when `normalize`,
    else the raw Grad-CAM alpha) and the detached activations A_l(x)."""
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)  # makes every activation part of a graph
            logits, acts = _capture(classifier, layers, xg)
            c = logits.argmax(1) if labels is None else labels.to(logits.device).long()
            score = logits.gather(1, c[:, None]).sum()
            grads = torch.autograd.grad(score, acts)
    finally:
        classifier.train(was_training)
    weights = []
    for g in grads:
        alpha = g.mean(dim=(2, 3))  # (B, C): Grad-CAM channel weights
        if normalize:
            pos = alpha.clamp_min(0)
            s = pos.sum(1, keepdim=True)
            alpha = torch.where(s > 0, pos / s.clamp_min(1e-30), torch.full_like(pos, 1 / pos.shape[1]))
        weights.append(alpha.detach())
    return weights, [a.detach() for a in acts]


def uniform_weights(classifier: nn.Module, x: torch.Tensor,
                    layers: Sequence[str] = DEFAULT_LAYERS) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Like `gsw`, but every channel weighs 1/C: the plain feature loss of the ablation."""
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.no_grad():
            _, acts = _capture(classifier, layers, x)
    finally:
        classifier.train(was_training)
    return [torch.full(a.shape[:2], 1.0 / a.shape[1], device=a.device) for a in acts], acts


def semantic_distortion(classifier: nn.Module, x: torch.Tensor, x_hat: torch.Tensor, labels: torch.Tensor | None = None,
                        layers: Sequence[str] = DEFAULT_LAYERS, normalize: bool = True,
                        reduction: str = "mean", weighting: str = "gsw") -> torch.Tensor:
    """GSW-weighted feature distance between x and x_hat (both (B,3,H,W) in [0,1]).

    `classifier`: a frozen torch classifier mapping x in [0,1] to logits (e.g.
    `saic.training.classifier.load_checkpoint(...)[0]` with requires_grad_(False));
    `layers`: names from `classifier.named_modules()` whose outputs (B,C,h,w) are compared.
    `weighting`: "gsw" (the paper's) or "uniform" (plain feature loss, for the ablation).
    Returns a scalar (reduction="mean") or per-sample values (reduction="none")."""
    if weighting == "gsw":
        weights, ref = gsw(classifier, x, labels, layers)
    elif weighting == "uniform":
        weights, ref = uniform_weights(classifier, x, layers)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {weighting!r}")
    was_training = classifier.training
    classifier.eval()
    try:
        _, acts = _capture(classifier, layers, x_hat)
    finally:
        classifier.train(was_training)
    per_layer = []
    for g, a, a_hat in zip(weights, ref, acts):
        diff = (a - a_hat).pow(2)
        if normalize:
            num = (g * diff.sum(dim=(2, 3))).sum(1)
            den = (g * a.pow(2).sum(dim=(2, 3))).sum(1)
            per_layer.append(num / den.clamp_min(1e-12))
        else:
            per_layer.append((g * diff.mean(dim=(2, 3))).sum(1))
    d = torch.stack(per_layer).mean(0)
    if reduction == "mean":
        return d.mean()
    if reduction == "none":
        return d
    raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
