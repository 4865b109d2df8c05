"""Pillow baselines: real encode/decode round trips, rates and payload parsing."""

from __future__ import annotations

import numpy as np
import pytest

from saic.eval.baselines import BASELINES, get_baseline
from saic.eval.metrics import psnr
from test_eval_metrics import synth_pair


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    a, _ = synth_pair(64, 96)
    return a


@pytest.mark.parametrize("name", list(BASELINES))
def test_round_trip_and_rate_monotone(name: str, image: np.ndarray) -> None:
    b = get_baseline(name)
    lo, hi = b.qualities[0], b.qualities[-1]
    small, big = b.encode(image, lo), b.encode(image, hi)
    assert len(small) < len(big)
    rec_small, rec_big = b.decode(small), b.decode(big)
    assert rec_small.shape == image.shape and rec_small.dtype == np.uint8
    assert psnr(image, rec_big) > psnr(image, rec_small) > 15
    payload = b.payload_bytes(big)
    assert payload is not None and 0 < payload < len(big)


def test_payload_parsers_know_their_containers(image: np.ndarray) -> None:
    webp = get_baseline("webp")
    data = webp.encode(image, 50)
    # simple lossy WebP: 12-byte RIFF header + 8-byte chunk header + payload (+ pad byte)
    assert webp.payload_bytes(data) in (len(data) - 20, len(data) - 21)
    assert get_baseline("jpeg420").payload_bytes(webp.encode(image, 50)) is None
    assert webp.payload_bytes(get_baseline("jpeg420").encode(image, 50)) is None


def test_unknown_baseline() -> None:
    with pytest.raises(KeyError):
        get_baseline("bpg")
    with pytest.raises(ValueError):
        get_baseline("webp").encode(np.zeros((4, 4), np.uint8), 50)
