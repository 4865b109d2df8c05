"""Add a channel-sliced checkerboard context model to a trained codec and train it alone
(rate only); with --hyper, train the hyper-prior along with it.

    python -m saic.training.train_context runs/codec8/ckpt.pt runs/ctx4/ckpt.pt --slices 4

The analysis and synthesis stay frozen, so the pixels stay the same (within rounding: later
latents round around the new means) and only the rate changes, and the latents can be
computed once and cached: an epoch over a few thousand crops takes a minute or two on 2 CPU
cores.  The hyper-prior of a codec trained without context was fitted to carry all of the
prior alone; --hyper lets it share the work with the context model.  The result is an
ordinary codec checkpoint (config.context_slices = S) for `saic.training.export`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .data import CropSampler
from .model import VariableRateCodec, gaussian_likelihood, round_ste
from .train_codec import DEFAULT_DATA, load_model


@torch.no_grad()
def cached_latents(model: VariableRateCodec, sampler: CropSampler, batches: int, batch: int) -> list[tuple]:
    """(y, t): latents of random crops at random rate levels t (the frozen analysis's part)."""
    out = []
    for _ in range(batches):
        x = torch.from_numpy(sampler.batch(batch)).permute(0, 3, 1, 2).float() / 255
        t = torch.rand(batch) * (model.levels - 1)
        out.append((model.g_a(x) * model._interp(model.log_gain, t), t))
    return out


def rate_bits(model: VariableRateCodec, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Bits of y and of its hyper-latent z (the usual uniform-noise proxy for both)."""
    z = model.h_a(y) * model._interp(model.log_hgain, t)
    z_bits = -model.prior.likelihood(z + torch.empty_like(z).uniform_(-0.5, 0.5)).clamp_min(1e-9).log2().sum()
    means, log_scales = model.entropy_parameters(y, round_ste(z), t)
    v = y + torch.empty_like(y).uniform_(-0.5, 0.5)
    return z_bits - gaussian_likelihood(v, means, log_scales.exp()).clamp_min(1e-9).log2().sum()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("codec", type=Path, help="trained codec checkpoint (without context)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    ap.add_argument("--slices", type=int, default=4, help="channel slices (1: plain checkerboard)")
    ap.add_argument("--crops", type=int, default=7200, help="cached 256x256 training crops")
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--final-lr", type=float, default=1e-4, help="for the last quarter of the epochs")
    ap.add_argument("--hyper", action="store_true", help="train the hyper-prior too (hyper-analysis and -synthesis, factorised prior, their gains)")
    ap.add_argument("--seed", type=int, default=12345, help="of the cached crops (continuing? take new ones)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, ck = load_model(args.codec)
    model, missing = base.grown("ctx.", context_slices=args.slices)
    model.eval().requires_grad_(False)
    trained = [model.ctx] + ([model.h_a, model.h_s, model.prior] if args.hyper else [])
    params = [p for m in trained for p in m.parameters()] + ([model.log_hgain, model.log_inv_hgain] if args.hyper else [])
    for p in params:
        p.requires_grad_(True)
    t0 = time.time()
    sampler = CropSampler([Path(d) for d in args.data], crop=256, seed=args.seed)
    cache = cached_latents(model, sampler, args.crops // 8, 8)
    pixels = 8 * 256 * 256
    opt = torch.optim.Adam(params, lr=args.lr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = open(args.out.with_suffix(".log"), "a")
    for epoch in range(args.epochs):
        if epoch == args.epochs - max(1, args.epochs // 4):
            for g in opt.param_groups:
                g["lr"] = args.final_lr
        total = 0.0
        for y, t in cache:
            loss = rate_bits(model, y, t) / pixels
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        rec = {"epoch": epoch + 1, "bpp": round(total / len(cache), 5), "seconds": round(time.time() - t0)}
        print(json.dumps(rec), file=log, flush=True)
    log.close()
    extra = {k: ck[k] for k in ("step", "wall_seconds", "hardware", "data", "synthesis_training") if k in ck}
    before = ck.get("context_training", {}) if not missing else {}  # continuing a trained context model
    torch.save({"model": model.state_dict(), "config": model.config.to_dict(), **extra,
                "context_training": {"crops": before.get("crops", 0) + len(cache) * 8,
                                     "epochs": before.get("epochs", 0) + args.epochs,
                                     "hyper": bool(before.get("hyper")) or args.hyper,
                                     "seconds": before.get("seconds", 0) + round(time.time() - t0)}}, args.out)


if __name__ == "__main__":
    main()
