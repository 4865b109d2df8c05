"""The shipped codec end to end: round trips, rate control, batching, decodability under
other runtime configurations, a committed golden bitstream, and malformed input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from saic.codec import ModelRegistry, bitstream, fixedpoint, load_model
from saic.codec.errors import (
    CorruptError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidParameterError,
    ModelLoadError,
    ModelMismatchError,
    TruncatedError,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
KODAK = Path(os.environ.get("SAIC_DATA_DIR", ROOT.parent / "shared" / "data")) / "kodak"


@pytest.fixture(scope="module")
def model():
    reg = ModelRegistry(ROOT / "models")
    return reg.get()


def natural_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A real photo crop when Kodak is present, else smooth structure plus texture."""
    if (KODAK / "kodim23.png").exists():
        from PIL import Image

        im = np.asarray(Image.open(KODAK / "kodim23.png").convert("RGB"))
        reps = (-(-h // im.shape[0]), -(-w // im.shape[1]), 1)
        return np.ascontiguousarray(np.tile(im, reps)[:h, :w])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


def test_round_trip_rate_grows_with_quality(model):
    x = natural_image(128, 192)
    sizes, quality = [], []
    for q in (0, 50, 100):
        data = model.compress_batch([x], [q])[0]
        y = model.decompress_batch([data])[0]
        assert y.shape == x.shape and y.dtype == np.uint8
        sizes.append(len(data))
        quality.append(psnr(x, y))
    assert sizes[0] < sizes[1] < sizes[2]
    assert quality[0] < quality[2]
    assert quality[2] > 24.0


@pytest.mark.parametrize("h,w", [(1, 1), (1, 97), (65, 33), (64, 64), (200, 131)])
def test_any_size_round_trips(model, h, w):
    x = natural_image(h, w)
    data = model.compress_batch([x], [60])[0]
    hdr = bitstream.read_header(data)
    assert (hdr.width, hdr.height, hdr.quality) == (w, h, 60)
    assert model.decompress_batch([data])[0].shape == (h, w, 3)


def test_small_image_header_is_a_few_bytes(model):
    data = model.compress_batch([natural_image(64, 64)], [10])[0]
    bs = bitstream.unpack(data)
    # magic, version, tag(2), width, height, quality, one length varint (2 bytes past 127), CRC(2)
    assert bs.overhead_bytes <= 10 + (len(bs.substreams[0]) >= 128)
    assert len(bs.substreams) == 1


def test_batch_equals_single(model):
    imgs = [natural_image(96, 96, 1), natural_image(64, 128, 2), natural_image(90, 70, 3), natural_image(96, 96, 4)]
    qs = [10, 50, 90, 30]
    batched = model.compress_batch(imgs, qs)
    single = [model.compress_batch([im], [q])[0] for im, q in zip(imgs, qs)]
    assert batched == single
    dec_b = model.decompress_batch(batched)
    dec_s = [model.decompress_batch([d])[0] for d in single]
    for a, b in zip(dec_b, dec_s):
        assert np.abs(a.astype(int) - b).max() <= 1


def test_target_bpp_is_a_cap_and_tight(model):
    x = natural_image(128, 128)
    target = 0.5
    data = model.compress_to_bpp(x, target)
    h = bitstream.read_header(data)
    q = h.quality
    assert 8 * len(data) / x[..., 0].size <= target or q == 0
    if q < 100:
        above = model.compress_batch([x], [q + 1], downscales=[h.downscale])[0]
        assert 8 * len(above) / x[..., 0].size > target


def test_half_resolution_extends_the_low_end(model):
    """downscale=2 codes a half-size copy: about a quarter of the bits, full-size output, and
    quality still buys fidelity; batches mixing both resolutions equal single calls."""
    x = natural_image(128, 192)
    native0 = model.compress_batch([x], [0])[0]
    half = model.compress_batch([x, x], [0, 100], downscales=[2, 2])
    assert [bitstream.read_header(d).downscale for d in half] == [2, 2]
    assert bitstream.read_header(half[0]).coded_size == (64, 96)
    # a quarter of the pixels, but 64x96 pads to 64x128 (a third of the latent) and fixed costs stay
    assert len(half[0]) < 0.7 * len(native0)
    dec = model.decompress_batch(half)
    assert all(d.shape == x.shape for d in dec)
    assert 18.0 < psnr(x, dec[0]) < psnr(x, dec[1])
    mixed = model.compress_batch([x, x], [50, 50], downscales=[1, 2])
    assert mixed == [model.compress_batch([x], [50])[0], model.compress_batch([x], [50], downscales=[2])[0]]
    for h, w in [(1, 1), (3, 2), (65, 33)]:
        data = model.compress_batch([natural_image(h, w)], [40], downscales=[2])[0]
        assert model.decompress_batch([data])[0].shape == (h, w, 3)
    with pytest.raises(InvalidParameterError, match="downscale"):
        model.compress_batch([x], [50], downscales=[3])


def test_target_bpp_below_quality_0_switches_to_half_resolution(model):
    x = natural_image(256, 256)
    pixels = x[..., 0].size
    native0 = 8 * len(model.compress_batch([x], [0])[0]) / pixels
    target = 0.6 * native0
    data = model.compress_to_bpp(x, target)
    h = bitstream.read_header(data)
    assert h.downscale == 2 and 8 * len(data) / pixels <= target
    above = model.compress_batch([x], [h.quality + 1], downscales=[2])[0]
    assert h.quality == 100 or 8 * len(above) / pixels > target
    smallest = model.compress_to_bpp(x, 1e-6)  # nothing fits: the smallest stream there is
    assert (bitstream.read_header(smallest).downscale, bitstream.read_header(smallest).quality) == (2, 0)


def test_target_bpp_keeps_the_resolution_that_decodes_closer(model):
    """Where both resolutions fit the cap at low quality, the lower-MSE one is returned; at
    high rates the half-resolution search is skipped."""
    x = natural_image(256, 256)
    pixels = x[..., 0].size
    target = 8 * len(model.compress_batch([x], [10])[0]) / pixels
    full, full_fits = model._search_bpp(x, 1, target, None)
    half, half_fits = model._search_bpp(x, 2, target, None)
    assert full_fits and half_fits
    errs = [psnr(x, model.decompress_batch([d])[0]) for d in (full, half)]
    assert model.compress_to_bpp(x, target) == (half if errs[1] > errs[0] else full)
    high = model.compress_to_bpp(x, 8 * len(model.compress_batch([x], [90])[0]) / pixels)
    assert bitstream.read_header(high).downscale == 1


def test_large_image_uses_parallel_substreams(model):
    data = model.compress_batch([natural_image(512, 768)], [50])[0]
    assert len(bitstream.unpack(data).substreams) > 1
    assert model.decompress_batch([data])[0].shape == (512, 768, 3)


def _latent_hash(m, data: bytes) -> str:
    return hashlib.sha256(m.decode_latents([m.parse(data)]).tobytes()).hexdigest()


def test_decodes_identically_under_other_runtime_configurations(model):
    """Encoder and decoder in different ONNX Runtime configurations: the decoded latents are
    bit-identical (the entropy path is integer), pixels agree to float tolerance."""
    x = natural_image(256, 320)
    data = load_model(model.path, threads=1, optimization="all").compress_batch([x], [70])[0]
    ref_latent = _latent_hash(model, data)
    ref_pixels = model.decompress_batch([data])[0]
    for threads, opt in [(1, "disabled"), (2, "basic"), (2, "all")]:
        other = load_model(model.path, threads=threads, optimization=opt)
        assert _latent_hash(other, data) == ref_latent
        assert np.abs(other.decompress_batch([data])[0].astype(int) - ref_pixels).max() <= 1


def test_entropy_parameters_do_not_depend_on_summation_order(model):
    """Permuting the input channels changes every BLAS summation order; results must not move."""
    t = model._arrays
    rng = np.random.default_rng(0)
    z = rng.integers(-4, 5, size=(2, t["c1_w"].shape[1], 3, 5))
    means, index = fixedpoint.hyper_synthesis(t, z, [20, 80])
    perm = rng.permutation(z.shape[1])
    t2 = dict(t)
    t2["c1_w"] = t["c1_w"][:, perm]
    t2["inv_hgain"] = t["inv_hgain"][:, perm]
    means2, index2 = fixedpoint.hyper_synthesis(t2, z[:, perm], [20, 80])
    assert np.array_equal(means, means2) and np.array_equal(index, index2)


def test_context_parameters_do_not_depend_on_summation_order(model):
    """The context model's GEMMs, permuted like the hyper-synthesis above (channels permuted
    within each slice, so every tap still reads the same set of decoded channels)."""
    t = model._arrays
    if "context_slices" not in t:
        pytest.skip("the default model has no context model")
    rng = np.random.default_rng(1)
    slices, m = int(t["context_slices"]), t["x1_w"].shape[1]
    width = m // slices
    means = rng.integers(-2000, 2000, size=(2, m, 5, 6))
    log_scales = rng.integers(-600, 1100, size=means.shape)
    y_hat = means + 256 * rng.integers(-8, 9, size=means.shape)
    perm = np.concatenate([s * width + rng.permutation(width) for s in range(slices)])
    t2 = dict(t)
    for k in range(1, 2 * slices):
        t2[f"x{k}_w"] = t[f"x{k}_w"][:, perm]
    ctx, ctx2 = fixedpoint.ContextModel(t), fixedpoint.ContextModel(t2)
    for k, (ch, pos) in enumerate(fixedpoint.context_parts(slices, m, 5, 6)):
        if k:
            ref = ctx(k, y_hat, means, log_scales, pos)
            got = ctx2(k, y_hat[:, perm], means, log_scales, pos)
            assert np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1])
            assert not np.array_equal(ref[0], means[:, ch][..., pos])  # it does predict


