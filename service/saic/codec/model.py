"""A loaded codec model: manifest, hash check, ONNX Runtime sessions, integer tables,
and the batched compress/decompress pipeline."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image

from . import bitstream, entropy, fixedpoint
from .errors import InvalidParameterError, ModelLoadError, ModelMismatchError

log = logging.getLogger("saic.codec")

ALIGN = 64  # total downsampling of the hyper-latent: inputs are padded to a multiple of this
STRIDE = 16  # downsampling of the latent y
TILE = 1024  # analysis/synthesis run on tiles of at most this many pixels a side (bounded memory)
HALO = 32  # context around a tile: beyond the receptive field's reach, so tiling changes no bit (tested)
# each synthesis residual block (3x3 convolutions at 1/8 and at 1/4 resolution) reaches this much further
HALO_PER_SYNTHESIS_BLOCK = 2 * 8 + 2 * 4
SYMBOLS_PER_SUBSTREAM = 1 << 16
MAX_SUBSTREAMS = 8
# compress_to_bpp also tries half resolution when full resolution fits only at or below this quality
# (Kodak, targets 0.08-0.25 bpp: half won 19 of 62 cases where full fit at q <= 20, 0 of 65 above)
HALF_SEARCH_BELOW_QUALITY = 20
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
GRAPH_OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
WEIGHT_FILES = ("analysis.onnx", "hyper_analysis.onnx", "synthesis.onnx", "entropy.npz")
# fp16 twins of the two big float graphs (float32 in and out); listed under the manifest's "fp16",
# outside the weights hash: they are derived from the fp32 graphs and write/read the same bitstreams
FP16_GRAPHS = {"analysis": "analysis_fp16.onnx", "synthesis": "synthesis_fp16.onnx"}
PRECISIONS = ("auto", "fp32", "fp16")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def available_providers(prefer_gpu: bool = True, tensorrt: bool = False) -> list[str]:
    """CUDA when onnxruntime offers it (and it is wanted), TensorRT before it when asked for
    and present (onnxruntime-gpu built with TensorRT), always CPU as the fallback."""
    have = ort.get_available_providers()
    wanted = ((["TensorrtExecutionProvider"] if tensorrt else []) + ["CUDAExecutionProvider"]) if prefer_gpu else []
    return [p for p in wanted if p in have] + ["CPUExecutionProvider"]


@contextmanager
def _timed(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed (model files are checked at every load)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(files: dict[str, str]) -> str:
    """One hash over the weight files' hashes, sorted by name (the bitstream tag is cut from it)."""
    return hashlib.sha256("".join(f"{k}:{files[k]}\n" for k in sorted(files)).encode()).hexdigest()


def padded_size(height: int, width: int) -> tuple[int, int]:
    return -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN


