"""SAIC fine-tuning: rate + lambda * (255^2 * MSE + beta * GSW semantic distortion).

Starts from a codec checkpoint and fine-tunes it on tiny10 train images (64x64, the task
domain) with a frozen task classifier supplying the semantic term.  Run once with
--beta 0 for the MSE-only twin: same init, data order, steps and lambdas.

    python -m saic.training.train_saic --init runs/codec/ckpt.pt --classifier runs/tiny10-classifier/ckpt.pt \\
        --beta 300 --out runs/saic-b300 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .classifier import default_data_dir, load_checkpoint, load_split, train_val_split
from .model import CodecConfig, VariableRateCodec
from .semantic_loss import WEIGHTINGS, semantic_distortion
from .train_codec import load_model, save_checkpoint

# lower than the photo model's: a 64x64 image at 0.125 bpp has 64 bytes in all
LOW_RATE_LAMBDAS = (0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", type=Path, required=True, help="codec checkpoint to start from")
    ap.add_argument("--classifier", type=Path, required=True, help="frozen task classifier checkpoint")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--beta", type=float, default=300.0, help="weight of the semantic term (0: MSE twin)")
    ap.add_argument("--layers", nargs="+", default=["body"], help="classifier layers compared")
    ap.add_argument("--weighting", choices=WEIGHTINGS, default="gsw",
                    help="channel weights of the semantic term: gsw (SAIC) or uniform (plain feature loss, ablation)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=1e9)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "ckpt.pt"

    if ckpt.exists():
        model, ck = load_model(ckpt)
        step = ck["step"]
    else:
        base, ck = load_model(args.init)
        cfg = dict(base.config.to_dict(), lambdas=LOW_RATE_LAMBDAS)
        model = VariableRateCodec(CodecConfig(**cfg))
        model.load_state_dict(base.state_dict())
        step = 0
    extra = {
        "init": str(args.init), "classifier": str(args.classifier), "beta": args.beta, "layers": args.layers,
        "weighting": args.weighting, "data": "tiny10/train (validation split excluded)", "base_step": ck.get("base_step", ck["step"]),
        "hardware": ck.get("hardware", []), "wall_seconds": float(ck.get("wall_seconds", 0.0)) if step else 0.0,
    }
    clf, _ = load_checkpoint(args.classifier)
    clf.requires_grad_(False)
    x_all, y_all = load_split(default_data_dir() / "tiny10", "train", Path("runs/cache"))
    train_idx, _ = train_val_split(y_all)
    rng = np.random.default_rng(args.seed + step)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    model.train()
    log = open(args.out / "train.log", "a")
    t0, wall0 = time.time(), extra["wall_seconds"]
    acc, n = np.zeros(4), 0
    while step < args.steps and time.time() - t0 < args.minutes * 60:
        idx = rng.choice(train_idx, args.batch, replace=False)
        xb = x_all[idx]
        flip = rng.random(args.batch) < 0.5
        xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
        x = torch.from_numpy(np.ascontiguousarray(xb)).permute(0, 3, 1, 2).float() / 255
        labels = torch.from_numpy(y_all[idx])
        t = torch.rand(args.batch) * (model.levels - 1)
        out = model(x, t)
        lam = model.lmbda(t)
        b, _, h, w = x.shape
        bits = -(out["y_lik"].log2().flatten(1).sum(1) + out["z_lik"].log2().flatten(1).sum(1))
        bpp = bits / (h * w)
        mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)
        sem = (semantic_distortion(clf, x, out["x_hat"].clamp(0, 1), labels, args.layers,
                                   reduction="none", weighting=args.weighting)
               if args.beta > 0 else torch.zeros_like(mse))
        loss = (bpp + lam * (255**2 * mse + args.beta * sem)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        acc += [loss.item(), bpp.mean().item(), mse.mean().item(), sem.mean().item()]
        n += 1
        if step % 100 == 0:
            l, bp, m, s = acc / n
            print(json.dumps({"step": step, "loss": round(l, 4), "bpp": round(bp, 4),
                              "psnr": round(-10 * np.log10(m), 2), "sem": round(s, 4),
                              "wall": round(wall0 + time.time() - t0)}), file=log, flush=True)
            acc[:], n = 0, 0
        if step % 500 == 0:
            save_checkpoint(ckpt, model, opt, step, {**extra, "wall_seconds": wall0 + time.time() - t0})
    save_checkpoint(ckpt, model, opt, step, {**extra, "wall_seconds": wall0 + time.time() - t0})
    print(json.dumps({"done": step}), file=log, flush=True)


if __name__ == "__main__":
    main()