def test_context_in_position_chunks_changes_no_bit(model, monkeypatch):
    """Large images run the context model in chunks of positions (bounded memory); the
    chunk size must not change a single bit of the stream or of the decoded latents."""
    x = natural_image(192, 256)
    data = model.compress_batch([x], [50])[0]
    ref = model.decode_latents([model.parse(data)])
    monkeypatch.setattr(fixedpoint, "CONTEXT_CHUNK", 7)
    assert model.compress_batch([x], [50])[0] == data
    assert np.array_equal(model.decode_latents([model.parse(data)]), ref)


def test_golden_bitstream_decodes_to_golden_pixels(model):
    spec = json.loads((GOLDEN / "golden.json").read_text())
    if spec["model_sha256"] != model.sha256:
        pytest.fail("the default model changed: regenerate tests/golden with `python tests/golden/make_golden.py`")
    data = (GOLDEN / spec["bitstream"]).read_bytes()
    assert _latent_hash(model, data) == spec["latent_sha256"]
    pixels = model.decompress_batch([data])[0]
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == spec["pixels_sha256"]
    half = spec["half"]  # a half-resolution stream: its latents, and pixels after the upsampling
    data = (GOLDEN / half["bitstream"]).read_bytes()
    assert bitstream.read_header(data).downscale == 2
    assert _latent_hash(model, data) == half["latent_sha256"]
    pixels = model.decompress_batch([data])[0]
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == half["pixels_sha256"]


