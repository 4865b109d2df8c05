"""Performance changes that must not change behaviour: the prepared NHWC integer
hyper-synthesis equals the plain NCHW reference formula bit for bit, and tiled transforms
of large images match the untiled ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saic.codec import fixedpoint, load_model

ROOT = Path(__file__).resolve().parents[1]


def _reference(t: dict, z_hat: np.ndarray, qualities: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The integer hyper-synthesis written as directly as possible (NCHW, per-call float64 weights)."""

    def conv(a: np.ndarray, w: np.ndarray) -> np.ndarray:
        b, c, h, wd = a.shape
        o, _, k, _ = w.shape
        p = k // 2
        ap = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
        win = np.lib.stride_tricks.sliding_window_view(ap, (k, k), axis=(2, 3))
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        return (cols @ w.reshape(o, -1).T.astype(np.float64)).reshape(b, h, wd, o).transpose(0, 3, 1, 2)

    def layer(a: np.ndarray, i: int, relu: bool) -> np.ndarray:
        f = int(t[f"c{i}_frac"])
        acc = conv(a, t[f"c{i}_w"]) + t[f"c{i}_b"][None, :, None, None]
        out = np.floor((acc + float(1 << (f - 1))) / float(1 << f))
        out = np.maximum(out, 0.0) if relu else out
        return np.clip(out, -fixedpoint.ACT_LIMIT, fixedpoint.ACT_LIMIT)

    def shuffle(a: np.ndarray) -> np.ndarray:
        b, c, h, w = a.shape
        return a.reshape(b, c // 4, 2, 2, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)

    gains = np.stack([fixedpoint.interp_int(t["inv_hgain"], q) for q in qualities])
    a = np.clip(z_hat.astype(np.float64) * gains[:, :, None, None], -fixedpoint.ACT_LIMIT, fixedpoint.ACT_LIMIT)
    a = layer(a, 1, relu=True)
    a = np.maximum(shuffle(layer(a, 2, relu=False)), 0.0)
    a = np.maximum(shuffle(layer(a, 3, relu=False)), 0.0)
    out = layer(a, 4, relu=False).astype(np.int64)
    m = out.shape[1] // 2
    index = np.searchsorted(t["scale_thresholds"], out[:, m:], side="right").astype(np.int32)
    return out[:, :m], index


@pytest.fixture(scope="module")
def model():
    return load_model(ROOT / "models" / (ROOT / "models" / "DEFAULT").read_text().strip())


@pytest.mark.parametrize("shape,qs,scale", [
    ((1, 8, 12), [50], 4), ((1, 1, 1), [0], 40000), ((3, 5, 7), [0, 37, 100], 30), ((2, 4, 3), [99, 1], 3000),
])
def test_prepared_hyper_synthesis_is_bit_identical(model, shape, qs, scale):
    t = model._arrays
    rng = np.random.default_rng(scale)
    z = rng.integers(-scale, scale + 1, size=(len(qs), t["c1_w"].shape[1], *shape[1:]))
    ref_means, ref_index = _reference(t, z, qs)
    means, index = fixedpoint.HyperSynthesis(t)(z, qs)
    assert means.dtype == np.int64 and index.dtype == np.int32
    assert np.array_equal(means, ref_means) and np.array_equal(index, ref_index)


def test_tile_spans_cover_the_latent_grid():
    from saic.codec.model import HALO, STRIDE, tile_spans

    for n, tile in [(64, 1024), (2176, 1024), (3840, 1024), (640, 128), (192, 64)]:
        spans = tile_spans(n, tile)
        assert spans[0][2] == 0 and spans[-1][3] == n
        for (lo, hi, a, b), nxt in zip(spans, spans[1:] + [None]):
            assert a % STRIDE == 0 and b - a <= max(tile, STRIDE) and lo == max(a - HALO, 0) and hi == min(b + HALO, n)
            assert nxt is None or nxt[2] == b


def test_tiled_transforms_equal_untiled(model):
    """Tiles with the model's halo (32 px, more with synthesis blocks) see every input their kept
    outputs depend on: same bits."""
    from saic.codec.model import CodecModel

    tiled = CodecModel(model.path, threads=1, tile=64)
    whole = CodecModel(model.path, threads=1, tile=1 << 20)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:290]
    imgs = [np.clip(np.stack([xx, yy, xx + yy], -1) * 0.6 + rng.normal(0, 20, (200, 290, 3)), 0, 255).astype(np.uint8)]
    imgs.append(imgs[0][::-1, ::-1].copy())
    data = whole.compress_batch(imgs, [30, 80])
    assert tiled.compress_batch(imgs, [30, 80]) == data
    for a, b in zip(whole.decompress_batch(data), tiled.decompress_batch(data)):
        assert a.shape == (200, 290, 3) and np.array_equal(a, b)


