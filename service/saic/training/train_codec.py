"""Train the variable-rate codec; resumable from its checkpoint, logs one line per interval.

    python -m saic.training.train_codec --out runs/codec --minutes 60
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch

from .data import CropSampler
from .model import CodecConfig, VariableRateCodec, rd_loss

DEFAULT_DATA = ["../shared/data/photos", "../shared/data/bsds500"]


def save_checkpoint(path: Path, model: VariableRateCodec, opt: torch.optim.Optimizer, step: int, extra: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "config": model.config.to_dict(), **extra}, tmp)
    os.replace(tmp, path)


def load_model(path: Path) -> tuple[VariableRateCodec, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = dict(ck["config"])
    cfg["lambdas"] = tuple(cfg["lambdas"])
    model = VariableRateCodec(CodecConfig(**cfg))
    model.load_state_dict(ck["model"])
    return model, ck


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/codec"))
    ap.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    ap.add_argument("--init", type=Path, help="start from this checkpoint (weights only) if --out has none")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--final-lr", type=float, help="switch to this learning rate for the last --final-minutes")
    ap.add_argument("--final-minutes", type=float, default=0.0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward pass (~20%% faster on CPU after ~1 min)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=CodecConfig.n)
    ap.add_argument("--m", type=int, default=CodecConfig.m)
    ap.add_argument("--lambdas", type=lambda v: tuple(float(x) for x in v.split(",")),
                    help="comma list of rate levels; a loaded model at other levels is re-levelled (new gain rows)")
    ap.add_argument("--log-every", type=int, default=200)
    ap.add_argument("--save-every", type=int, default=500)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "ckpt.pt"
    dev = torch.device(args.device)

    extra = {"wall_seconds": 0.0, "hardware": [], "data": args.data}
    if ckpt.exists() or args.init:
        model, ck = load_model(ckpt if ckpt.exists() else args.init)
        step = ck["step"]
        extra = {k: ck.get(k, v) for k, v in extra.items()}
        if args.lambdas and args.lambdas != model.config.lambdas:
            model, ck = model.relevel(args.lambdas), {k: v for k, v in ck.items() if k != "opt"}
    else:
        cfg = CodecConfig(n=args.n, m=args.m, **({"lambdas": args.lambdas} if args.lambdas else {}))
        model, ck, step = VariableRateCodec(cfg), None, 0
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    if ck is not None and ckpt.exists() and "opt" in ck:
        opt.load_state_dict(ck["opt"])
        for g in opt.param_groups:
            g["lr"] = args.lr
    hw = f"{dev.type}:{torch.cuda.get_device_name() if dev.type == 'cuda' else os.cpu_count()}"
    if hw not in extra["hardware"]:
        extra["hardware"] = list(extra["hardware"]) + [hw]

    if args.compile:
        model.forward = torch.compile(model.forward)
    sampler = CropSampler([Path(d) for d in args.data], crop=args.crop, seed=step)
    levels = model.levels
    log = open(args.out / "train.log", "a")
    wall_base = float(extra["wall_seconds"])
    t0 = time.time()
    last = t0
    acc = np.zeros(3)
    n_acc = 0
    stop = []  # SIGTERM/SIGINT: finish the step, save, exit (nothing is lost)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    lr_drop_at = t0 + (args.minutes - args.final_minutes) * 60 if args.final_lr else float("inf")
    while not stop and step < args.max_steps and time.time() - t0 < args.minutes * 60:
        if time.time() >= lr_drop_at:
            lr_drop_at = float("inf")
            for g in opt.param_groups:
                g["lr"] = args.final_lr
            print(json.dumps({"step": step, "lr": args.final_lr}), file=log, flush=True)
        x = torch.from_numpy(sampler.batch(args.batch)).to(dev).permute(0, 3, 1, 2).float() / 255
        t = torch.rand(args.batch, device=dev) * (levels - 1)
        out = model(x, t)
        loss, bpp, mse = rd_loss(out, x, model.lmbda(t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        acc += [loss.item(), bpp.item(), mse.item()]
        n_acc += 1
        if step % args.log_every == 0:
            l, b, m = acc / n_acc
            now = time.time()
            rec = {"step": step, "loss": round(l, 4), "bpp": round(b, 4), "psnr": round(-10 * np.log10(m), 2),
                   "s_per_step": round((now - last) / n_acc, 4)}
            print(json.dumps(rec), file=log, flush=True)
            acc[:] = 0
            n_acc = 0
            last = now
        if step % args.save_every == 0:
            save_checkpoint(ckpt, model, opt, step, {**extra, "wall_seconds": wall_base + time.time() - t0})
    save_checkpoint(ckpt, model.cpu(), opt, step, {**extra, "wall_seconds": wall_base + time.time() - t0})
    print(json.dumps({"done": step}), file=log, flush=True)


if __name__ == "__main__":
    main()
