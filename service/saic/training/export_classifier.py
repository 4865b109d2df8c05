"""Export a trained tiny10 classifier checkpoint to a torch-free model directory.

    python -m saic.training.export_classifier runs/tiny10-classifier/ckpt.pt models/tiny10-classifier \
        --id tiny10-classifier

Writes
- `classifier.onnx`: input `x` float32 (B,3,64,64) in [0,1] (normalisation is inside the
  graph), outputs `logits` (B,10) and `features` (B,C,h,w), the last feature map before the
  global average pool; dynamic batch.
- `head.npz`: the linear head `weight` (10,C) and `bias` (10,), float32.  GSW needs them
  (the runtime has no autograd) and the runtime checks them against the graph at load:
  logits == mean_hw(features) @ weight.T + bias.
- `manifest.json` (id, sha256 of the onnx, per-file hashes, classes, input size, accuracy
  measured on the exported graph with onnxruntime) and `MODEL_CARD.md`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from .classifier import ARCHS, CLASSES, INPUT_SIZE, MEAN, STD, VAL_EVERY, Classifier, default_data_dir, \
    load_checkpoint, load_split, parse_res_schedule, train_val_split

OPSET = 17


class _Export(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_both(x)


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    wrapper = _Export(model).eval()  # the exporter restores the wrapper's mode afterwards
    dummy = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(
        wrapper, (dummy,), str(path), input_names=["x"], output_names=["logits", "features"],
        opset_version=OPSET, dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
        dynamo=False,
    )
    model.eval()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bundle(model: Classifier, out: Path, model_id: str, extra: dict | None = None) -> dict:
    """Write classifier.onnx, head.npz and manifest.json (core fields + `extra`); return the manifest.

    Enough for `saic.semantics.classifier.SemanticClassifier` to load; `main` adds the measured
    accuracy, training record and the model card."""
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "classifier.onnx"
    export_onnx(model, onnx_path)
    np.savez(out / "head.npz", weight=model.head.weight.detach().numpy().astype(np.float32),
             bias=model.head.bias.detach().numpy().astype(np.float32))
    with torch.no_grad():
        feat_shape = tuple(model.features(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)).shape[1:])
    files = {p.name: sha256_file(p) for p in (onnx_path, out / "head.npz")}
    spec = ARCHS[model.arch]
    manifest = {
        "id": model_id,
        "kind": "tiny10-classifier",
        "arch": model.arch,
        "arch_spec": {"kind": spec.kind, "stem": spec.stem, "stages": spec.stages},
        "sha256": files["classifier.onnx"],
        "files": files,
        "classes": list(CLASSES),
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "input": {"name": "x", "dtype": "float32", "shape": ["batch", 3, INPUT_SIZE, INPUT_SIZE], "range": [0, 1],
                  "normalisation": {"mean": MEAN, "std": STD, "in_graph": True}},
        "outputs": {"logits": ["batch", len(CLASSES)], "features": ["batch", *map(int, feat_shape)]},
        "resize_rule": "shorter side to 64 (Pillow bicubic, antialiased), center crop 64x64",
        "params": sum(p.numel() for p in model.parameters()),
        "opset": OPSET,
        **(extra or {}),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def onnx_top1(onnx_path: Path, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 of the exported graph on uint8 NHWC images (the artifact we ship, not the checkpoint)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].transpose(0, 3, 1, 2).astype(np.float32) / 255
        logits = sess.run(["logits"], {"x": xb})[0]
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def resize_desc(cfg: dict) -> str:
    if "res_schedule" in cfg:
        marks = parse_res_schedule(cfg["res_schedule"])
        parts, lo = [], 0.0
        for until, size in marks:
            parts.append(f"{size}x{size} for {lo:.0%}-{until:.0%}")
            lo = until
        return ", ".join(parts) + f", 64x64 for {lo:.0%}-100% of the budget"
    return f"{cfg['low_res']}x{cfg['low_res']} for the first {cfg['low_frac']:.0%} of the budget, then 64x64"


def cpu_desc(ck: dict) -> str:
    return f" ({ck['cpu_seconds'] / 60:.1f} CPU-min of one thread)" if "cpu_seconds" in ck else ""


def model_card(m: dict, ck: dict, arch_desc: str, role: str, note: str = "") -> str:
    cfg = ck["config"]
    acc = m["accuracy"]
    hist = "\n".join(f"| {h['step']} | {h['step'] / (cfg['n_train'] // cfg['batch']):.1f} | {h['val_top1']:.4f} | "
                     f"{h['wall']} |" for h in ck["history"])
    return f"""# {m['id']}

{role}

## Model
- Architecture: {arch_desc}; {m['params']:,} parameters; features `{m['outputs']['features']}`.
- Input `x` float32 (B,3,64,64), RGB in [0,1]; ImageNet mean/std normalisation is inside the graph.
  Outputs `logits` (B,10) and `features` (last feature map before global average pooling).
  Head: `logits = mean_hw(features) @ W.T + b`, W and b in `head.npz`.
