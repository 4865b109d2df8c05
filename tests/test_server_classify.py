"""POST /v1/classify and gRPC Classify on the real test server (loopback sockets, shipped codec and
latent head): tiny10 names with probabilities, the error table, batching and metrics."""

from __future__ import annotations

import concurrent.futures as cf

import grpc
import numpy as np
import pytest

from conftest import MODELS, encode, make_photo, metric_value

TINY10 = {"bird", "boat", "bus_train", "car", "cat", "dog", "hoofed", "insect", "monkey", "truck"}


@pytest.fixture(scope="module")
def head_model(registry) -> str:  # noqa: ANN001
    """Id of the default codec, skipping when no latent head ships for its exact weights."""
    from saic.semantics.latent import find_heads

    m = registry.get()
    if m.sha256 not in find_heads(MODELS):
        pytest.skip(f"no latent head under models/ for codec {m.id} ({m.sha256[:12]}); "
                    "train one: python -m saic.training.latent_head --codec models/<id> --out runs/latent-head")
    return m.id


@pytest.fixture(scope="module")
def tiny_stream(http, head_model) -> bytes:  # noqa: ANN001
    r = http.post("/v1/compress?quality=60", content=encode(make_photo(64, 64, seed=7)), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.content


def test_http_classify_top_k(http, tiny_stream, head_model) -> None:  # noqa: ANN001
    r = http.post("/v1/classify?top_k=3", content=tiny_stream, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == head_model and body["head"]
    labels = body["labels"]
    assert len(labels) == 3 and {lb["name"] for lb in labels} <= TINY10
    probs = [lb["probability"] for lb in labels]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-9
    full = http.post("/v1/classify?top_k=100", files={"bitstream": tiny_stream}).json()["labels"]  # multipart, capped at 10
    assert len(full) == 10 and {lb["name"] for lb in full} == TINY10
    assert sum(lb["probability"] for lb in full) == pytest.approx(1.0, abs=1e-6)
    assert full[:3] == labels  # deterministic: same stream, same answer


def test_grpc_classify_matches_http(stub, http, tiny_stream) -> None:  # noqa: ANN001
    from saic.server.proto import codec_pb2 as pb

    r = stub.Classify(pb.ClassifyRequest(bitstream=tiny_stream, top_k=4), timeout=30)
    via_http = http.post("/v1/classify?top_k=4", content=tiny_stream).json()
    assert [(lb.label, round(lb.probability, 9)) for lb in r.labels] == [
        (lb["name"], round(lb["probability"], 9)) for lb in via_http["labels"]]
    assert r.model == via_http["model"]
    default = stub.Classify(pb.ClassifyRequest(bitstream=tiny_stream), timeout=30)
    assert len(default.labels) == 5  # top_k 0 means the default


def test_other_sizes_classify(http, photo_png, head_model) -> None:  # noqa: ANN001
    """A 48x80 image (padded latent 4x8) goes through the same head (global pooling)."""
    stream = http.post("/v1/compress", content=photo_png).content
    r = http.post("/v1/classify?top_k=1", content=stream)
    assert r.status_code == 200 and r.json()["labels"][0]["name"] in TINY10


def test_errors_follow_the_table(http, stub, tiny_stream) -> None:  # noqa: ANN001
    from saic.server.proto import codec_pb2 as pb

    cases = [  # (body, query, HTTP status, reason, gRPC code)
        (b"", "", 400, "empty_body", grpc.StatusCode.INVALID_ARGUMENT),
        (b"not a saic bitstream at all", "", 422, "invalid_bitstream", grpc.StatusCode.INVALID_ARGUMENT),
        (tiny_stream[:-3], "", 422, "invalid_bitstream", grpc.StatusCode.INVALID_ARGUMENT),  # truncated
        (tiny_stream[:-1] + bytes([tiny_stream[-1] ^ 0x55]), "", 422, "invalid_bitstream", grpc.StatusCode.INVALID_ARGUMENT),
        (tiny_stream, "nope", 404, "unknown_model", grpc.StatusCode.NOT_FOUND),
    ]
    for body, model, status, reason, code in cases:
        r = http.post("/v1/classify" + (f"?model={model}" if model else ""), content=body,
                      headers={"content-type": "application/octet-stream"})
        assert r.status_code == status, (body[:8], model, r.text)
        assert r.json()["error"]["reason"] == reason
        with pytest.raises(grpc.RpcError) as e:
            stub.Classify(pb.ClassifyRequest(bitstream=body, model=model), timeout=30)
        assert e.value.code() == code, (body[:8], model)
    assert http.post("/v1/classify?top_k=0", content=tiny_stream).status_code == 400
    with pytest.raises(grpc.RpcError) as e:
        stub.Classify(pb.ClassifyRequest(bitstream=tiny_stream, top_k=-2), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_batched_with_metrics(http, head_model) -> None:  # noqa: ANN001
    streams = [http.post("/v1/compress?quality=40", content=encode(make_photo(64, 64, seed=s))).content for s in range(8)]
    before = http.get("/metrics").text
    with cf.ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda s: http.post("/v1/classify?top_k=2", content=s), streams))
    assert all(r.status_code == 200 for r in out), [r.text for r in out if r.status_code != 200]
    after = http.get("/metrics").text
    n = lambda text, name, **kw: metric_value(text, name, **kw)  # noqa: E731
    assert n(after, "saic_classify_seconds_count", model=head_model) - n(before, "saic_classify_seconds_count", model=head_model) == 8
    batches = n(after, "saic_batch_size_count", op="classify") - n(before, "saic_batch_size_count", op="classify")
    items = n(after, "saic_batch_size_sum", op="classify") - n(before, "saic_batch_size_sum", op="classify")
    assert items == 8 and 1 <= batches <= 8
    assert n(after, "saic_inference_seconds_count", stage="latent_head") > n(before, "saic_inference_seconds_count", stage="latent_head")
    assert n(after, "saic_requests_total", endpoint="classify", protocol="http", code="200") >= 8
    # the same streams one by one give the same labels as in a batch
    for s, batched in zip(streams[:3], out):
        one = http.post("/v1/classify?top_k=2", content=s).json()["labels"]
        assert [lb["name"] for lb in one] == [lb["name"] for lb in batched.json()["labels"]]
        assert np.allclose([lb["probability"] for lb in one], [lb["probability"] for lb in batched.json()["labels"]], atol=1e-5)