# ------------------------------------------------------------------ malformed input
def test_malformed_bitstreams_get_typed_errors(model):
    data = model.compress_batch([natural_image(64, 96)], [40])[0]
    with pytest.raises(TruncatedError):
        model.decompress_batch([data[:-5]])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(CorruptError):
        model.decompress_batch([bytes(flipped)])
    other_tag = (model.tag + 1) % 65536
    forged = bitstream.pack(other_tag, 96, 64, 40, bitstream.unpack(data).substreams)
    with pytest.raises(ModelMismatchError):
        model.decompress_batch([forged])
    huge = bitstream.pack(model.tag, 60000, 60000, 40, [b"\x01"])
    with pytest.raises(ImageTooLargeError):
        model.decompress_batch([huge])


def test_bad_images_and_parameters(model):
    with pytest.raises(InvalidParameterError):
        model.compress_batch([natural_image(8, 8)], [101])
    with pytest.raises(InvalidParameterError):
        model.compress_to_bpp(natural_image(8, 8), -1.0)
    with pytest.raises(InvalidImageError):
        model.compress_batch([np.zeros((8, 8), np.uint8)], [50])
    small = load_model(model.path, max_pixels=1000)
    with pytest.raises(ImageTooLargeError):
        small.compress_batch([natural_image(40, 40)], [50])