def test_provider_order_prefers_tensorrt_then_cuda_when_present(monkeypatch):
    import onnxruntime as ort

    from saic.codec.model import available_providers

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu)
    assert available_providers() == gpu[1:]
    assert available_providers(tensorrt=True) == gpu
    assert available_providers(prefer_gpu=False, tensorrt=True) == gpu[2:]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert available_providers(tensorrt=True) == ["CPUExecutionProvider"]


# ------------------------------------------------------------------ fp16 graphs (the GPU path, run here on CPU)
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((a.astype(float) - b.astype(float)) ** 2), 1e-12)))


def test_fp16_graphs_read_and_write_the_same_bitstreams():
    """The golden bitstream decodes under fp16 to the golden latents (the entropy path is
    integer) and to pixels within 50 dB of fp32; an fp16-encoded stream decodes under fp32."""
    import hashlib
    import json

    from tests.test_codec import natural_image

    golden = ROOT / "tests" / "golden"
    spec = json.loads((golden / "golden.json").read_text())
    data = (golden / spec["bitstream"]).read_bytes()
    f32 = load_model(ROOT / "models" / "saic-small", threads=1, precision="fp32")
    f16 = load_model(ROOT / "models" / "saic-small", threads=1, precision="fp16")
    assert (f32.precision, f16.precision) == ("fp32", "fp16")
    assert hashlib.sha256(f16.decode_latents([f16.parse(data)]).tobytes()).hexdigest() == spec["latent_sha256"]
    assert _psnr(f16.decompress_batch([data])[0], f32.decompress_batch([data])[0]) > 50
    x = natural_image(96, 128)
    s16 = f16.compress_batch([x], [60])[0]
    s32 = f32.compress_batch([x], [60])[0]
    assert abs(len(s16) - len(s32)) <= max(0.02 * len(s32), 8)  # a ~200-byte stream: a few latents round apart
    assert abs(_psnr(x, f32.decompress_batch([s16])[0]) - _psnr(x, f32.decompress_batch([s32])[0])) < 0.05


def test_precision_choice_and_fp16_integrity(tmp_path, monkeypatch):
    import json
    import shutil

    from saic.codec.errors import ModelLoadError

    assert load_model(ROOT / "models" / "saic-small", threads=1).precision == "fp32"  # auto on CPU
    with pytest.raises(ValueError, match="precision"):
        load_model(ROOT / "models" / "saic-small", precision="int8")
    d = tmp_path / "m"
    shutil.copytree(ROOT / "models" / "saic-small", d)
    raw = bytearray((d / "synthesis_fp16.onnx").read_bytes())
    raw[-100] ^= 1
    (d / "synthesis_fp16.onnx").write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="synthesis_fp16.onnx: sha256"):
        load_model(d, precision="fp16")
    manifest = json.loads((d / "manifest.json").read_text())
    del manifest["fp16"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert load_model(d).precision == "fp32"  # fp16 graphs are optional ...
    with pytest.raises(ModelLoadError, match="no fp16 graph"):
        load_model(d, precision="fp16")  # ... unless asked for