def synthesis_halo(blocks: int) -> int:
    """Tile halo (pixels, on the latent grid) for a synthesis with `blocks` residual blocks."""
    return -(-(HALO + blocks * HALO_PER_SYNTHESIS_BLOCK) // STRIDE) * STRIDE


def tile_spans(n: int, tile: int, halo: int = HALO) -> list[tuple[int, int, int, int]]:
    """Split [0, n) into near-equal cores of at most `tile` pixels on the latent grid:
    (lo, hi) with the halo, clipped to [0, n), then the core (a, b)."""
    k = -(-n // max(tile, STRIDE))
    units = n // STRIDE
    cuts = [STRIDE * ((units * i) // k) for i in range(k + 1)]
    return [(max(a - halo, 0), min(b + halo, n), a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def substream_count(latent_symbols: int) -> int:
    """Small images get one substream (each costs a few bytes); large ones up to 8 for threads."""
    return int(min(MAX_SUBSTREAMS, max(1, -(-latent_symbols // SYMBOLS_PER_SUBSTREAM))))


class CodecModel:
    """One model directory.  Thread-safe: ONNX Runtime sessions allow concurrent run()."""

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        optimization: str = "all",
        spinning: bool = False,
        tile: int = TILE,
        precision: str = "auto",
    ):
        """threads: ONNX Runtime intra-op threads (0: one per physical core).  spinning: let idle
        ORT threads busy-wait between ops (lower latency on an otherwise idle machine, wasted
        CPU in a shared server).  tile: largest analysis/synthesis tile side in pixels.
        precision: "fp16" runs analysis and synthesis from the model's fp16 graphs (half the
        memory traffic on a GPU; the integer entropy path is untouched, so bitstreams stay
        interchangeable with fp32); "auto" picks fp16 when a GPU provider leads and the model
        has the graphs, fp32 otherwise (ONNX Runtime's CPU runs fp16 slower than fp32)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.path = Path(path)
        self.max_pixels = max_pixels
        self.tile = tile
        self.manifest = self._verified_manifest()
        self.id: str = self.manifest["id"]
        self.sha256: str = self.manifest["sha256"]
        self.tag: int = int(self.manifest["tag"])
        self._synthesis_halo = synthesis_halo(int(self.manifest.get("config", {}).get("synthesis_blocks", 0)))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.graph_optimization_level = GRAPH_OPTIMIZATION[optimization]
        providers = list(providers or available_providers())
        graphs = {f.split(".")[0]: f for f in WEIGHT_FILES[:3]}
        self.precision = self._choose_precision(precision, providers)
        if self.precision == "fp16":
            graphs.update(FP16_GRAPHS)
        try:
            self._sessions = {
                name: ort.InferenceSession(str(self.path / f), opts, providers=providers) for name, f in graphs.items()
            }
            with np.load(self.path / "entropy.npz") as z:
                self._arrays = {k: z[k] for k in z.files}
        except Exception as exc:
            raise ModelLoadError(f"model {self.id} at {self.path}: {exc}") from exc
        self.providers: list[str] = self._sessions["analysis"].get_providers()
        self._tables = entropy.EntropyTables(self._arrays)
        self._hyper_synthesis = fixedpoint.HyperSynthesis(self._arrays)
        # models exported with a context model carry its integer weights in entropy.npz
        self._context = fixedpoint.ContextModel(self._arrays) if "context_slices" in self._arrays else None
        self._levels = int(self._arrays["gain"].shape[0])
        log.info("loaded model %s (tag %04x) with %s, %s", self.id, self.tag, self.providers[0], self.precision)

    def _choose_precision(self, precision: str, providers: list[str]) -> str:
        """fp16 only from graphs the manifest lists (hash-checked here); see __init__."""
        fp16 = self.manifest.get("fp16") or {}
        on_gpu = providers[0] in GPU_PROVIDERS and providers[0] in ort.get_available_providers()
        if precision == "fp32" or (precision == "auto" and not (on_gpu and fp16)):
            return "fp32"
        for name in FP16_GRAPHS.values():
            p = self.path / name
            if name not in fp16 or not p.is_file():
                raise ModelLoadError(f"model {self.id} at {self.path} has no fp16 graph {name}; re-export it")
            if file_sha256(p) != fp16[name]:
                raise ModelLoadError(f"{p}: sha256 does not match the manifest (corrupt or replaced file)")
        return "fp16"

    def _verified_manifest(self) -> dict:
        mpath = self.path / "manifest.json"
        try:
            manifest = json.loads(mpath.read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{mpath}: unreadable manifest ({exc})") from exc
        for name in WEIGHT_FILES:
            p = self.path / name
            if not p.is_file():
                raise ModelLoadError(f"{self.path}: missing {name}")
            if file_sha256(p) != files.get(name):
                raise ModelLoadError(f"{p}: sha256 does not match the manifest (corrupt or replaced file)")
        combined = weights_sha256(files)
        if combined != manifest.get("sha256") or int(combined[:4], 16) != manifest.get("tag"):
            raise ModelLoadError(f"{mpath}: sha256/tag do not match the weight files")
        return manifest

    @property
    def provider(self) -> str:
        return self.providers[0]

    # ---------------------------------------------------------------- encode
    def compress_batch(
        self,
        images: Sequence[np.ndarray],
        qualities: Sequence[int],
        timings: dict[str, float] | None = None,
        downscales: Sequence[int] | None = None,
    ) -> list[bytes]:
        """HxWx3 uint8 images -> bitstreams; same-size (after padding) images share ONNX runs.
        downscales: per image 1 (default) or 2, which codes a half-resolution copy (the low-rate
        end below quality 0: docs/codec.md)."""
        if len(images) != len(qualities) or (downscales is not None and len(downscales) != len(images)):
            raise ValueError("one quality (and downscale) per image")
        qs = [self._check_quality(q) for q in qualities]
        ds = [1] * len(images) if downscales is None else [self._check_downscale(d) for d in downscales]
        for im in images:
            self._check_image(im)
        coded = self._coded(images, ds, timings)
        out: list[bytes] = [b""] * len(images)
        for idx in self._groups([im.shape[:2] for im in coded]):
            y = self._analyse([coded[i] for i in idx], timings)
            shapes = [images[i].shape[:2] for i in idx]
            for i, data in zip(idx, self._encode(y, [qs[i] for i in idx], shapes, [ds[i] for i in idx], timings)):
                out[i] = data
        return out

    def compress_to_bpp(self, image: np.ndarray, target_bpp: float, timings: dict[str, float] | None = None) -> bytes:
        """Highest quality whose whole bitstream is at most target_bpp, at full or half resolution.

        Low rates are also searched at half resolution (docs/codec.md: on Kodak it beats the
        model's own lowest levels below ~0.2 bpp); when both fit below half resolution's top
        quality, the one that decodes closer to the image (squared error) wins.  Nothing fits:
        half-resolution quality 0, the smallest stream this model writes."""
        if not (target_bpp > 0 and np.isfinite(target_bpp)):
            raise InvalidParameterError(f"target_bpp must be a positive number, got {target_bpp}")
        self._check_image(image)
        full, full_fits = self._search_bpp(image, 1, target_bpp, timings)
        if full_fits and bitstream.read_header(full).quality > HALF_SEARCH_BELOW_QUALITY:
            return full
        half, half_fits = self._search_bpp(image, 2, target_bpp, timings)
        if not (full_fits and half_fits):
            return full if full_fits else half
        if bitstream.read_header(half).quality == fixedpoint.QUALITY_MAX:
            return full  # the cap is past where half resolution saturates (its upsampling blur)
        errors = [_squared_error(image, im) for im in self.decompress_batch([full, half], timings)]
        return half if errors[1] < errors[0] else full

    def _search_bpp(
        self, image: np.ndarray, downscale: int, target_bpp: float, timings: dict[str, float] | None
    ) -> tuple[bytes, bool]:
        """(highest-quality stream at this resolution within target_bpp, True), else (quality 0, False)."""
        y = self._analyse(self._coded([image], [downscale], timings), timings)
        pixels = image.shape[0] * image.shape[1]

        def encode(q: int) -> bytes:
            return self._encode(y, [q], [image.shape[:2]], [downscale], timings)[0]

        lo, hi = 0, fixedpoint.QUALITY_MAX
        best = encode(lo)
        if 8 * len(best) / pixels > target_bpp:
            return best, False
        while lo < hi:  # invariant: quality lo fits; bpp grows with quality
            mid = (lo + hi + 1) // 2
            data = encode(mid)
            if 8 * len(data) / pixels <= target_bpp:
                lo, best = mid, data
            else:
                hi = mid - 1
        return best, True

    @staticmethod
    def _coded(images: Sequence[np.ndarray], downscales: list[int], timings: dict[str, float] | None) -> list[np.ndarray]:
        """The images each stream codes: as given, or their half-resolution copies (downscale 2)."""
        if 2 not in downscales:
            return list(images)
        with _timed(timings, "resample"):
            return [downsample(im) if d == 2 else im for im, d in zip(images, downscales)]

    def _analyse(self, images: list[np.ndarray], timings: dict[str, float] | None) -> np.ndarray:
        """Same-padded-size images -> y (B,M,ph/16,pw/16), tile by tile for large images."""
        ph, pw = padded_size(*images[0].shape[:2])  # the same for the whole group
        y = None
        for r0, r1, a0, a1 in tile_spans(ph, self.tile):
            for c0, c1, b0, b1 in tile_spans(pw, self.tile):
                x = _input_tile(images, r0, r1, c0, c1)
                with _timed(timings, "analysis"):
                    t = self._sessions["analysis"].run(None, {"x": x})[0]
                if (r1 - r0, c1 - c0) == (ph, pw):
                    return t
                if y is None:
                    y = np.empty((len(images), t.shape[1], ph // STRIDE, pw // STRIDE), np.float32)
                y[:, :, a0 // STRIDE : a1 // STRIDE, b0 // STRIDE : b1 // STRIDE] = t[
                    :, :, (a0 - r0) // STRIDE : (a1 - r0) // STRIDE, (b0 - c0) // STRIDE : (b1 - c0) // STRIDE
                ]
        assert y is not None
        return y

    def _synthesise(
        self, y_hat: np.ndarray, shapes: list[tuple[int, int]], timings: dict[str, float] | None
    ) -> list[np.ndarray]:
        """y_hat (B,M,h,w) -> HxWx3 uint8 images, tile by tile; no full-size float image is held."""
        ph, pw = y_hat.shape[2] * STRIDE, y_hat.shape[3] * STRIDE
        out = [np.empty((h, w, 3), np.uint8) for h, w in shapes]
        for r0, r1, a0, a1 in tile_spans(ph, self.tile, self._synthesis_halo):
            for c0, c1, b0, b1 in tile_spans(pw, self.tile, self._synthesis_halo):
                if not any(a0 < h and b0 < w for h, w in shapes):
                    continue  # a tile of padding only
                with _timed(timings, "synthesis"):
                    x = self._sessions["synthesis"].run(
                        None, {"y_hat": y_hat[:, :, r0 // STRIDE : r1 // STRIDE, c0 // STRIDE : c1 // STRIDE]}
                    )[0]
                for j, (h, w) in enumerate(shapes):
                    hh, ww = min(a1, h) - a0, min(b1, w) - b0
                    if hh > 0 and ww > 0:
                        t = x[j, :, a0 - r0 : a0 - r0 + hh, b0 - c0 : b0 - c0 + ww] * 255.0
                        np.clip(np.rint(t, out=t), 0, 255, out=t)
                        out[j][a0 : a0 + hh, b0 : b0 + ww] = t.transpose(1, 2, 0)
        return out

    def _encode(
        self,
        y: np.ndarray,
        qs: list[int],
        shapes: list[tuple[int, int]],
        downscales: list[int],
        timings: dict[str, float] | None,
    ) -> list[bytes]:
        """Latents of one padded size -> bitstreams; shapes are the output (not coded) sizes."""
        a = self._arrays
        y_g = y * np.stack([fixedpoint.interp_float(a["gain"], q) for q in qs])[:, :, None, None]
        with _timed(timings, "hyper_analysis"):
            z = self._sessions["hyper_analysis"].run(None, {"y": y_g.astype(np.float32, copy=False)})[0]
        hg = np.stack([fixedpoint.interp_float(a["hgain"], q) for q in qs])[:, :, None, None]
        z_hat = np.clip(np.rint(z * hg), -entropy.SYMBOL_LIMIT, entropy.SYMBOL_LIMIT).astype(np.int64)
        with _timed(timings, "entropy_params"):
            hyper = self._hyper_synthesis.parameters(z_hat, qs)
        y_g = y_g.astype(np.float64)
        sym, _, log_scales = self._code_parts(hyper, lambda ch, ii, jj, mu, ls: _symbols(y_g[:, ch, ii, jj], mu), timings)
        index = self._hyper_synthesis.scale_index(log_scales)
        parts = self._parts(*sym.shape[2:])
        out = []
        with _timed(timings, "entropy_encode"):
            for i, q in enumerate(qs):
                k = substream_count(sym[i].size)
                enc = entropy.encode_z(self._tables, z_hat[i])
                coded = [(sym[i, ch][:, pos], index[i, ch][:, pos]) for ch, pos in parts]
                subs = entropy.encode_y(self._tables, enc, coded, k)
                h, w = shapes[i]
                out.append(bitstream.pack(self.tag, w, h, q, subs, downscales[i]))
        return out

    # ---------------------------------------------------------------- decode
    def decompress_batch(self, streams: Sequence[bytes], timings: dict[str, float] | None = None) -> list[np.ndarray]:
        """Bitstreams -> HxWx3 uint8 images."""
        parsed = [self.parse(s) for s in streams]
        out: list[np.ndarray] = [np.zeros(0)] * len(parsed)
        for idx in self._groups([p.header.coded_size for p in parsed]):
            y_hat = self.decode_latents([parsed[i] for i in idx], timings)
            shapes = [parsed[i].header.coded_size for i in idx]
            for i, im in zip(idx, self._synthesise(y_hat, shapes, timings)):
                h = parsed[i].header
                if h.downscale != 1:
                    with _timed(timings, "resample"):
                        im = upsample(im, h.height, h.width)
                out[i] = im
        return out

    def parse(self, data: bytes) -> bitstream.Bitstream:
        """Unpack and check that this model wrote it (before any allocation of image size)."""
        bs = bitstream.unpack(data, max_pixels=self.max_pixels)
        if bs.header.model_tag != self.tag:
            raise ModelMismatchError(
                f"bitstream written by model tag {bs.header.model_tag:04x}, this is {self.id} ({self.tag:04x})"
            )
        return bs

    def decode_latents(self, items: list[bitstream.Bitstream], timings: dict[str, float] | None = None) -> np.ndarray:
        """Same-padded-size bitstreams -> inverse-gained latents y_hat (B,M,h,w) float32: no pixels.
        (The compressed-domain classifier reads these.)"""
        a = self._arrays
        ph, pw = padded_size(*items[0].header.coded_size)
        nz = a["hgain"].shape[1]
        zs, decoders = [], []
        with _timed(timings, "entropy_decode"):
            for it in items:
                z, dec = entropy.decode_z(self._tables, it.substreams[0], (nz, ph // ALIGN, pw // ALIGN))
                zs.append(z)
                decoders.append(dec)
        qs = [it.header.quality for it in items]
        with _timed(timings, "entropy_params"):
            hyper = self._hyper_synthesis.parameters(np.stack(zs), qs)
        decoders = [entropy.y_decoders(dec, it.substreams) for dec, it in zip(decoders, items)]

        def decode(ch: slice, ii: np.ndarray, jj: np.ndarray, mu: np.ndarray, ls: np.ndarray) -> np.ndarray:
            index = self._hyper_synthesis.scale_index(ls)
            with _timed(timings, "entropy_decode"):
                return np.stack([entropy.decode_y(self._tables, decoders[i], index[i]) for i in range(len(items))])

        sym, means, _ = self._code_parts(hyper, decode, timings)
        y_hat = sym + means * 2.0**-fixedpoint.ACT_FRAC
        inv = np.stack([fixedpoint.interp_float(a["inv_gain"], q) for q in qs])[:, :, None, None]
        return (y_hat * inv).astype(np.float32)

    def _parts(self, h: int, w: int) -> list[tuple[slice, np.ndarray]]:
        """Coding order: (channel slice, (h, w) position mask) per part (fixedpoint.context_parts)."""
        slices = self._context.slices if self._context is not None else 0
        return fixedpoint.context_parts(slices, self._arrays["gain"].shape[1], h, w)

    def _code_parts(
        self,
        hyper: tuple[np.ndarray, np.ndarray],
        part_symbols: Callable[[slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
        timings: dict[str, float] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Walk the coding parts in order, the same way when encoding and decoding: each part's
        means and log-scales (the hyper-prior's, or the context model's from the parts before
        it), then its symbols from `part_symbols(channels, rows, cols, means, log_scales)`
        (quantised by the encoder, entropy-decoded by the decoder).  Returns the whole
        (symbols, means, log-scales) as coded, int64 (B, M, H, W)."""
        means, log_scales = (p.copy() for p in hyper)
        sym = np.zeros_like(means)
        decoded = np.zeros_like(means)  # y_hat so far, in 2**-ACT_FRAC units: the context's input
        for k, (ch, pos) in enumerate(self._parts(*means.shape[2:])):
            ii, jj = np.nonzero(pos)
            if k:
                with _timed(timings, "entropy_params"):
                    means[:, ch, ii, jj], log_scales[:, ch, ii, jj] = self._context(k, decoded, *hyper, pos)
            mu = means[:, ch, ii, jj]
            sym[:, ch, ii, jj] = part_symbols(ch, ii, jj, mu, log_scales[:, ch, ii, jj])
            if self._context is not None:
                decoded[:, ch, ii, jj] = sym[:, ch, ii, jj] * (1 << fixedpoint.ACT_FRAC) + mu
        return sym, means, log_scales

    # ---------------------------------------------------------------- checks
    @staticmethod
    def _check_quality(q: int) -> int:
        if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 0 <= q <= fixedpoint.QUALITY_MAX:
            raise InvalidParameterError(f"quality must be an integer in [0, {fixedpoint.QUALITY_MAX}], got {q!r}")
        return int(q)

    @staticmethod
    def _check_downscale(d: int) -> int:
        if isinstance(d, bool) or d not in bitstream.DOWNSCALES:
            raise InvalidParameterError(f"downscale must be one of {bitstream.DOWNSCALES}, got {d!r}")
        return int(d)

    def _check_image(self, im: np.ndarray) -> None:
        from .errors import ImageTooLargeError, InvalidImageError

        if not (isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3):
            raise InvalidImageError("expected an HxWx3 uint8 array (see saic.codec.image.to_rgb8)")
        h, w = im.shape[:2]
        if h < 1 or w < 1:
            raise InvalidImageError("empty image")
        if h * w > self.max_pixels or max(h, w) > bitstream.MAX_SIDE:
            raise ImageTooLargeError(f"{w}x{h} exceeds the limit of {self.max_pixels} pixels")

    @staticmethod
    def _groups(shapes: list[tuple[int, int]]) -> list[list[int]]:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w) in enumerate(shapes):
            groups.setdefault(padded_size(h, w), []).append(i)
        return list(groups.values())


def _symbols(y: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The integers the entropy coder codes: y - mean rounded, clamped to what it can code."""
    sym = np.rint(y - means * 2.0**-fixedpoint.ACT_FRAC)
    return np.clip(sym, -entropy.SYMBOL_LIMIT, entropy.SYMBOL_LIMIT, out=sym).astype(np.int64)


def _squared_error(a: np.ndarray, b: np.ndarray, rows: int = 256) -> int:
    """Sum of squared differences of two uint8 images, exact, in row blocks (no full-size float copy)."""
    total = 0
    for r in range(0, a.shape[0], rows):
        d = a[r : r + rows].astype(np.int32) - b[r : r + rows]
        total += int(np.einsum("ijk,ijk->", d, d, dtype=np.int64))
    return total


def downsample(rgb: np.ndarray) -> np.ndarray:
    """The half-resolution copy a downscale-2 stream codes: ceil(H/2) x ceil(W/2), Lanczos
    (antialiased; measured a little better than box or bicubic at equal rate on Kodak)."""
    h, w = bitstream.coded_size(*rgb.shape[:2], 2)
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS))


def upsample(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Decoded half-resolution pixels -> the output size (Pillow's Lanczos: 8-bit fixed-point
    arithmetic, the same bytes on every machine for a given Pillow version)."""
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def _input_tile(images: list[np.ndarray], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows r0:r1, columns c0:c1 of the edge-padded images as float32 NCHW in [0, 1]: one
    conversion pass, no padded uint8 or float copy of the whole image."""
    x = np.empty((len(images), 3, r1 - r0, c1 - c0), np.float32)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        if r1 <= h and c1 <= w:
            src = im[r0:r1, c0:c1]
        else:  # clipped indices repeat the last row/column: np.pad(mode="edge")
            src = im[np.minimum(np.arange(r0, r1), h - 1)[:, None], np.minimum(np.arange(c0, c1), w - 1)]
        x[i] = src.transpose(2, 0, 1)
    x /= 255.0
    return x
