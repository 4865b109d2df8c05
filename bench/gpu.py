#!/usr/bin/env python
"""GPU benchmark: images/s of the saic transforms and of the whole codec at batch 1/8/32, the
transforms' achieved TFLOP/s against the device's peak, and (with --fp16) the speed and the
Kodak quality cost of the model's float16 graphs (analysis_fp16.onnx, synthesis_fp16.onnx).

Needs onnxruntime-gpu (`pip install -e .[gpu]`; it replaces the CPU-only onnxruntime wheel)
and a CUDA device.  Without one it says so and exits 0 (the CI and CPU-only machines);
`--provider cpu` runs the same measurements on the CPU (a dry run of this script).

    python bench/gpu.py                          # CUDA EP, fp32, batches 1 8 32, Kodak size
    python bench/gpu.py --fp16 --quality-images 24
    python bench/gpu.py --provider tensorrt      # TensorRT EP (engine cache in runs/trt-cache)

Measured, per batch size:
* transforms: analysis and synthesis alone, input and output bound on the device
  (I/O binding: no host copies), so the rate is the GPU's; TFLOP/s from the graphs'
  conv FLOPs (bench/flops.py) and the fraction of the device's dense peak (fp32 CUDA cores,
  and the tensor-core peak for TF32/fp16);
* codec: `compress_batch` / `decompress_batch` (host copies, integer entropy parameters and
  range coding on the CPU included): what a server gets per image.
The entropy-parameter path never runs on the GPU (integer numpy), so fp16 transforms keep
every bitstream decodable: fp16 only moves the encoder's latents and the decoder's pixels,
which --quality-images measures (PSNR and bpp against fp32 on Kodak).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# dense (no sparsity) peaks in TFLOP/s: fp32 on CUDA cores, TF32 and fp16 on tensor cores (vendor sheets)
PEAKS = {
    "H200": (67.0, 494.7, 989.4),
    "H100 SXM": (67.0, 494.7, 989.4), "H100 80GB HBM3": (67.0, 494.7, 989.4),
    "H100 PCIe": (51.2, 378.0, 756.0), "H100 NVL": (60.0, 417.5, 835.0),
    "A100": (19.5, 156.0, 312.0), "L40S": (91.6, 183.0, 362.0), "L4": (30.3, 60.0, 121.0),
    "A10": (31.2, 62.5, 125.0), "T4": (8.1, 8.1, 65.0),
}
PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider", "cpu": "CPUExecutionProvider"}


def device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown GPU"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown GPU"


def device_peaks(name: str) -> tuple[float, float, float] | None:
    for key in sorted(PEAKS, key=len, reverse=True):  # the most specific name first
        if all(part in name for part in key.split()):
            return PEAKS[key]
    return None


def provider_list(kind: str, fp16: bool, cache: Path) -> list[Any]:
    if kind == "tensorrt":
        cache.mkdir(parents=True, exist_ok=True)
        trt = {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
        return [(PROVIDERS["tensorrt"], trt), PROVIDERS["cuda"], PROVIDERS["cpu"]]
    if kind == "cuda":
        return [(PROVIDERS["cuda"], {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True}),
                PROVIDERS["cpu"]]
    return [PROVIDERS["cpu"]]


def session(graph: bytes, providers: list[Any]) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(graph, opts, providers=providers)


def time_bound(sess: Any, name: str, x: np.ndarray, device: str, seconds: float) -> float:
    """Seconds per run with input and output on the device (I/O binding)."""
    import onnxruntime as ort

    binding = sess.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, device, 0))
    binding.bind_output(sess.get_outputs()[0].name, device, 0)
    for _ in range(3):  # warm-up: cuDNN algorithm search, TensorRT engine build
        sess.run_with_iobinding(binding)
    binding.synchronize_outputs()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        sess.run_with_iobinding(binding)
        n += 1
    binding.synchronize_outputs()
    return (time.perf_counter() - t0) / n


def kodak_images(h: int, w: int, n: int) -> list[np.ndarray]:
    from PIL import Image

    kodak = Path(os.environ.get("SAIC_DATA_DIR", REPO / "../shared/data")) / "kodak"
    files = sorted(kodak.glob("kodim*.png"))
    out = []
    for f in files[:n]:
        a = np.asarray(Image.open(f).convert("RGB"))
        a = a if (a.shape[0] >= h) == (a.shape[1] >= w) or a.shape[0] >= a.shape[1] else a.transpose(1, 0, 2)
        y, x = max(0, (a.shape[0] - h) // 2), max(0, (a.shape[1] - w) // 2)  # centre crop (Kodak: 768x512 whole)
        out.append(np.ascontiguousarray(a[y : y + h, x : x + w]))
    if not out:
        from saic.eval.rd import synthetic_image

        out = [synthetic_image(h, w, seed=s) for s in range(min(n, 4))]
    return out


def quality_check(model_dir: Path, providers: list[Any], images: list[np.ndarray], quality: int) -> dict[str, Any]:
    """fp32 vs fp16 transforms on real images: bpp and PSNR of each combination of encoder and
    decoder precision; the fp16 encoder's bitstreams decode with the fp32 decoder (same latents)."""
    from saic.codec import load_model

    m32 = load_model(model_dir, providers=providers, precision="fp32")
    m16 = load_model(model_dir, providers=providers, precision="fp16")  # the model's shipped fp16 graphs

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return float(10 * np.log10(255**2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-10)))

    rows = {"fp32": [], "fp16 encoder": [], "fp16 decoder": [], "fp16 both": []}
    for im in images:
        d32, d16 = m32.compress_batch([im], [quality])[0], m16.compress_batch([im], [quality])[0]
        bpp32, bpp16 = 8 * len(d32) / im[..., 0].size, 8 * len(d16) / im[..., 0].size
        same_latents = np.array_equal(m32.decode_latents([m32.parse(d16)]), m16.decode_latents([m16.parse(d16)]))
        assert same_latents, "entropy path must not depend on the transforms' precision"
        rows["fp32"].append((bpp32, psnr(im, m32.decompress_batch([d32])[0])))
        rows["fp16 encoder"].append((bpp16, psnr(im, m32.decompress_batch([d16])[0])))
        rows["fp16 decoder"].append((bpp32, psnr(im, m16.decompress_batch([d32])[0])))
        rows["fp16 both"].append((bpp16, psnr(im, m16.decompress_batch([d16])[0])))
    return {k: {"bpp": float(np.mean([r[0] for r in v])), "psnr": float(np.mean([r[1] for r in v]))}
            for k, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: models/$(cat models/DEFAULT))")
    ap.add_argument("--provider", choices=list(PROVIDERS), default="cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window per measurement")
    ap.add_argument("--quality", type=int, default=50)
    ap.add_argument("--fp16", action="store_true", help="also measure float16 transforms")
    ap.add_argument("--quality-images", type=int, default=0, help="Kodak images for the fp16 quality check")
    ap.add_argument("--no-codec", action="store_true", help="transforms only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from flops import transform_flops

    have = ort.get_available_providers()
    if PROVIDERS[args.provider] not in have:
        print(f"{PROVIDERS[args.provider]} is not available (onnxruntime {ort.__version__} offers {have}); "
              "on a GPU machine: pip install -e .[gpu].  Nothing measured.")
        return 0
    model = args.model or REPO / "models" / (REPO / "models" / "DEFAULT").read_text().strip()
    device = "cpu" if args.provider == "cpu" else "cuda"
    name = device_name() if device == "cuda" else "CPU"
    peaks = device_peaks(name) if device == "cuda" else None
    h, w = args.height, args.width
    precisions = ["fp32"] + (["fp16"] if args.fp16 else [])
    res: dict[str, Any] = {"device": name, "provider": args.provider, "onnxruntime": ort.__version__,
                           "size": [w, h], "peaks_tflops": peaks, "transforms": [], "codec": []}
    print(f"# {name}, {args.provider}, onnxruntime {ort.__version__}, {w}x{h} images")
    rng = np.random.default_rng(0)
    m_ch = json.loads((model / "manifest.json").read_text())["config"]["m"]
    for prec in precisions:
        providers = provider_list(args.provider, prec == "fp16", REPO / "runs" / "trt-cache")
        for g, inp in (("analysis", "x"), ("synthesis", "y_hat")):
            sess = session((model / f"{g}{'_fp16' if prec == 'fp16' else ''}.onnx").read_bytes(), providers)
            for b in args.batches:
                shape = (b, 3, h, w) if g == "analysis" else (b, m_ch, h // 16, w // 16)
                x = rng.random(shape, dtype=np.float32) if g == "analysis" else rng.normal(0, 2, shape).astype(np.float32)
                sec = time_bound(sess, inp, x, device, args.seconds)
                flops = transform_flops(model, h, w, b).get(g, float("nan"))
                row = {"graph": g, "precision": prec, "batch": b, "images_per_s": b / sec,
                       "megapixels_per_s": b * h * w / 1e6 / sec, "tflops": flops / sec / 1e12}
                if peaks:
                    row["of_fp32_peak"] = row["tflops"] / peaks[0]
                    row["of_tensor_peak"] = row["tflops"] / (peaks[2] if prec == "fp16" else peaks[1])
                res["transforms"].append(row)
                print(f"{g:9s} {prec} batch {b:3d}: {row['images_per_s']:8.1f} img/s {row['megapixels_per_s']:8.1f} MP/s "
                      f"{row['tflops']:7.2f} TFLOP/s" + (f" ({row['of_fp32_peak']:.0%} of fp32 peak, "
                                                        f"{row['of_tensor_peak']:.0%} of tensor peak)" if peaks else ""),
                      flush=True)
        if not args.no_codec and prec == "fp32":
            from saic.codec import load_model

            cm = load_model(model, providers=providers)
            imgs = kodak_images(h, w, max(args.batches))
            for b in args.batches:
                batch = [imgs[i % len(imgs)] for i in range(b)]
                for op in ("compress", "decompress"):
                    data = cm.compress_batch(batch, [args.quality] * b)
                    fn = (lambda: cm.compress_batch(batch, [args.quality] * b)) if op == "compress" else \
                        (lambda: cm.decompress_batch(data))
                    fn()
                    n, t0, stages = 0, time.perf_counter(), {}
                    while time.perf_counter() - t0 < args.seconds or n < 2:
                        if op == "compress":
                            cm.compress_batch(batch, [args.quality] * b, timings=stages)
                        else:
                            cm.decompress_batch(data, timings=stages)
                        n += 1
                    sec = (time.perf_counter() - t0) / n
                    row = {"op": op, "batch": b, "images_per_s": b / sec,
                           "stages_per_image_ms": {k: 1e3 * v / n / b for k, v in stages.items()}}
                    res["codec"].append(row)
                    print(f"codec {op:10s} batch {b:3d}: {row['images_per_s']:8.1f} img/s  per image ms: " +
                          ", ".join(f"{k} {v:.1f}" for k, v in row["stages_per_image_ms"].items()), flush=True)
    if args.fp16 and args.quality_images:
        providers = provider_list(args.provider, True, REPO / "runs" / "trt-cache")
        q = quality_check(model, providers, kodak_images(h, w, args.quality_images), args.quality)
        res["fp16_quality"] = q
        for k, v in q.items():
            print(f"quality q={args.quality} {k:13s}: {v['bpp']:.5f} bpp, {v['psnr']:.4f} dB PSNR (mean of "
                  f"{args.quality_images} images)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
