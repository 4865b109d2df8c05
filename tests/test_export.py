"""Export fidelity: ONNX graphs match torch, and the integer entropy-parameter network
matches the float hyper-synthesis it was quantised from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the [train] extra (torch)")
ort = pytest.importorskip("onnxruntime")

from saic.codec import fixedpoint, load_model  # noqa: E402
from saic.codec.model import _symbols  # noqa: E402
from saic.training.export import export  # noqa: E402
from saic.training.model import CodecConfig, VariableRateCodec, rd_loss  # noqa: E402
from saic.training.train_codec import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = VariableRateCodec(CodecConfig(n=16, m=24, nz=8, nh=16)).eval()
    d = tmp_path_factory.mktemp("export")
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(d / "ckpt.pt", model, opt, 0, {})
    export(d / "ckpt.pt", d / "model", "tiny-test")
    return model, d / "model"


@pytest.mark.parametrize("graph,attr,shape", [
    ("analysis", "g_a", (2, 3, 128, 192)),
    ("hyper_analysis", "h_a", (2, 24, 8, 12)),
    ("synthesis", "g_s", (2, 24, 4, 8)),
])
def test_onnx_matches_torch_at_other_sizes(exported, graph, attr, shape):
    model, path = exported
    x = torch.rand(*shape)
    with torch.no_grad():
        ref = getattr(model, attr)(x).numpy()
    sess = ort.InferenceSession(str(path / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("graph,attr,shape", [("analysis", "g_a", (2, 3, 64, 96)), ("synthesis", "g_s", (2, 24, 4, 6))])
def test_fp16_graphs_match_torch_to_half_precision(exported, graph, attr, shape):
    model, path = exported
    x = torch.rand(*shape)
    with torch.no_grad():
        ref = getattr(model, attr)(x).numpy()
    sess = ort.InferenceSession(str(path / f"{graph}_fp16.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == sess.get_outputs()[0].type == "tensor(float)"  # fp32 I/O, fp16 inside
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - ref).max() < 2e-2 * max(1.0, np.abs(ref).max())
    assert load_model(path, precision="fp16").precision == "fp16"  # listed and hash-checked in the manifest


def test_fixed_point_entropy_parameters_match_float(exported):
    model, path = exported
    runtime = load_model(path)
    rng = np.random.default_rng(1)
    z = rng.integers(-6, 7, size=(3, 8, 2, 3))
    qs = [0, 37, 100]
    means, index = fixedpoint.hyper_synthesis(runtime._arrays, z, qs)
    t = torch.tensor([q * (model.levels - 1) / 100 for q in qs])
    with torch.no_grad():
        ref_means, ref_log_scales = model.h_s(torch.from_numpy(z).float() * model._interp(model.log_inv_hgain, t))
    got_means = means * 2.0**-fixedpoint.ACT_FRAC
    assert np.abs(got_means - ref_means.numpy()).max() < 0.05
    # the scale index is the table bucket of the float log-scale, up to a neighbour at a bucket edge
    thresholds = runtime._arrays["scale_thresholds"] * 2.0**-fixedpoint.ACT_FRAC
    ref_index = np.searchsorted(thresholds, ref_log_scales.numpy(), side="right")
    assert np.abs(index - ref_index).max() <= 1
    assert (index == ref_index).mean() > 0.98


def test_exported_model_round_trips(exported):
    _, path = exported
    runtime = load_model(path)
    x = (np.random.default_rng(2).random((70, 90, 3)) * 255).astype(np.uint8)
    data = runtime.compress_batch([x], [50])[0]
    assert runtime.decompress_batch([data])[0].shape == x.shape


def test_relevel_keeps_old_levels_and_extends_the_gain_tables():
    torch.manual_seed(1)
    model = VariableRateCodec(CodecConfig(n=8, m=12, nz=4, nh=8, lambdas=(0.001, 0.004, 0.016))).eval()
    with torch.no_grad():
        model.log_gain.copy_(torch.randn_like(model.log_gain))
    wider = model.relevel((0.0005, 0.001, 0.002, 0.004, 0.016))
    g, w = model.log_gain.detach(), wider.log_gain.detach()
    assert w.shape == (5, 12) and wider.levels == 5
    torch.testing.assert_close(w[[1, 3, 4]], g)  # old levels: identical rows
    torch.testing.assert_close(w[2], (g[0] + g[1]) / 2)  # midway in log-λ
    torch.testing.assert_close(w[0], g[0] - (g[1] - g[0]) / 2)  # extrapolated from the end pair
    x, t = torch.rand(1, 3, 64, 64), torch.tensor([1.0])
    with torch.no_grad():
        a, b = model(x, torch.tensor([0.0])), wider(x, t)
    torch.testing.assert_close(a["x_hat"], b["x_hat"])  # same weights at the same λ


@pytest.fixture(scope="module")
def exported_context(tmp_path_factory):
    """A tiny model with a 2-slice context whose weights are random (a fresh one is the identity)."""
    torch.manual_seed(3)
    model = VariableRateCodec(CodecConfig(n=16, m=24, nz=8, nh=16, nc=16, context_slices=2)).eval()
    with torch.no_grad():
        for p in model.ctx.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    d = tmp_path_factory.mktemp("export-context")
    save_checkpoint(d / "ckpt.pt", model, torch.optim.Adam(model.parameters()), 0, {})
    export(d / "ckpt.pt", d / "model", "tiny-context")
    return model, d / "model"


def test_fixed_point_context_matches_float(exported_context):
    """Integer hyper-synthesis + context model, step by step, vs the float model."""
    model, path = exported_context
    runtime = load_model(path)
    rng = np.random.default_rng(4)
    qs = [0, 60]
    t = torch.tensor([q * (model.levels - 1) / 100 for q in qs])
    z = rng.integers(-6, 7, size=(2, 8, 2, 3))
    y = torch.randn(2, 24, 8, 12) * 3
    with torch.no_grad():
        ref_means, ref_log_scales = model.entropy_parameters(y, torch.from_numpy(z).float(), t)
        hyper_means = model.h_s(torch.from_numpy(z).float() * model._interp(model.log_inv_hgain, t))[0]
    hyper = fixedpoint.HyperSynthesis(runtime._arrays).parameters(z, qs)
    y_np = y.double().numpy()
    _, means, log_scales = runtime._code_parts(hyper, lambda ch, ii, jj, mu, ls: _symbols(y_np[:, ch, ii, jj], mu), None)
    assert (ref_means - hyper_means).abs().mean() > 0.05  # the context really moves the means
    assert np.abs(means * 2.0**-fixedpoint.ACT_FRAC - ref_means.numpy()).max() < 0.05
    lo, hi = runtime._arrays["x_log_scale_range"] * 2.0**-fixedpoint.ACT_FRAC
    assert np.abs(np.clip(log_scales * 2.0**-fixedpoint.ACT_FRAC, lo, hi) - ref_log_scales.numpy()).max() < 0.05


def test_context_model_round_trips_in_four_parts(exported_context):
    _, path = exported_context
    runtime = load_model(path)
    assert runtime._context.slices == 2 and len(runtime._parts(4, 4)) == 4
    x = (np.random.default_rng(5).random((100, 130, 3)) * 255).astype(np.uint8)
    other = load_model(path, threads=1, optimization="disabled")
    for q in (0, 100):
        data = runtime.compress_batch([x], [q])[0]
        out = runtime.decompress_batch([data])[0]
        assert out.shape == x.shape
        assert np.array_equal(other.decompress_batch([data])[0], out)


def test_fresh_context_is_the_plain_hyperprior_and_learns():
    torch.manual_seed(6)
    cfg = CodecConfig(n=8, m=12, nz=4, nh=8, nc=8)
    plain = VariableRateCodec(cfg).eval()
    ctx = plain.grown("ctx.", context_slices=2)[0].eval()
    y, z, t = torch.randn(2, 12, 8, 8) * 4, torch.randint(-3, 4, (2, 4, 2, 2)).float(), torch.tensor([0.0, 5.5])
    for a, b in zip(plain.entropy_parameters(y, z, t), ctx.entropy_parameters(y, z, t)):
        torch.testing.assert_close(a, b)  # zero-initialised last layer: identical to start with
    ctx.train()
    x = torch.rand(2, 3, 64, 64)
    loss, _, _ = rd_loss(ctx(x, t), x, ctx.lmbda(t))
    loss.backward()
    assert all(step.p3.weight.grad.abs().sum() > 0 for step in ctx.ctx.steps)  # the rate term reaches every step


def _photos(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Two random 260x300 PNGs in tmp_path/photos: training data for the scripts' tests."""
    from PIL import Image

    data = tmp_path / "photos"
    data.mkdir()
    for i in range(2):
        Image.fromarray((rng.random((260, 300, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
    return data


def test_train_context_writes_an_exportable_context_checkpoint(tmp_path):
    from saic.training import train_context

    torch.manual_seed(7)
    rng = np.random.default_rng(7)
    data = _photos(tmp_path, rng)
    model = VariableRateCodec(CodecConfig(n=8, m=12, nz=4, nh=8, nc=8))
    save_checkpoint(tmp_path / "codec.pt", model, torch.optim.Adam(model.parameters()), 11, {})
    train_context.main([str(tmp_path / "codec.pt"), str(tmp_path / "ctx.pt"), "--data", str(data),
                        "--slices", "2", "--crops", "16", "--epochs", "2", "--hyper"])
    log = [json.loads(line) for line in (tmp_path / "ctx.log").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    trained = torch.load(tmp_path / "ctx.pt", weights_only=False)
    before = model.state_dict()
    assert trained["context_training"]["hyper"] is True
    assert all(torch.equal(trained["model"][k], v) for k, v in before.items() if k.startswith(("g_a", "g_s", "log_gain", "log_inv_gain")))
    assert not torch.equal(trained["model"]["h_s.c4.weight"], before["h_s.c4.weight"])  # --hyper: the hyper-prior learns too
    manifest = export(tmp_path / "ctx.pt", tmp_path / "model", "tiny-ctx")
    assert manifest["config"]["context_slices"] == 2 and manifest["training"]["steps"] == 11
    runtime = load_model(tmp_path / "model")
    x = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
    assert runtime.decompress_batch(runtime.compress_batch([x], [30]))[0].shape == x.shape


def test_synthesis_blocks_start_as_the_identity():
    torch.manual_seed(8)
    cfg = CodecConfig(n=8, m=12, nz=4, nh=8)
    plain = VariableRateCodec(cfg).eval()
    deep, added = plain.grown("g_s.refine", synthesis_blocks=2)
    deep.eval()
    assert added and all(k.startswith("g_s.refine") for k in added)
    assert deep.grown("g_s.refine", synthesis_blocks=2)[1] == []  # continuing adds nothing
    with pytest.raises(ValueError, match="outside"):
        plain.grown("g_s.refine", context_slices=2)
    y = torch.randn(2, 12, 4, 6) * 3
    with torch.no_grad():
        torch.testing.assert_close(deep.g_s(y), plain.g_s(y))


def test_train_synthesis_changes_pixels_not_bits(tmp_path):
    """Decoder-only fine-tuning: the encoder side exports byte for byte as before, so every
    stream keeps its bits; the deeper synthesis decodes them, tiled or whole alike."""
    from saic.codec.model import synthesis_halo
    from saic.training import train_synthesis

    torch.manual_seed(9)
    rng = np.random.default_rng(9)
    data = _photos(tmp_path, rng)
    model = VariableRateCodec(CodecConfig(n=8, m=12, nz=4, nh=8, nc=8, context_slices=2))
    save_checkpoint(tmp_path / "codec.pt", model, torch.optim.Adam(model.parameters()), 13, {})
    train_synthesis.main([str(tmp_path / "codec.pt"), str(tmp_path / "syn.pt"), "--data", str(data),
                          "--blocks", "2", "--crops", "16", "--val-crops", "8", "--minutes", "0.05"])
    log = [json.loads(line) for line in (tmp_path / "syn.log").read_text().splitlines()]
    assert "val_psnr" in log[0] and log[-1]["steps"] > 0
    base = export(tmp_path / "codec.pt", tmp_path / "base", "tiny-base")
    deep = export(tmp_path / "syn.pt", tmp_path / "deep", "tiny-deep")
    assert deep["config"]["synthesis_blocks"] == 2 and deep["training"]["steps"] == 13
    assert deep["training"]["synthesis_training"]["steps"] == log[-1]["steps"]
    for f in ("analysis.onnx", "hyper_analysis.onnx"):
        assert deep["files"][f] == base["files"][f]
    with np.load(tmp_path / "base" / "entropy.npz") as a, np.load(tmp_path / "deep" / "entropy.npz") as b:
        assert a.files == b.files
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "inv_gain")  # the rate side is untouched
    assert synthesis_halo(0) == 32 and synthesis_halo(2) == 80
    x = (rng.random((150, 200, 3)) * 255).astype(np.uint8)
    whole, tiled = load_model(tmp_path / "deep"), load_model(tmp_path / "deep", tile=64)
    data_ = whole.compress_batch([x], [70])
    assert np.array_equal(whole.decompress_batch(data_)[0], tiled.decompress_batch(data_)[0])


def test_synthesis_halo_covers_the_blocks_reach(tmp_path, monkeypatch):
    """With random (non-identity) blocks, tiles decode like the whole image only with the
    grown halo; the base halo of 32 px visibly falls short."""
    import saic.codec.model as codec_model

    torch.manual_seed(10)
    model = VariableRateCodec(CodecConfig(n=8, m=12, nz=4, nh=8, synthesis_blocks=2))
    for conv in model.g_s.modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.normal_(conv.weight, std=0.3)
    save_checkpoint(tmp_path / "ckpt.pt", model, torch.optim.Adam(model.parameters()), 0, {})
    export(tmp_path / "ckpt.pt", tmp_path / "model", "tiny-blocks")
    x = (np.random.default_rng(10).random((150, 200, 3)) * 255).astype(np.uint8)
    data = load_model(tmp_path / "model").compress_batch([x], [70])
    whole = load_model(tmp_path / "model").decompress_batch(data)[0]
    assert np.array_equal(load_model(tmp_path / "model", tile=64).decompress_batch(data)[0], whole)
    monkeypatch.setattr(codec_model, "HALO_PER_SYNTHESIS_BLOCK", 0)
    assert not np.array_equal(load_model(tmp_path / "model", tile=64).decompress_batch(data)[0], whole)
