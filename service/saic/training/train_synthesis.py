"""Fine-tune the synthesis (decoder) of a trained codec alone, optionally deepened with
residual blocks (distortion only).

    python -m saic.training.train_synthesis runs/ctx4/ckpt.pt runs/syn/ckpt.pt --blocks 2

The analysis, hyper-prior and context model stay frozen, so every bitstream keeps its bits
and only the decoded pixels change.  The quantised latents of random 256x256 crops at random
rate levels are computed once (as the entropy coder would code them) and cached.  The loss
is the mean over crops of 10*log10(MSE) (minus the PSNR), so every rate level gains in dB
alike instead of the high-rate levels dominating as they would under lambda*MSE.
New blocks start as the identity, so training starts from the decoder as it was.
The result is an ordinary codec checkpoint for `saic.training.export`; running it again on
its own output continues (the Adam state is kept in it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from .data import CropSampler
from .model import VariableRateCodec
from .train_codec import DEFAULT_DATA, load_model

CROP = 256


@torch.no_grad()
def cached_latents(model: VariableRateCodec, sampler: CropSampler, crops: int, batch: int = 8) -> list[tuple]:
    """(x uint8, y_hat fp16, t) of random crops at random rate levels; y_hat as decoded.
    The levels come from the sampler's seed too, so a validation set is the same in every run."""
    gen = torch.Generator().manual_seed(int(sampler.rng.integers(1 << 62)))
    out = []
    for _ in range(crops // batch):
        x8 = torch.from_numpy(sampler.batch(batch)).permute(0, 3, 1, 2).contiguous()
        x = x8.float() / 255
        t = torch.rand(batch, generator=gen) * (model.levels - 1)
        y = model.g_a(x) * model._interp(model.log_gain, t)
        z_hat = torch.round(model.h_a(y) * model._interp(model.log_hgain, t))
        means, _ = model.entropy_parameters(y, z_hat, t)
        out.append((x8, (torch.round(y - means) + means).half(), t))
    return out


def neg_psnr(model: VariableRateCodec, x8: torch.Tensor, y_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean over crops of 10*log10(MSE) of the decoded crop (pixels in [0, 1])."""
    x_hat = model.g_s(y_hat.float() * model._interp(model.log_inv_gain, t))
    mse = (x_hat - x8.float() / 255).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(mse.clamp_min(1e-6))).mean()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("codec", type=Path, help="trained codec checkpoint")
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    ap.add_argument("--blocks", type=int, default=2, help="residual blocks at 1/8 and at 1/4 resolution (each)")
    ap.add_argument("--crops", type=int, default=8000, help="cached 256x256 training crops")
    ap.add_argument("--val-crops", type=int, default=256, help="held-out crops, logged each epoch")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--final-lr", type=float, default=2e-5, help="for the last quarter of the time")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, ck = load_model(args.codec)
    blocks = max(args.blocks, base.config.synthesis_blocks)
    model, missing = base.grown("g_s.refine", synthesis_blocks=blocks)
    model.eval().requires_grad_(False)
    params = [*model.g_s.parameters(), model.log_inv_gain]
    for p in params:
        p.requires_grad_(True)
    t0 = time.time()
    cache = cached_latents(model, CropSampler([Path(d) for d in args.data], crop=CROP, seed=4321), args.crops)
    val = cached_latents(model, CropSampler([Path(d) for d in args.data], crop=CROP, seed=98765), args.val_crops)
    # batches of args.batch from the cached batches of 8
    pool = [tuple(a[i : i + args.batch] for a in b) for b in cache for i in range(0, 8, args.batch)]
    opt = torch.optim.Adam(params, lr=args.lr)
    if "synthesis_opt" in ck and not missing:
        opt.load_state_dict(ck["synthesis_opt"])
        for g in opt.param_groups:
            g["lr"] = args.lr
    done = dict(ck.get("synthesis_training", {"steps": 0, "seconds": 0, "crops": 0}))
    extra = {k: ck[k] for k in ("step", "wall_seconds", "hardware", "data", "context_training") if k in ck}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = open(args.out.with_suffix(".log"), "a")

    def validate() -> float:
        with torch.no_grad():
            return -sum(neg_psnr(model, *b).item() for b in val) / len(val)

    print(json.dumps({"cached": len(cache) * 8, "seconds": round(time.time() - t0), "val_psnr": round(validate(), 4)}),
          file=log, flush=True)
    start, steps, epoch = time.time(), 0, 0
    final_at = start + 0.75 * args.minutes * 60
    while time.time() - start < args.minutes * 60:
        epoch += 1
        total, n = 0.0, 0
        for k in torch.randperm(len(pool)).tolist():
            if time.time() >= final_at:
                final_at = float("inf")
                for g in opt.param_groups:
                    g["lr"] = args.final_lr
            loss = neg_psnr(model, *pool[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n, steps = total + loss.item(), n + 1, steps + 1
            if time.time() - start >= args.minutes * 60:
                break
        print(json.dumps({"epoch": epoch, "steps": steps, "train_psnr": round(-total / max(n, 1), 4),
                          "val_psnr": round(validate(), 4), "seconds": round(time.time() - t0)}), file=log, flush=True)
        record = {"steps": done["steps"] + steps, "seconds": done["seconds"] + round(time.time() - t0),
                  "crops": len(cache) * 8, "blocks": blocks}
        tmp = args.out.with_suffix(".tmp")  # after every epoch: an interrupted run keeps what it learned
        torch.save({"model": model.state_dict(), "config": model.config.to_dict(), **extra,
                    "synthesis_training": record, "synthesis_opt": opt.state_dict()}, tmp)
        os.replace(tmp, args.out)
    log.close()


if __name__ == "__main__":
    main()
