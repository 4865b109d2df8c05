"""Export a trained codec checkpoint to a model directory the torch-free runtime loads.

    python -m saic.training.export runs/codec/ckpt.pt models/saic-small --id saic-small

Writes analysis.onnx, hyper_analysis.onnx, synthesis.onnx (float, dynamic batch/H/W) and
entropy.npz: the integer side of the codec — fixed-point hyper-synthesis (and context
model, if the model has one), gain tables, quantised CDF tables — so that every machine
derives identical entropy-coder tables.
Also analysis_fp16.onnx and synthesis_fp16.onnx (fp16 weights and arithmetic, float32 in/out)
for GPUs; they sit outside the weights hash because they write and read the same bitstreams.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from saic.codec import fixedpoint as fp
from saic.codec.model import FP16_GRAPHS, file_sha256, weights_sha256

from .model import SCALE_MAX, SCALE_MIN, VariableRateCodec
from .train_codec import load_model

OPSET = 17
GRAPHS = {
    "analysis.onnx": ("g_a", "x", "y"),
    "hyper_analysis.onnx": ("h_a", "y", "z"),
    "synthesis.onnx": ("g_s", "y_hat", "x_hat"),
}


def quantise_pmf(p: np.ndarray, escape: float) -> np.ndarray:
    """Integer frequencies summing to 2**PMF_BITS for p (+ one escape symbol), each >= 1."""
    total = 1 << fp.PMF_BITS
    p = np.append(np.clip(p, 0, None), max(escape, 0.0))
    f = np.maximum(1, np.round(p / p.sum() * (total - len(p))).astype(np.int64)) 
    f[np.argmax(f)] += total - f.sum()
    assert f.min() >= 1 and f.sum() == total
    return f


def gaussian_tables(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per scale: frequencies of symbols -R..R then escape; returns (freqs [S, L], radii [S])."""
    radii = np.maximum(1, np.ceil(fp.TAIL_SIGMAS * scales)).astype(np.int64)
    rows = []
    for s, r in zip(scales, radii):
        v = np.arange(-r, r + 1)
        p = norm.cdf((v + 0.5) / s) - norm.cdf((v - 0.5) / s)
        rows.append(quantise_pmf(p, escape=2 * norm.sf((r + 0.5) / s)))
    return _pad_rows(rows), radii


