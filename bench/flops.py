"""FLOPs of the codec's ONNX transforms and a measured compute peak, for "achieved GFLOP/s
and fraction of peak" in the benchmarks.

Counts 2 FLOPs per multiply-add of every Conv / ConvTranspose / MatMul / Gemm at a given
input size (shapes from ONNX shape inference; elementwise ops are not counted, so the
achieved rate is a slight underestimate of the work done).  Needs the `onnx` package
(`pip install onnx`, in the train/dev extras); callers skip the FLOP columns without it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

STRIDES = {"analysis": 1, "hyper_analysis": 16, "synthesis": 16}  # input downsampling vs the padded image


def graph_flops(path: Path, input_shape: tuple[int, ...]) -> float:
    """FLOPs of one run of the graph at `input_shape` (batch included)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.load(str(path))
    inp = m.graph.input[0]
    for d, v in zip(inp.type.tensor_type.shape.dim, input_shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    m = shape_inference.infer_shapes(m)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    weights = {t.name: numpy_helper.to_array(t).shape for t in m.graph.initializer}
    total = 0.0
    for n in m.graph.node:
        if n.op_type == "Conv":  # out (B,O,H,W) x (C/g * k*k) MACs
            w = weights.get(n.input[1]) or shapes.get(n.input[1])
            out = shapes[n.output[0]]
            total += 2.0 * np.prod(out, dtype=np.float64) * np.prod(w[1:], dtype=np.float64)
        elif n.op_type == "ConvTranspose":  # every input pixel scatters C x O x k*k MACs
            w = weights.get(n.input[1]) or shapes.get(n.input[1])
            x = shapes[n.input[0]]
            total += 2.0 * np.prod(x, dtype=np.float64) * np.prod(w[1:], dtype=np.float64)
        elif n.op_type in ("MatMul", "Gemm"):
            a, out = shapes[n.input[0]], shapes[n.output[0]]
            total += 2.0 * np.prod(out, dtype=np.float64) * a[-1]
    return float(total)


def transform_flops(model_dir: Path, height: int, width: int, batch: int = 1) -> dict[str, float]:
    """FLOPs per graph for one padded (height, width) image batch; {} without `onnx`."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {}
    import json

    cfg = json.loads((model_dir / "manifest.json").read_text())["config"]
    chans = {"analysis": 3, "hyper_analysis": cfg["m"], "synthesis": cfg["m"]}
    out = {}
    for name, stride in STRIDES.items():
        out[name] = graph_flops(model_dir / f"{name}.onnx", (batch, chans[name], height // stride, width // stride))
    return out


def cpu_sgemm_peak_gflops(seconds: float = 1.0, n: int = 1024) -> float:
    """Single-thread float32 GEMM rate of this CPU, per CPU-second (median of a few runs):
    the practical peak the transforms can approach on one core."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    rates = []
    with threadpool_limits(1, user_api="blas"):
        a @ a
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(rates) < 3:
            c = time.process_time()
            a @ a
            dt = time.process_time() - c
            if dt > 0:
                rates.append(2.0 * n**3 / dt / 1e9)
    return float(np.median(rates))


if __name__ == "__main__":
    import sys

    repo = Path(__file__).resolve().parents[1]
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else repo / "models" / (repo / "models" / "DEFAULT").read_text().strip()
    for name, f in transform_flops(d, 512, 768).items():
        print(f"{name}: {f / 1e9:.2f} GFLOP at 768x512 ({f / (512 * 768) / 1e3:.1f} kFLOP/pixel)")
    print(f"single-core sgemm: {cpu_sgemm_peak_gflops():.1f} GFLOP/s per CPU-second")
