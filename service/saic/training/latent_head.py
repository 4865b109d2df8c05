"""Compressed-domain classifier: a small CNN on the decoded latent y_hat of a frozen codec.

    nice -n 5 python -m saic.training.latent_head --codec models/saic-small --out runs/latent-head \\
        --export models/saic-small-latent-head --minutes 10

Three resumable stages in `--out`:

1. latents: every tiny10/train image (validation split excluded) is compressed by the frozen
   codec `--copies` times, each copy at a uniformly random quality in [0, 100] and flipped
   horizontally at random, and the *real* bitstream is entropy-decoded with
   `CodecModel.decode_latents` (so the head sees the actual quantisation and the inverse
   gains of every rate); the validation images at qualities 0, 50, 100.  Stored as float16
   chunks under `latents-<codec sha256[:12]>/` (a re-exported codec gets fresh latents).
2. train: `LatentHeadNet` (per-channel standardisation inside, 3x3 conv, one residual block,
   1x1 conv, global average pool, dropout, linear) with AdamW, cosine LR over a wall-clock
   budget (`--minutes`, one thread), label smoothing 0.1.  Flipping a latent is *not* a valid
   augmentation (learned filters are not mirror-symmetric), hence the flipped copies in 1.
3. export: `latent_head.onnx` (input `y_hat` (B,M,h,w) any h, w; output `logits`), checked
   against torch, plus `manifest.json` (kind "latent_head", the codec's id and sha256,
   classes, validation accuracy per quality measured with the onnxruntime runtime
   `saic.semantics.latent`) and `MODEL_CARD.md`.  tiny10/test is left to `saic eval semantic`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .classifier import CLASSES, default_data_dir, load_split, train_val_split

OPSET = 17
VAL_QUALITIES = (0, 50, 100)
CHUNK = 512


# ----------------------------------------------------------------------------- latents


def encode_latents(codec, x: np.ndarray, qualities: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 (N,H,W,3) images at per-image qualities -> float16 latents via real bitstreams."""
    out = []
    for i in range(0, len(x), batch):
        streams = codec.compress_batch(list(x[i : i + batch]), [int(q) for q in qualities[i : i + batch]])
        out.append(codec.decode_latents([codec.parse(s) for s in streams]).astype(np.float16))
    return np.concatenate(out)


def build_latents(codec, out: Path, copies: int, seed: int, data: Path, cache: Path) -> dict[str, np.ndarray]:
    """Stage 1 (resumable per chunk): train latents (random quality and flip per copy) and val
    latents at VAL_QUALITIES.  Returns arrays y (N,M,h,w) float16, labels, qualities per split."""
    x_all, y_all = load_split(data / "tiny10", "train", cache)
    tr, va = train_val_split(y_all)
    folder = out / f"latents-{codec.sha256[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    plan = {  # split -> (image indices, qualities, flips); drawn up front so chunks are reproducible
        "train": (np.tile(tr, copies), rng.integers(0, 101, len(tr) * copies), rng.random(len(tr) * copies) < 0.5),
        "val": (np.repeat(va, len(VAL_QUALITIES)), np.tile(VAL_QUALITIES, len(va)), np.zeros(len(va) * len(VAL_QUALITIES), bool)),
    }
    result: dict[str, np.ndarray] = {}
    spent_file = folder / "seconds.json"  # extraction time summed over invocations (chunks resume)
    spent = json.loads(spent_file.read_text()) if spent_file.exists() else {}
    for split, (idx, qs, flips) in plan.items():
        parts = []
        for c in range(0, len(idx), CHUNK):
            f = folder / f"{split}_{c // CHUNK:04d}.npy"
            if not f.exists():
                t0 = time.time()
                xb = x_all[idx[c : c + CHUNK]]
                xb = np.where(flips[c : c + CHUNK, None, None, None], xb[:, :, ::-1], xb)
                np.save(f.with_suffix(".tmp.npy"), encode_latents(codec, np.ascontiguousarray(xb), qs[c : c + CHUNK]))
                f.with_suffix(".tmp.npy").rename(f)
                spent[f.name] = time.time() - t0
                spent_file.write_text(json.dumps(spent))
                print(json.dumps({"latents": split, "chunk": c // CHUNK, "of": -(-len(idx) // CHUNK),
                                  "seconds": round(time.time() - t0, 1)}), flush=True)
            parts.append(np.load(f))
        result[f"{split}_y"] = np.concatenate(parts)
        result[f"{split}_labels"] = y_all[idx]
        result[f"{split}_q"] = qs.astype(np.int64)
        result[f"{split}_index"], result[f"{split}_flip"] = idx, flips
    result["seconds"] = np.float64(sum(spent.values()))
    return result