def prior_tables(model: VariableRateCodec, span: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Per hyper-latent channel: frequencies over [lo_c, hi_c] then escape; returns (freqs, lo)."""
    with torch.no_grad():
        pmf = model.prior.pmf_table(-span, span).double().numpy()
    rows, lows = [], []
    for p in pmf:
        cdf = np.cumsum(p)
        lo = int(np.searchsorted(cdf, 1e-7))
        hi = int(np.searchsorted(cdf, cdf[-1] - 1e-7))
        hi = max(hi, lo + 1)
        tail = p[:lo].sum() + p[hi + 1 :].sum() + max(0.0, 1 - p.sum())
        rows.append(quantise_pmf(p[lo : hi + 1], escape=tail))
        lows.append(lo - span)
    return _pad_rows(rows), np.array(lows, np.int64)


def _pad_rows(rows: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def quantise_conv(conv: torch.nn.Conv2d) -> tuple[np.ndarray, np.ndarray, int]:
    """Weights to integers with a per-layer power-of-two scale; bias at activation*weight scale."""
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy()
    # capped: an all-zero layer (a fresh context model's last one) must not ask for 2**54
    frac = min(30, int(fp.WEIGHT_BITS - 1 - math.ceil(math.log2(np.abs(w).max() + 1e-12))))
    w_int = np.round(w * 2.0**frac).astype(np.int64)
    b_int = np.round(b * 2.0 ** (frac + fp.ACT_FRAC)).astype(np.int64)
    return w_int, b_int, frac


def entropy_arrays(model: VariableRateCodec) -> dict[str, np.ndarray]:
    hs = model.h_s
    arrays: dict[str, np.ndarray] = {}
    for name in ("c1", "c2", "c3", "c4"):
        w, b, frac = quantise_conv(getattr(hs, name))
        arrays[f"{name}_w"], arrays[f"{name}_b"], arrays[f"{name}_frac"] = w, b, np.int64(frac)
    if model.ctx is not None:  # context model: fixedpoint.ContextModel reads x{k}_* and p{k}{i}_* per step k
        arrays["context_slices"] = np.int64(model.ctx.slices)
        for k, step in enumerate(model.ctx.steps, 1):
            for name, layer in ((f"x{k}", step.masked_conv()), (f"p{k}1", step.p1), (f"p{k}2", step.p2), (f"p{k}3", step.p3)):
                w, b, frac = quantise_conv(layer)
                arrays[f"{name}_w"], arrays[f"{name}_b"], arrays[f"{name}_frac"] = w, b, np.int64(frac)
        bounds = np.log([SCALE_MIN, SCALE_MAX]) * 2.0**fp.ACT_FRAC
        arrays["x_log_scale_range"] = np.array([math.ceil(bounds[0]), math.floor(bounds[1])], np.int64)
    with torch.no_grad():
        arrays["inv_hgain"] = np.round(model.log_inv_hgain.exp().double().numpy() * 2.0**fp.ACT_FRAC).astype(np.int64)
        # float gains are used only on the encoder side (y, z) and before synthesis (pixels): not desync-critical
        arrays["gain"] = model.log_gain.exp().float().numpy()
        arrays["inv_gain"] = model.log_inv_gain.exp().float().numpy()
        arrays["hgain"] = model.log_hgain.exp().float().numpy()
    scales = np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), fp.NUM_SCALES))
    log_mid = (np.log(scales[:-1]) + np.log(scales[1:])) / 2
    arrays["scale_thresholds"] = np.round(log_mid * 2.0**fp.ACT_FRAC).astype(np.int64)
    arrays["y_freqs"], arrays["y_radii"] = gaussian_tables(scales)
    arrays["z_freqs"], arrays["z_low"] = prior_tables(model)
    return arrays


def export_onnx(model: VariableRateCodec, out: Path) -> None:
    c = model.config
    shapes = {"x": (1, 3, 128, 128), "y": (1, c.m, 8, 8), "y_hat": (1, c.m, 8, 8)}
    for fname, (attr, inp, outp) in GRAPHS.items():
        module = getattr(model, attr)
        dummy = torch.rand(*shapes[inp])
        torch.onnx.export(
            module, (dummy,), str(out / fname), input_names=[inp], output_names=[outp], opset_version=OPSET,
            dynamic_axes={inp: {0: "batch", 2: "height", 3: "width"}, outp: {0: "batch", 2: "height", 3: "width"}},
            dynamo=False,
        )


def export_fp16(out: Path) -> dict[str, str]:
    """fp16 twins of analysis/synthesis (onnxconverter-common, float32 I/O kept); returns their sha256."""
    import warnings

    import onnx
    import onnxscript.optimizer
    from onnxconverter_common import float16

    hashes = {}
    for name in FP16_GRAPHS.values():
        src = out / name.replace("_fp16", "")
        with warnings.catch_warnings():  # "value truncated to fp16 range" for tiny GDN constants: expected
            warnings.simplefilter("ignore", UserWarning)
            # fold GDN's parameter expressions (abs, +pedestal) first: fp16 constants, not fp16 arithmetic on them
            folded = onnxscript.optimizer.optimize(onnx.load(str(src)))
            m16 = float16.convert_float_to_float16(folded, keep_io_types=True)
        onnx.save(m16, str(out / name))
        hashes[name] = file_sha256(out / name)
    return hashes


def save_resumable(model: VariableRateCodec, ck: dict, path: Path) -> None:
    """Weights-only fp16 checkpoint (a third of the full one) for `train_codec --init`:
    lets CPU training accumulate across sessions from the shipped model."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    keep = ("step", "wall_seconds", "hardware", "data", "context_training", "synthesis_training")
    torch.save({"model": state, "config": model.config.to_dict(), **{k: ck[k] for k in keep if k in ck}}, path)


def export(ckpt: Path, out: Path, model_id: str) -> dict:
    model, ck = load_model(ckpt)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_resumable(model, ck, out / "checkpoint.pt")
    export_onnx(model, out)
    fp16 = export_fp16(out)
    np.savez_compressed(out / "entropy.npz", **entropy_arrays(model))
    files = {p: file_sha256(out / p) for p in [*GRAPHS, "entropy.npz"]}
    sha = weights_sha256(files)
    manifest = {
        "id": model_id,
        "kind": "codec",
        "format": 1,
        "sha256": sha,
        "tag": int(sha[:4], 16),
        "files": files,
        "fp16": fp16,
        "config": model.config.to_dict(),
        "quality_range": [0, 100],
        "opset": OPSET,
        "graphs": {f: {"input": i, "output": o} for f, (_, i, o) in GRAPHS.items()},
        "training": {
            "steps": ck["step"],
            "wall_seconds": round(float(ck.get("wall_seconds", 0.0))),
            "hardware": ck.get("hardware", []),
            "data": ck.get("data", []),
            # SAIC fine-tunes (train_saic) also record their semantic loss and starting point
            **{k: ck[k] for k in ("beta", "weighting", "layers", "classifier", "init", "base_step",
                                  "context_training", "synthesis_training") if k in ck},
        },
    }
    old = out / "manifest.json"
    if old.exists():  # keep measured results (bpp_range, eval) written by evaluation
        prev = json.loads(old.read_text())
        for key in ("bpp_range", "eval"):
            if key in prev:
                manifest[key] = prev[key]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--id", required=True)
    args = ap.parse_args(argv)
    m = export(args.checkpoint, args.out, args.id)
    print(json.dumps({k: m[k] for k in ("id", "sha256", "tag")}))


if __name__ == "__main__":
    main()