def test_registry_skips_non_models_but_refuses_a_damaged_manifest(tmp_path):
    import shutil

    (tmp_path / "notes").mkdir()  # no manifest: not a model, skipped
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "manifest.json").write_text('{"kind": "latent_head"}')  # another kind: skipped
    with pytest.raises(ModelLoadError, match="no codec models"):
        ModelRegistry(tmp_path)
    shutil.copytree(ROOT / "models" / "saic-small", tmp_path / "saic-small")
    assert list(ModelRegistry(tmp_path).models) == ["saic-small"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="broken: manifest.json is unreadable"):
        ModelRegistry(tmp_path)


def test_escaped_symbols_decode_to_their_own_positions(model):
    """Values outside a scale table's support are escape-coded after the group's tables, in the
    order the tables were coded (by scale index); the decoder must put each back where it came
    from.  Many escapes at mixed scales happen for real on tiny images, where the hyper-prior's
    means are poor (a 64x64 photo at q100 once decoded at 8.7 dB)."""
    from saic.codec import entropy

    rng = np.random.default_rng(3)
    tables = model._tables
    shape = (8, 4, 4)
    index = rng.integers(0, tables.num_scales, shape)
    sym = rng.integers(-3, 4, shape)
    far = rng.random(shape) < 0.3
    sym[far] = rng.integers(-5000, 5000, int(far.sum()))  # far outside every table: escaped
    z = rng.integers(-2, 3, (4, 1, 1))
    z[0, 0, 0] = 9000  # and an escaped hyper-latent
    for k in (1, 3):
        enc = entropy.encode_z(tables, z)
        parts = [(sym[:, :2], index[:, :2]), (sym[:, 2:], index[:, 2:])]  # coded one after the other
        subs = entropy.encode_y(tables, enc, parts, k)
        z_dec, dec = entropy.decode_z(tables, subs[0], z.shape)
        np.testing.assert_array_equal(z_dec, z)
        decoders = entropy.y_decoders(dec, subs)
        np.testing.assert_array_equal(entropy.decode_y(tables, decoders, index[:, :2]), sym[:, :2])
        np.testing.assert_array_equal(entropy.decode_y(tables, decoders, index[:, 2:]), sym[:, 2:])


def test_tiny_images_round_trip_at_every_quality(model):
    """64x64 (one hyper-latent pixel): quality still buys fidelity, as on large images."""
    x = natural_image(64, 64)
    scores = [psnr(x, model.decompress_batch(model.compress_batch([x], [q]))[0]) for q in (0, 50, 100)]
    assert scores[0] < scores[1] < scores[2], scores


def test_top_level_api_on_pil_and_numpy():
    """`saic.compress`/`saic.decompress`: PIL or numpy in, quality, bpp cap or half resolution."""
    import saic
    from PIL import Image

    x = natural_image(64, 96)
    y = saic.decompress(saic.compress(Image.fromarray(x), quality=80))
    assert y.shape == x.shape and psnr(x, y) > 20
    capped = saic.compress(x, target_bpp=0.8)
    assert 8 * len(capped) / (64 * 96) <= 0.8
    half = saic.compress(x, quality=80, downscale=2)
    assert bitstream.read_header(half).downscale == 2 and saic.decompress(half).shape == x.shape
    with pytest.raises(InvalidParameterError):
        saic.compress(x, quality=50, target_bpp=0.5)
    with pytest.raises(InvalidParameterError):
        saic.compress(x, target_bpp=0.5, downscale=2)