- Classes (index order): {', '.join(CLASSES)}.
- Other image sizes (runtime rule, `saic.semantics.classifier`): resize the shorter side to
  64 px (Pillow bicubic, antialiased), then center-crop 64x64.

## Data
- `tiny10/train` (../shared/data/tiny10, Tiny-ImageNet-derived, 64x64): 11,600 images; every
  {VAL_EVERY}th image of each class (sorted by file name) is held out for validation:
  {cfg['n_train']} train / {cfg['n_val']} val.  `tiny10/test` (2,900) was used only for the final report below.
- Augmentation: reflect-pad 6 px + random 64x64 crop, horizontal flip, brightness/contrast/
  saturation jitter of +-20%; progressive resizing: {resize_desc(cfg)}.

## Training
- SGD (Nesterov, momentum 0.9), batch {cfg['batch']}, one-cycle LR peak {cfg['lr']}
  (15% linear warm-up, cosine decay), weight decay {cfg['wd']} (not on BN/bias), label smoothing 0.1.
- {ck['step']} steps ({ck['step'] / (cfg['n_train'] // cfg['batch']):.1f} epochs), seed {cfg['seed']}; the schedule
  runs on budget progress ({cfg.get('budget_kind', 'wall')} time used / {cfg['budget_minutes']:g} min), not on a step count.
- Hardware: {'; '.join(ck['hardware'])}, `nice -n 5`, sharing a 2-core VM with a codec training run.
- Wall time: {ck['wall_seconds'] / 60:.1f} min{cpu_desc(ck)}.{chr(10) + '- ' + note if note else ''}

Validation during training (always at 64x64, also while the early phases train at 32/48 px, which
is why the curve is uneven until the last phase):

| step | epoch | val top-1 | wall s |
|---|---|---|---|
{hist}

## Measured (exported ONNX graph, onnxruntime CPU)
| split | images | top-1 |
|---|---|---|
| val | {cfg['n_val']} | {acc['val_top1']:.4f} |
| test | 2900 | {acc['test_top1']:.4f} |

Export: torch {torch.__version__}, ONNX opset {OPSET}; max |ONNX - torch| on 64 test images:
logits {m['export_check']['max_abs_logits']:.2e}, features {m['export_check']['max_abs_features']:.2e}.
"""


ARCH_DESC = {
    "resnet": "ResNet-style CNN: 3x3 stem 16ch @64x64, 3x3 stride-2 32ch @32x32, basic block 64ch @16x16, "
              "two basic blocks 128ch @8x8, global average pool, linear",
    "vgg": "plain VGG-style CNN (no shortcuts): 3x3 stride-2 conv 24ch @32x32, then two 3x3 conv-BN-ReLU per "
           "stage after 2x2 max-pool: 48ch @16x16, 96ch @8x8, 192ch @4x4, global average pool, linear",
}
ROLE = {
    "tiny10-classifier": "Task classifier for semantic-assisted compression: its last feature map and linear head "
                         "define the GSW-weighted semantic distortion (training loss) and the SI metric.",
    "tiny10-judge": "Independent judge: a second classifier of a different architecture and initialisation, "
                    "used only to judge accuracy claims on decoded images (never in a training loss).",
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--id", required=True)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"))
    ap.add_argument("--note", default="", help="one more line for the model card's training section")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, ck = load_checkpoint(args.ckpt)
    manifest = write_bundle(model, args.out, args.id)
    onnx_path = args.out / "classifier.onnx"

    tiny10 = (args.data or default_data_dir()) / "tiny10"
    x_tr, y_tr = load_split(tiny10, "train", args.cache)
    _, va = train_val_split(y_tr)
    x_te, y_te = load_split(tiny10, "test", args.cache)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    xb = x_te[::45][:64].transpose(0, 3, 1, 2).astype(np.float32) / 255
    o_logits, o_feat = sess.run(["logits", "features"], {"x": xb})
    with torch.no_grad():
        t_logits, t_feat = model.forward_both(torch.from_numpy(xb))
    check = {"max_abs_logits": float(np.abs(o_logits - t_logits.numpy()).max()),
             "max_abs_features": float(np.abs(o_feat - t_feat.numpy()).max())}
    t0 = time.time()
    acc = {"val_top1": round(onnx_top1(onnx_path, x_tr[va], y_tr[va]), 4),
           "test_top1": round(onnx_top1(onnx_path, x_te, y_te), 4)}
    manifest.update({
        "accuracy": {**acc, "val_images": int(len(va)), "test_images": int(len(y_te)),
                     "measured_with": f"onnxruntime {ort.__version__} CPU"},
        "training": {"steps": ck["step"], "wall_seconds": round(ck["wall_seconds"]), "hardware": ck["hardware"],
                     "config": ck["config"]},
        "export_check": check,
    })
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (args.out / "MODEL_CARD.md").write_text(model_card(manifest, ck, ARCH_DESC[ck["arch"]], ROLE.get(args.id, ""), args.note))
    print(json.dumps({"id": args.id, **acc, **check, "eval_seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
