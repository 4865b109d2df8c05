"""tiny10 classifiers (task model + independent judge): data, augmentation, training.

    setsid nice -n 5 python -m saic.training.classifier --arch resnet --out runs/tiny10-classifier --budget-minutes 20
    setsid nice -n 5 python -m saic.training.classifier --arch vgg --seed 1 --out runs/tiny10-judge --budget-minutes 12

(Re-running the same command resumes from `<out>/ckpt.pt`; `<out>/train.log` has one JSON line per event.)

Both models take x in [0, 1] (B,3,H,W), normalise inside, and end in
global-average-pool -> one linear layer.  That shape makes the Grad-CAM / GSW channel
weights of the last feature map closed-form: d score_c / d A_k(i,j) = W[c,k] / (h*w).

Training is built for a shared 2-core CPU: one thread, the whole dataset held as uint8 in
memory, batch-level augmentation in torch, progressive resizing (the early part of the
schedule runs at 32x32 and 48x48, 4x and 1.8x cheaper per image, the end at the native
64x64 so the BatchNorm statistics match inference), and a resumable checkpoint (model,
optimiser, step, CPU and wall time) every `--save-every` steps.

The schedule (one-cycle LR, resolution steps) is a function of *budget progress* rather
than of steps ("budgeted training"): the machine is shared and its speed varies several-
fold, so a step count cannot be sized in advance.  `--budget-kind cpu` (default) measures
progress in this process's CPU seconds, i.e. a fixed amount of compute whatever the load;
`wall` in wall-clock seconds, i.e. a fixed end time whatever the compute.  Either way the
run ends with a fully decayed LR.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

CLASSES = ("bird", "boat", "bus_train", "car", "cat", "dog", "hoofed", "insect", "monkey", "truck")
INPUT_SIZE = 64
# ImageNet statistics: tiny10 is ImageNet-derived.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
VAL_EVERY = 10  # every 10th image (per class, sorted by file name) of train/ is validation


def default_data_dir() -> Path:
    env = os.environ.get("SAIC_DATA_DIR")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[3] / "../shared/data").resolve()


# ----------------------------------------------------------------------------- data


def load_split(tiny10: Path, split: str, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images of `tiny10/<split>/` as uint8 (N,64,64,3) RGB plus int64 labels.

    Files are sorted per class so the order (and the validation split) is reproducible.
    Grayscale JPEGs are converted to RGB.  Cached as .npz when cache_dir is given.
    """
    cache = cache_dir / f"tiny10_{split}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        z = np.load(cache)
        return z["x"], z["y"]
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((tiny10 / split / name).iterdir()):
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (INPUT_SIZE, INPUT_SIZE):
                    raise ValueError(f"{path}: expected 64x64, got {im.size}")
                xs.append(np.asarray(im, dtype=np.uint8))
            ys.append(label)
    x, y = np.stack(xs), np.asarray(ys, np.int64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, y=y)
    return x, y


def train_val_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): every VAL_EVERY-th image of each class goes to validation."""
    val = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        val[idx[::VAL_EVERY]] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 6, out: int = INPUT_SIZE) -> torch.Tensor:
    """x uint8 (B,H,W,3) -> float (B,3,out,out) in [0,1]: reflect-pad + random crop, h-flip,
    light colour jitter (brightness/contrast/saturation +-20%), then resize to `out`."""
    b = x.shape[0]
    x = x.permute(0, 3, 1, 2).float().div_(255)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h = x.shape[-1] - 2 * pad
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    x = torch.stack([x[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + h] for i in range(b)])
    flip = torch.rand(b, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    u = lambda: (1 + 0.4 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5))  # noqa: E731
    x = x * u()  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u() + mean  # contrast
    gray = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * u() + gray  # saturation
    x = x.clamp_(0, 1)
    if out != h:
        x = F.interpolate(x, size=(out, out), mode="bilinear", antialias=True, align_corners=False)
    return x


def to_input(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0,1] (no augmentation)."""
    x = torch.as_tensor(x)
    return x.permute(0, 3, 1, 2).float().div(255)


# ----------------------------------------------------------------------------- models


class Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn(i: int, o: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1-projection shortcut)."""

    def __init__(self, i: int, o: int, stride: int):
        super().__init__()
        self.c1 = conv_bn(i, o, 3, stride)
        self.c2 = conv_bn(o, o, 3, 1)
        nn.init.zeros_(self.c2[1].weight)  # start as identity: faster, stabler early training
        self.short = conv_bn(i, o, 1, stride) if (stride != 1 or i != o) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.c2(F.relu(self.c1(x))) + self.short(x))


class Classifier(nn.Module):
    """Shared shape: normalise -> `body` -> last feature map -> GAP -> linear `head`."""

    arch: str = ""

    def __init__(self, body: nn.Module, channels: int, num_classes: int = len(CLASSES)):
        super().__init__()
        self.norm = Normalize()
        self.body = body
        self.head = nn.Linear(channels, num_classes)
        self.feature_channels = channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x))

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f.mean(dim=(2, 3))), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_both(x)[0]


@dataclass(frozen=True)
class ArchSpec:
    """stem: (width, stride) 3x3 conv-bn-relu layers; stages: (width, blocks|convs, stride)."""

    kind: str
    stem: tuple[tuple[int, int], ...]
    stages: tuple[tuple[int, int, int], ...]


ARCHS = {
    # task model, ResNet-style (~0.59 M params, ~40 M MAC at 64x64): 64x64 -> 32x32 in the
    # stem, one basic block at 16x16, two at 8x8 -> features (128, 8, 8).
    "resnet": ArchSpec("resnet", ((16, 1), (32, 2)), ((64, 1, 2), (128, 2, 2))),
    # judge, plain VGG-style (no shortcuts, max-pool downsampling, ~0.66 M params):
    # strided first conv -> 32x32, then 2 convs per stage at 16, 8, 4 -> features (192, 4, 4).
    "vgg": ArchSpec("vgg", ((24, 2),), ((48, 2, 2), (96, 2, 2), (192, 2, 2))),
}


def build(arch: str) -> Classifier:
    spec = ARCHS[arch]
    layers: list[nn.Module] = []
    ch = 3
    for width, stride in spec.stem:
        layers += [conv_bn(ch, width, 3, stride), nn.ReLU(inplace=True)]
        ch = width
    for width, n, stride in spec.stages:
        if spec.kind == "resnet":
            for j in range(n):
                layers.append(BasicBlock(ch, width, stride if j == 0 else 1))
                ch = width
        elif spec.kind == "vgg":
            if stride > 1:
                layers.append(nn.MaxPool2d(stride))
            for _ in range(n):
                layers += [conv_bn(ch, width, 3, 1), nn.ReLU(inplace=True)]
                ch = width
        else:
            raise ValueError(spec.kind)
    model = Classifier(nn.Sequential(*layers), ch)
    model.arch = arch
    return model


# ----------------------------------------------------------------------------- training


def evaluate(model: Classifier, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy on uint8 NHWC images (no augmentation)."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            logits = model(to_input(x[i : i + batch]))
            correct += int((logits.argmax(1) == torch.as_tensor(y[i : i + batch])).sum())
    return correct / max(1, len(x))


def lr_at(t: float, peak: float, warmup: float = 0.15) -> float:
    """One-cycle over training progress t in [0,1]: linear warm-up to `peak`, cosine to 0."""
    if t < warmup:
        return peak * (0.1 + 0.9 * t / warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / (1 - warmup))))


def parse_res_schedule(spec: str) -> list[tuple[float, int]]:
    """'0.5:32,0.75:48' -> [(0.5, 32), (0.75, 48)]: size 32 until progress 0.5, 48 until 0.75, then 64."""
    return [(float(a), int(b)) for a, b in (item.split(":") for item in spec.split(",") if item)]


def size_at(t: float, schedule: list[tuple[float, int]]) -> int:
    for until, size in schedule:
        if t < until:
            return size
    return INPUT_SIZE


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[Classifier, dict]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build(ck["arch"])
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="folder holding tiny10/ (default: ../shared/data)")
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--budget-minutes", type=float, default=20,
                    help="length of the whole schedule in minutes of --budget-kind (fixed at the first start)")
    ap.add_argument("--budget-kind", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--minutes", type=float, default=1e9, help="stop this invocation after this many minutes")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--res-schedule", default="0.5:32,0.75:48",
                    help="progress:size,... input size before each progress mark; 64 after the last")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=3, help="validate every N epochs (and at the end)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tiny10 = (args.data or default_data_dir()) / "tiny10"
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "ckpt.pt"
    log = open(args.out / "train.log", "a")

    def emit(rec: dict) -> None:
        print(json.dumps(rec), file=log, flush=True)
        print(json.dumps(rec), flush=True)

    x_all, y_all = load_split(tiny10, "train", args.cache)
    tr, va = train_val_split(y_all)
    x_tr, y_tr = torch.from_numpy(x_all[tr]), torch.from_numpy(y_all[tr])
    x_va, y_va = x_all[va], y_all[va]
    steps_per_epoch = len(tr) // args.batch

    if ckpt.exists():
        model, ck = load_checkpoint(ckpt)
        cfg = ck["config"]
        step, wall, cpu = ck["step"], ck["wall_seconds"], ck.get("cpu_seconds", 0.0)
        hardware = ck["hardware"]
        history = ck["history"]
    else:
        model = build(args.arch)
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        cfg["n_train"], cfg["n_val"] = len(tr), len(va)
        ck, step, wall, cpu, hardware, history = None, 0, 0.0, 0.0, [], []
    budget = cfg["budget_minutes"] * 60
    res_schedule = parse_res_schedule(cfg["res_schedule"])
    if (args.out / "result.json").exists():
        emit({"already_done": step})
        return
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg["wd"]}, {"params": no_decay, "weight_decay": 0}],
                          lr=cfg["lr"], momentum=0.9, nesterov=True)
    if ck is not None:
        opt.load_state_dict(ck["opt"])
    hw = f"{platform.processor() or platform.machine()} cpu, {args.threads} thread(s), torch {torch.__version__}"
    if hw not in hardware:
        hardware.append(hw)
    gen = torch.Generator().manual_seed(args.seed * 1000003 + step)
    n_params = sum(p.numel() for p in model.parameters())
    emit({"start": step, "budget_s": budget, "budget_kind": cfg["budget_kind"], "wall": round(wall), "arch": cfg["arch"], "params": n_params, "hardware": hw})

    def state() -> dict:
        return {"arch": cfg["arch"], "model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                "config": cfg, "wall_seconds": wall + time.time() - t0, "cpu_seconds": cpu + time.process_time() - c0,
                "hardware": hardware, "history": history}

    t0, c0 = time.time(), time.process_time()
    run_loss, run_n, t_last = 0.0, 0, t0
    perm = torch.randperm(len(tr), generator=gen)
    pos = 0
    model.train()
    if cfg["budget_kind"] == "cpu":
        progress = lambda: (cpu + time.process_time() - c0) / budget  # noqa: E731
    else:
        progress = lambda: (wall + time.time() - t0) / budget  # noqa: E731
    while progress() < 1 and time.time() - t0 < args.minutes * 60:
        if pos + args.batch > len(perm):
            perm, pos = torch.randperm(len(tr), generator=gen), 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        t = progress()
        xb = augment(x_tr[idx], gen, out=size_at(t, res_schedule))
        lr = lr_at(t, cfg["lr"])
        for g in opt.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(model(xb), y_tr[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run_loss += loss.item()
        run_n += 1
        if step % args.log_every == 0:
            now = time.time()
            emit({"step": step, "epoch": round(step / steps_per_epoch, 2), "loss": round(run_loss / run_n, 4),
                  "lr": round(lr, 4), "s_per_step": round((now - t_last) / run_n, 3),
                  "progress": round(t, 4), "wall": round(wall + now - t0)})
            run_loss, run_n, t_last = 0.0, 0, now
        if step % (steps_per_epoch * args.eval_every) == 0:
            acc = evaluate(model, x_va, y_va)
            model.train()
            history.append({"step": step, "val_top1": acc, "wall": round(wall + time.time() - t0)})
            emit({"step": step, "val_top1": round(acc, 4)})
        if step % args.save_every == 0:
            save_checkpoint(ckpt, state())
    save_checkpoint(ckpt, state())
    if progress() >= 1:
        x_te, y_te = load_split(tiny10, "test", args.cache)
        val = evaluate(model, x_va, y_va)
        history.append({"step": step, "val_top1": val, "wall": round(wall + time.time() - t0)})
        save_checkpoint(ckpt, state())
        res = {"done": step, "val_top1": val, "test_top1": evaluate(model, x_te, y_te),
               "wall_seconds": round(wall + time.time() - t0), "cpu_seconds": round(cpu + time.process_time() - c0)}
        (args.out / "result.json").write_text(json.dumps(res, indent=1))
        emit(res)
    else:
        emit({"paused": step, "progress": round(progress(), 3)})


if __name__ == "__main__":
    main()
