"""Shared fixtures: real saic servers (uvicorn + grpc.aio on loopback, ephemeral ports) running
the shipped model in a background thread, started once per session, plus test images.

Test images are synthesised (smooth gradients, edges, texture and mild noise) so the suite
runs without /work/shared/data; `shared_data_dir()` resolves the real data for tests that want it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def shared_data_dir() -> Path:
    """$SAIC_DATA_DIR or ../shared/data next to the repository (may not exist)."""
    return Path(os.environ.get("SAIC_DATA_DIR", REPO / "../shared/data")).resolve()


def make_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like HxWx3 uint8 image (gradients, a disc, stripes, noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 120 + 100 * np.sin(xx / (width / 3.0) + seed)
    g = 90 + 80 * np.cos(yy / (height / 2.5))
    b = 60 + 60 * (xx + yy) / (height + width)
    img = np.stack([r, g, b], axis=-1)
    cy, cx, rad = height * 0.55, width * 0.4, min(height, width) * 0.25
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rad**2
    img[disc] = [200, 60, 50]
    img[:, :, 1] += 25 * ((xx // 6) % 2) * (yy > height * 0.75)
    img += rng.normal(0, 4, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG", **kw: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def server_settings(**overrides: Any) -> Any:
    """Settings for a loopback test server (CPU, ephemeral ports, small limits); env SAIC_* ignored."""
    from saic.server.settings import Settings

    base: dict[str, Any] = dict(
        host="127.0.0.1",
        http_port=0,
        grpc_port=0,
        model_dir=MODELS,
        providers="cpu",
        max_batch_size=8,
        max_queue_delay_ms=20,
        max_queue_size=64,
        max_body_bytes=1_000_000,
        max_image_pixels=1_048_576,
        request_timeout_s=60,
        drain_timeout_s=10,
        api_key=None,
        tls_cert=None,
        tls_key=None,
        default_model=None,
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def registry() -> Any:
    """The shipped models, loaded once and shared by every test server."""
    if not any(MODELS.glob("*/manifest.json")):
        pytest.skip(f"no shipped model under {MODELS}")
    from saic.server.app import load_registry

    return load_registry(server_settings(max_image_pixels=1_048_576))


@pytest.fixture(scope="session")
def server(registry: Any) -> Iterator[Any]:
    """The main test server: batching on (max_batch_size 8, max_queue_delay_ms 20)."""
    from saic.server.app import ServerThread

    with ServerThread(server_settings(), registry) as srv:
        yield srv


@pytest.fixture(scope="session")
def http(server: Any) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def grpc_channel(server: Any) -> Iterator[Any]:
    import grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(grpc_channel: Any) -> Any:
    from saic.server.proto import codec_pb2_grpc

    return codec_pb2_grpc.CodecStub(grpc_channel)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    return make_photo(48, 80, seed=1)


@pytest.fixture(scope="session")
def photo_png(photo: np.ndarray) -> bytes:
    return encode(photo)


@pytest.fixture(scope="session")
def bitstream(http: Any, photo_png: bytes) -> bytes:
    """A valid bitstream of `photo` made by the server (quality 50)."""
    r = http.post("/v1/compress", content=photo_png, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.content


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` in Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