# ----------------------------------------------------------------------------- model


class LatentHeadNet(nn.Module):
    """Standardise per channel -> 3x3 conv -> residual block -> 1x1 conv -> GAP -> dropout -> linear."""

    def __init__(self, m: int, mean: np.ndarray, std: np.ndarray, width: int = 128, classes: int = len(CLASSES),
                 dropout: float = 0.3):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, m, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, m, 1, 1))

        def cbr(i: int, o: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.stem = cbr(m, width, 3)
        self.block = nn.Sequential(cbr(width, width, 3), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(width))
        self.expand = cbr(width, 2 * width, 1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        h = self.stem((y_hat - self.mean) / self.std)
        h = F.relu(h + self.block(h))
        h = self.expand(h).mean(dim=(2, 3))
        return self.fc(self.drop(h))


def top1(model: nn.Module, y: np.ndarray, labels: np.ndarray, batch: int = 1024) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(y), batch):
            logits = model(torch.from_numpy(y[i : i + batch].astype(np.float32)))
            correct += int((logits.argmax(1).numpy() == labels[i : i + batch]).sum())
    return correct / max(1, len(y))


def teacher_logits(teacher_dir: Path, out: Path, d: dict[str, np.ndarray], data: Path, cache: Path) -> np.ndarray:
    """Logits of a pixel classifier (onnxruntime) on exactly the (flipped) original images behind
    each training latent; cached per teacher hash and latent set."""
    from saic.semantics.classifier import SemanticClassifier

    teacher = SemanticClassifier(teacher_dir, threads=1)
    key = hashlib.sha256(d["train_index"].tobytes() + d["train_flip"].tobytes()).hexdigest()[:12]
    f = out / f"teacher-{teacher.sha256[:12]}-{key}.npy"
    if f.exists():
        return np.load(f)
    x_all, _ = load_split(data / "tiny10", "train", cache)
    logits = []
    for i in range(0, len(d["train_index"]), 512):
        xb = x_all[d["train_index"][i : i + 512]]
        xb = np.where(d["train_flip"][i : i + 512, None, None, None], xb[:, :, ::-1], xb)
        logits.append(teacher.predict(np.ascontiguousarray(xb))[0])
    np.save(f, np.concatenate(logits))
    return np.load(f)


def train(model: LatentHeadNet, d: dict[str, np.ndarray], minutes: float, batch: int, lr: float, wd: float,
          seed: int, teacher: np.ndarray | None = None, alpha: float = 0.7, temperature: float = 4.0) -> dict:
    """Stage 2: AdamW, 10% warm-up then cosine over the wall-clock budget; returns the history.
    With `teacher` logits: knowledge distillation, (1-alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)
    (Hinton et al. 2015): a pixel classifier's soft labels carry more than 10k hard labels do."""
    gen = torch.Generator().manual_seed(seed)
    y_tr = torch.from_numpy(d["train_y"].astype(np.float32))
    l_tr = torch.from_numpy(d["train_labels"])
    t_tr = None if teacher is None else torch.from_numpy(teacher.astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    budget, t0, step, epoch = minutes * 60, time.time(), 0, 0
    history = []
    while time.time() - t0 < budget:
        perm = torch.randperm(len(y_tr), generator=gen)
        model.train()
        run, n = 0.0, 0
        for j in range(0, len(perm) - batch + 1, batch):
            t = (time.time() - t0) / budget
            if t >= 1:
                break
            for g in opt.param_groups:
                g["lr"] = lr * (t / 0.1 if t < 0.1 else 0.5 * (1 + math.cos(math.pi * (t - 0.1) / 0.9)))
            idx = perm[j : j + batch]
            logits = model(y_tr[idx])
            loss = F.cross_entropy(logits, l_tr[idx], label_smoothing=0.1)
            if t_tr is not None:
                kd = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(t_tr[idx] / temperature, 1),
                              reduction="batchmean", log_target=True)
                loss = (1 - alpha) * loss + alpha * temperature**2 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            n += 1
            run += loss.item()
        epoch += 1  # the last one may be partial (the budget ran out): its loss is the mean of its steps
        rec = {"epoch": epoch, "step": step, "loss": round(run / max(1, n), 4),
               "val_top1": round(top1(model, d["val_y"], d["val_labels"]), 4), "wall": round(time.time() - t0)}
        history.append(rec)
        print(json.dumps(rec), flush=True)
    return {"steps": step, "epochs": epoch, "wall_seconds": round(time.time() - t0), "history": history}


# ----------------------------------------------------------------------------- export


class _Export(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.model(y_hat)


def export(model: LatentHeadNet, codec, out: Path, d: dict[str, np.ndarray], record: dict) -> dict:
    """Stage 3: ONNX + manifest + model card; validation accuracy measured with the runtime."""
    from saic.semantics.latent import ONNX_FILE, LatentHead

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    m = int(model.mean.shape[1])
    onnx_path = out / ONNX_FILE
    torch.onnx.export(_Export(model).eval(), (torch.zeros(2, m, 4, 4),), str(onnx_path), input_names=["y_hat"],
                      output_names=["logits"], opset_version=OPSET, dynamo=False,
                      dynamic_axes={"y_hat": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch"}})
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    head_id = f"{codec.id}-latent-head"
    manifest = {
        "id": head_id, "kind": "latent_head", "sha256": sha, "files": {ONNX_FILE: sha},
        "codec_id": codec.id, "codec_sha256": codec.sha256, "classes": list(CLASSES),
        "input": {"name": "y_hat", "dtype": "float32", "shape": ["batch", m, "h", "w"],
                  "what": "inverse-gained latent from CodecModel.decode_latents (no synthesis)"},
        "outputs": {"logits": ["batch", len(CLASSES)]},
        "params": sum(p.numel() for p in model.parameters()), "opset": OPSET,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    head = LatentHead(out, threads=1)
    probe = d["val_y"][:256].astype(np.float32)
    with torch.no_grad():
        diff = float(np.abs(head.logits(probe) - model(torch.from_numpy(probe)).numpy()).max())
    logits = np.concatenate([head.logits(d["val_y"][i : i + 1024].astype(np.float32)) for i in range(0, len(d["val_y"]), 1024)])
    correct = logits.argmax(1) == d["val_labels"]
    per_q = {str(q): round(float(correct[d["val_q"] == q].mean()), 4) for q in VAL_QUALITIES}
    manifest.update({
        "accuracy": {"val_top1_by_quality": per_q, "val_images": int((d["val_q"] == VAL_QUALITIES[0]).sum()),
                     "test": "see models/semantic_eval (saic eval semantic)"},
        "training": {k: v for k, v in record.items() if k != "history"},
        "export_check": {"max_abs_logits": diff},
    })
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(manifest, record))
    return manifest


def distill_line(c: dict) -> str:
    if not c.get("distill"):
        return ""
    return (f"\n- Knowledge distillation from the task classifier `{c['distill_id']}` (sha256 `{c['distill_sha256'][:12]}…`, "
            f"{c['distill_test_top1']} test top-1 on pixels): loss = {1 - c['alpha']:g}·CE(labels) + {c['alpha']:g}·T²·KL(teacher‖head) "
            f"at T = {c['temperature']:g}, the teacher seeing the same (flipped) original image as the latent.  "
            "The judge is never used in training.")


def model_card(m: dict, rec: dict) -> str:
    c = rec["config"]
    hist = "\n".join(f"| {h['epoch']} | {h['step']} | {h['loss']} | {h['val_top1']:.4f} | {h['wall']} |" for h in rec["history"])
    acc = " / ".join(f"q{q}: {v:.4f}" for q, v in m["accuracy"]["val_top1_by_quality"].items())
    return f"""# {m['id']}

Compressed-domain tiny10 classifier for codec `{m['codec_id']}` (sha256 `{m['codec_sha256'][:16]}…`): reads the
latent y_hat that entropy decoding alone produces (`CodecModel.decode_latents`), no synthesis
transform, no pixels.  Runtime: `saic.semantics.latent`; served by POST /v1/classify and gRPC Classify.

## Model
- Input `y_hat` float32 (B,{m['input']['shape'][1]},h,w) (4x4 for a 64x64 image); per-channel standardisation
  (training-set mean/std) inside the graph; 3x3 conv {c['width']}ch, one residual block of two 3x3 convs,
  1x1 conv {2 * c['width']}ch, global average pool, dropout {c['dropout']}, linear -> `logits` (B,10);
  {m['params']:,} parameters.  Classes: {', '.join(m['classes'])}.
- Only valid for the codec whose sha256 the manifest names (the runtime refuses others).

## Data
- tiny10/train without the validation split (every 10th image per class): {c['n_train_images']} images, each
  compressed {c['copies']}x by the frozen codec at a uniformly random quality in [0, 100], randomly
  h-flipped, entropy-decoded from the real bitstream -> {c['n_train']} latents.
- Validation: the {m['accuracy']['val_images']} held-out images at qualities {', '.join(map(str, VAL_QUALITIES))}.
- tiny10/test is only used by `saic eval semantic` (results in models/semantic_eval/).

## Training
- AdamW lr {c['lr']}, weight decay {c['wd']}, batch {c['batch']}, label smoothing 0.1, 10% warm-up then
  cosine over a {c['minutes']:g}-minute wall-clock budget; {rec['steps']} steps, {rec['epochs']} epochs, seed {c['seed']}.{distill_line(c)}
- Hardware: {rec['hardware']}, `nice -n 5`, shared 2-core VM (codec training running beside it).
- Wall time: training {rec['wall_seconds'] / 60:.1f} min; latent extraction {rec['latent_seconds'] / 60:.1f} min.

| epoch | step | loss | val top-1 (q 0/50/100 pooled) | wall s |
|---|---|---|---|---|
{hist}

## Measured (exported ONNX graph, onnxruntime CPU, validation split)
{acc}

Export: torch {torch.__version__}, ONNX opset {m['opset']}; max |ONNX - torch| logits {m['export_check']['max_abs_logits']:.2e}.
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", type=Path, required=True, help="codec model directory (frozen)")
    ap.add_argument("--out", type=Path, required=True, help="work folder (latents, checkpoint)")
    ap.add_argument("--export", type=Path, help="model directory to write (default models/<codec id>-latent-head)")
    ap.add_argument("--data", type=Path, default=None, help="folder holding tiny10/ (default ../shared/data)")
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distill", type=Path, default=None,
                    help="teacher classifier dir (e.g. models/tiny10-classifier) for knowledge distillation; never the judge")
    ap.add_argument("--alpha", type=float, default=0.7, help="weight of the distillation term")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--latents-only", action="store_true", help="stop after stage 1")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from saic.codec.model import CodecModel

    codec = CodecModel(args.codec, threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    d = build_latents(codec, args.out, args.copies, args.seed, args.data or default_data_dir(), args.cache)
    latent_seconds = float(d.pop("seconds"))
    if args.latents_only:
        return
    y = d["train_y"].astype(np.float32)
    mean, std = y.mean(axis=(0, 2, 3)), y.std(axis=(0, 2, 3)) + 1e-3
    model = LatentHeadNet(y.shape[1], mean, std, args.width, dropout=args.dropout)
    del y
    teacher = None
    if args.distill is not None:
        t0 = time.time()
        teacher = teacher_logits(args.distill, args.out, d, args.data or default_data_dir(), args.cache)
        print(json.dumps({"teacher": str(args.distill), "seconds": round(time.time() - t0)}), flush=True)
    rec = train(model, d, args.minutes, args.batch, args.lr, args.wd, args.seed, teacher, args.alpha, args.temperature)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(n_train=int(len(d["train_y"])), n_train_images=int(len(d["train_y"]) // args.copies))
    if args.distill is not None:
        tm = json.loads((args.distill / "manifest.json").read_text())
        config.update(distill_id=tm["id"], distill_sha256=tm["sha256"],
                      distill_test_top1=tm.get("accuracy", {}).get("test_top1"))
    rec.update(config=config, latent_seconds=round(latent_seconds),
               hardware=f"{platform.machine()} cpu, {args.threads} thread(s), torch {torch.__version__}")
    torch.save({"model": model.state_dict(), "record": rec}, args.out / "ckpt.pt")
    manifest = export(model, codec, args.export or Path("models") / f"{codec.id}-latent-head", d, rec)
    print(json.dumps({"exported": manifest["id"], "val": manifest["accuracy"]["val_top1_by_quality"]}))


if __name__ == "__main__":
    main()
