"""The one data plane behind both protocols: validate -> batcher -> codec API.

HTTP handlers and the gRPC servicer only translate their wire format into calls here and
errors into status codes (`errors.status_for`).  Limits, model lookup, batching keys, image
decoding/encoding off the event loop and per-stage metrics all live here, once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import numpy as np

from saic.codec import bitstream as bs
from saic.codec.errors import InvalidParameterError, ModelMismatchError
from saic.codec.image import decode_image, encode_image
from saic.codec.model import CodecModel, padded_size
from saic.codec.registry import ModelRegistry
from saic.results import CompressResult, DecompressResult
from saic.semantics.latent import HeadRegistry

from . import scoring
from .batcher import Batcher, BatchKey
from .errors import DeadlineExceededError, DrainingError, EmptyBodyError, NotAcceptableError, NotImplementedYetError
from .errors import QueueFullError
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("saic.server")

T = TypeVar("T")

# Output formats for decompress: name -> media type (encoding is saic.codec.image.encode_image).
FORMATS: dict[str, str] = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
MEDIA_TYPES: dict[str, str] = {v: k for k, v in FORMATS.items()} | {"image/jpg": "jpeg"}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    sha256: str
    tag: int
    quality_range: tuple[int, int]
    bpp_range: tuple[float, float] | None
    providers: tuple[str, ...]
    precision: str
    is_default: bool


def check_format(fmt: str | None) -> str:
    """Normalise an output format name ('png', 'image/webp', 'jpg', ...)."""
    f = (fmt or "png").strip().lower()
    f = MEDIA_TYPES.get(f, f)
    f = "jpeg" if f == "jpg" else f
    if f not in FORMATS:
        raise NotAcceptableError(f"unsupported output format {fmt!r}: use one of {', '.join(FORMATS)}")
    return f


class Deadline:
    """Absolute deadline of one request (monotonic clock)."""

    def __init__(self, timeout_s: float | None):
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float | None:
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("deadline exceeded")
        return left


_inside = contextvars.ContextVar("saic_dataplane_admitted", default=False)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _admitted(fn: F) -> F:
    """Refuse a request once draining started; count it until it finishes (nested calls count once)."""

    @functools.wraps(fn)
    async def wrapper(self: "DataPlane", *args: Any, **kwargs: Any) -> Any:
        if _inside.get():
            return await fn(self, *args, **kwargs)
        self._admit()
        token = _inside.set(True)
        try:
            return await fn(self, *args, **kwargs)
        finally:
            _inside.reset(token)
            self._release()

    return wrapper  # type: ignore[return-value]


class DataPlane:
    """Owns the model registry, the batcher and the pre/post-processing threads."""

    def __init__(self, settings: Settings, registry: ModelRegistry, metrics: Metrics):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
            workers=settings.batch_workers,
            metrics=metrics,
            unbatched_ops=frozenset({"compress_bpp"}),  # rate search runs per image
        )
        self._pre = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="saic-pre")
        self.ready = False
        self.accepting = True
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        if settings.default_model and settings.default_model not in registry.models:
            registry.get(settings.default_model)  # raises UnknownModelError with the loaded ids
        for m in registry.models.values():
            metrics.provider_info.labels(m.id, m.provider).set(1)
            log.info("model %s (tag %04x, sha256 %s…) on %s, %s", m.id, m.tag, m.sha256[:12], m.provider, m.precision)
        # compressed-domain heads (models/<codec>-latent-head/) for /v1/classify; a codec without one answers 501
        self.heads = HeadRegistry(settings.model_dir, list(registry.models.values()),
                                  providers=settings.ort_providers(), threads=settings.threads or None)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.batcher.start()
        if self.settings.warmup:
            await self._offload(self._warmup)
        self.ready = True

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests (503 / UNAVAILABLE), finish the ones already accepted."""
        self.ready = self.accepting = False
        self.batcher.flush()
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("drain: %d request(s) still running after %.1fs", self._inflight, timeout)
            return False
        return await self.batcher.drain(max(0.0, timeout - (time.monotonic() - t0)))

    def _admit(self) -> None:
        if not self.accepting:
            self.metrics.rejected.labels("draining").inc()
            raise DrainingError("server is shutting down")
        # Refuse before any pre-processing when the queue plus the running batches are already
        # spoken for: a 429 must not wait behind a backlog of image decodes (issue 7).
        s = self.settings
        capacity = s.max_queue_size + s.max_batch_size * s.batch_workers
        if self._inflight >= capacity:
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFullError(f"{self._inflight} requests in progress (queue and batches full); retry later")
        self._inflight += 1
        self._idle.clear()

    def _release(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def close(self) -> None:
        self.ready = False
        await self.batcher.close()
        self._pre.shutdown(wait=False, cancel_futures=True)

    def _warmup(self) -> None:
        """One small compress+decompress per model: first ORT runs are slow and must not hit users."""
        yy, xx = np.mgrid[0:64, 0:64]
        img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1).astype(np.uint8)
        for m in self.registry.models.values():
            data = m.compress_batch([img], [self.settings.default_quality])[0]
            m.decompress_batch([data])
            try:
                head = self.heads.get(m)
            except Exception:  # noqa: BLE001 - a broken head is reported by classify, not at start
                head = None
            if head is not None:
                head.probabilities(m, [data])
        scorer, why = scoring.semantic_scorer()
        log.info(
            "warm-up done for %d model(s); score-si: %s",
            len(self.registry.models),
            "semantic (saic.semantics.si)" if scorer else f"pixel-only ({why})",
        )

    # ------------------------------------------------------------------ queries
    def model(self, model_id: str | None) -> CodecModel:
        return self.registry.get(model_id or self.settings.default_model)

    def models(self) -> list[ModelInfo]:
        default = self.model(None).id
        out = []
        for m in self.registry.models.values():
            q = m.manifest.get("quality_range", [0, 100])
            b = m.manifest.get("bpp_range")
            out.append(
                ModelInfo(
                    id=m.id,
                    sha256=m.sha256,
                    tag=m.tag,
                    quality_range=(int(q[0]), int(q[1])),
                    bpp_range=(float(b[0]), float(b[1])) if b else None,
                    providers=tuple(m.providers),
                    precision=m.precision,
                    is_default=m.id == default,
                )
            )
        return out

    # ------------------------------------------------------------------ operations
    @_admitted
    async def compress(
        self,
        data: bytes,
        *,
        quality: int | None = None,
        target_bpp: float | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> CompressResult:
        """Encoded image bytes -> bitstream at a quality or under a bpp cap."""
        deadline = Deadline(self._timeout(timeout))
        if quality is not None and target_bpp is not None:
            raise InvalidParameterError("give quality or target_bpp, not both")
        if quality is not None and (isinstance(quality, bool) or not 0 <= int(quality) <= 100 or int(quality) != quality):
            raise InvalidParameterError(f"quality must be an integer in [0, 100], got {quality!r}")
        if target_bpp is not None and not (math.isfinite(target_bpp) and target_bpp > 0):
            raise InvalidParameterError(f"target_bpp must be a positive number, got {target_bpp!r}")
        m = self.model(model)
        if not data:
            raise EmptyBodyError("empty body: send the image bytes")
        rgb = await self._offload(decode_image, bytes(data), self.settings.max_image_pixels, deadline=deadline)
        h, w = rgb.shape[:2]
        if target_bpp is not None:
            key, payload = BatchKey("compress_bpp", m.id, None), (rgb, float(target_bpp))
        else:
            q = self.settings.default_quality if quality is None else int(quality)
            key, payload = BatchKey("compress", m.id, padded_size(h, w)), (rgb, q)
        stream: bytes = await self.batcher.submit(key, payload, deadline.remaining())
        bpp = 8.0 * len(stream) / (h * w)
        self.metrics.output_bpp.labels(m.id).observe(bpp)
        return CompressResult(stream, m.id, w, h, bs.read_header(stream).quality, bpp)

    @_admitted
    async def decode(self, data: bytes, *, model: str | None = None, timeout: float | None = None) -> tuple[np.ndarray, str]:
        """Bitstream -> (HxWx3 uint8, model id).  Header and CRC are checked before queueing."""
        deadline = Deadline(self._timeout(timeout))
        if not data:
            raise EmptyBodyError("empty body: send the bitstream bytes")
        data = bytes(data)
        header = bs.read_header(data, max_pixels=self.settings.max_image_pixels)
        m = self.registry.for_tag(header.model_tag)
        if model and m.id != model:
            wanted = self.registry.get(model)  # UnknownModelError if not loaded at all
            raise ModelMismatchError(f"bitstream was written by model {m.id}, not {wanted.id}")
        m.parse(data)  # full length + CRC check: corrupt streams never reach a batch
        key = BatchKey("decompress", m.id, padded_size(*header.coded_size))
        rgb: np.ndarray = await self.batcher.submit(key, data, deadline.remaining())
        return rgb, m.id

    @_admitted
    async def decompress(
        self, data: bytes, *, fmt: str | None = None, model: str | None = None, timeout: float | None = None
    ) -> DecompressResult:
        """Bitstream -> encoded image (PNG unless `fmt` says otherwise)."""
        deadline = Deadline(self._timeout(timeout))
        f = check_format(fmt)
        rgb, model_id = await self.decode(data, model=model, timeout=deadline.remaining())
        image = await self._offload(encode_image, rgb, f, deadline=deadline)
        return DecompressResult(image, FORMATS[f], rgb.shape[1], rgb.shape[0], model_id)

    @_admitted
    async def score_si(
        self,
        original: bytes,
        *,
        decoded: bytes | None = None,
        bitstream: bytes | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """SI of a reconstruction (an image, or a bitstream the server decodes) versus the original."""
        deadline = Deadline(self._timeout(timeout))
        if (decoded is None) == (bitstream is None):
            raise InvalidParameterError("send the original plus exactly one of 'decoded' or 'bitstream'")
        if not original:
            raise EmptyBodyError("empty 'original' image")
        orig = await self._offload(decode_image, bytes(original), self.settings.max_image_pixels, deadline=deadline)
        result_model = None
        if bitstream is not None:
            recon, result_model = await self.decode(bitstream, timeout=deadline.remaining())
        else:
            if not decoded:
                raise EmptyBodyError("empty 'decoded' image")
            recon = await self._offload(decode_image, bytes(decoded), self.settings.max_image_pixels, deadline=deadline)
        result = await self._offload(scoring.score_si, orig, recon, deadline=deadline)
        if result.get("si") is not None:
            self.metrics.semantic_information.observe(float(result["si"]))
        if result_model:
            result["model"] = result_model
        return result

    @_admitted
    async def classify(
        self, data: bytes, *, top_k: int = 5, model: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Bitstream -> top-k class names with probabilities from the compressed domain: entropy
        decoding + the codec's latent head (saic.semantics.latent), no synthesis, no pixels."""
        start = time.perf_counter()
        deadline = Deadline(self._timeout(timeout))
        if isinstance(top_k, bool) or not 1 <= int(top_k) <= 100 or int(top_k) != top_k:
            raise InvalidParameterError(f"top_k must be an integer in [1, 100], got {top_k!r}")
        if model:
            self.registry.get(model)  # UnknownModelError (404) before looking at the bytes
        if not data:
            raise EmptyBodyError("empty body: send the bitstream bytes")
        data = bytes(data)
        header = bs.read_header(data, max_pixels=self.settings.max_image_pixels)
        m = self.registry.for_tag(header.model_tag)
        if model and m.id != model:
            raise ModelMismatchError(f"bitstream was written by model {m.id}, not {model}")
        head = self.heads.get(m)
        if head is None:
            raise NotImplementedYetError(f"model {m.id} has no compressed-domain head (models/{m.id}-latent-head)")
        m.parse(data)  # full length + CRC check: corrupt streams never reach a batch
        key = BatchKey("classify", m.id, padded_size(*header.coded_size))
        probs = await self.batcher.submit(key, data, deadline.remaining())
        self.metrics.classify_seconds.labels(m.id).observe(time.perf_counter() - start)
        return {"labels": head.top_k(probs, int(top_k)), "model": m.id, "head": head.id}

    # ------------------------------------------------------------------ internals
    def _timeout(self, timeout: float | None) -> float:
        t = self.settings.request_timeout_s
        return t if timeout is None else min(t, timeout)

    async def _offload(self, fn: Callable[..., T], *args: Any, deadline: Deadline | None = None) -> T:
        """Run CPU work (image decode/encode, scoring) in the pre/post-processing pool."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pre, fn, *args)
        if deadline is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, deadline.remaining())
        except asyncio.TimeoutError:
            raise DeadlineExceededError("deadline exceeded during pre/post-processing") from None

    def _run_batch(self, key: BatchKey, payloads: Sequence[Any]) -> list[Any]:
        """Batcher runner (worker thread): one codec call for the whole batch."""
        m = self.registry.get(key.model)
        timings: dict[str, float] = {}
        if key.op == "compress":
            out: list[Any] = m.compress_batch([p[0] for p in payloads], [p[1] for p in payloads], timings)
        elif key.op == "compress_bpp":
            out = [m.compress_to_bpp(rgb, bpp, timings) for rgb, bpp in payloads]
        elif key.op == "decompress":
            out = m.decompress_batch(list(payloads), timings)
        elif key.op == "classify":
            head = self.heads.get(m)
            assert head is not None  # checked before queueing
            out = list(head.probabilities(m, list(payloads), timings))
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown op {key.op}")
        self.metrics.observe_timings(timings)
        return out
