"""gRPC API against a real grpc.aio server on loopback: unary, client streaming,
bidirectional streaming, health checking, reflection, deadlines."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from conftest import encode, make_photo, metric_value
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from saic.server.proto import codec_pb2 as pb


def test_unary_round_trip_matches_http(stub, http, photo, photo_png) -> None:
    c = stub.Compress(pb.CompressRequest(image=photo_png, quality=70), timeout=60)
    assert (c.width, c.height, c.quality) == (photo.shape[1], photo.shape[0], 70)
    assert abs(c.bpp - 8 * len(c.bitstream) / photo[..., 0].size) < 1e-9
    via_http = http.post("/v1/compress?quality=70", content=photo_png).content
    assert c.bitstream == via_http  # one data plane, same bytes
    d = stub.Decompress(pb.DecompressRequest(bitstream=c.bitstream), timeout=60)
    assert d.media_type == "image/png" and (d.width, d.height) == (c.width, c.height)
    assert d.model == c.model
    d2 = stub.Decompress(pb.DecompressRequest(bitstream=c.bitstream, format="webp"), timeout=60)
    assert d2.media_type == "image/webp"


def test_target_bpp_and_models(stub, photo_png) -> None:
    c = stub.Compress(pb.CompressRequest(image=photo_png, target_bpp=2.0), timeout=60)
    assert c.bpp <= 2.0 or c.quality == 0
    models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert [m.is_default for m in models].count(True) == 1
    assert models[0].providers == ["CPUExecutionProvider"] and len(models[0].sha256) == 64
    assert models[0].precision == "fp32"


def test_score_si_and_classify(stub, photo_png, bitstream) -> None:
    r = stub.ScoreSI(pb.ScoreSIRequest(original=photo_png, bitstream=bitstream), timeout=60)
    assert "psnr_db" in r.parts and "ms_ssim" in r.parts
    doc = json.loads(r.json)
    assert doc["parts"]["psnr_db"] == pytest.approx(r.parts["psnr_db"])
    if not r.semantic_available:
        assert not r.HasField("si") and r.note
    else:
        assert 0 <= r.si <= 1
    try:
        labels = stub.Classify(pb.ClassifyRequest(bitstream=bitstream, top_k=3), timeout=30).labels
        assert 1 <= len(labels) <= 3
    except grpc.RpcError as e:  # a codec without a latent head
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED


def test_client_streaming_upload_in_chunks(stub, photo_png) -> None:
    unary = stub.Compress(pb.CompressRequest(image=photo_png, quality=55), timeout=60)

    def chunks():
        yield pb.UploadChunk(params=pb.CompressParams(quality=55), data=photo_png[:1000])
        for i in range(1000, len(photo_png), 1000):
            yield pb.UploadChunk(data=photo_png[i : i + 1000])

    up = stub.CompressUpload(chunks(), timeout=60)
    assert up.bitstream == unary.bitstream


def test_upload_larger_than_body_limit(stub, server) -> None:
    limit = server.server.settings.max_body_bytes

    def chunks():
        yield pb.UploadChunk(params=pb.CompressParams(quality=55))
        for _ in range(limit // 65536 + 2):
            yield pb.UploadChunk(data=b"\0" * 65536)

    with pytest.raises(grpc.RpcError) as e:
        stub.CompressUpload(chunks(), timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_slow_upload_without_deadline_is_cut_off_at_the_request_timeout(registry, photo_png) -> None:
    """A client that trickles chunks and sets no deadline gets DEADLINE_EXCEEDED after the
    server's request timeout; other calls on the same server are served meanwhile."""
    import threading
    import time

    from conftest import server_settings

    from saic.server.app import ServerThread
    from saic.server.proto import codec_pb2_grpc

    stop = threading.Event()

    def trickle():
        yield pb.UploadChunk(params=pb.CompressParams(quality=50), data=photo_png[:10])
        for i in range(10, len(photo_png), 10):
            if stop.wait(0.5):
                return
            yield pb.UploadChunk(data=photo_png[i : i + 10])

    with ServerThread(server_settings(request_timeout_s=2.0), registry) as srv, \
            grpc.insecure_channel(srv.grpc_target) as ch:
        slow_stub = codec_pb2_grpc.CodecStub(ch)
        t0 = time.monotonic()
        fut = slow_stub.CompressUpload.future(trickle())
        assert slow_stub.Compress(pb.CompressRequest(image=photo_png, quality=50), timeout=30).bitstream
        try:
            with pytest.raises(grpc.RpcError) as e:
                fut.result(timeout=30)
        finally:
            stop.set()
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "upload" in e.value.details()
        assert 1.5 < time.monotonic() - t0 < 15


def test_bidirectional_stream_many_items_one_bad(stub, bitstream) -> None:
    imgs = [encode(make_photo(32, 48, seed=s)) for s in range(4)]
    reqs = [pb.StreamRequest(id=f"c{i}", compress=pb.CompressRequest(image=im, quality=50)) for i, im in enumerate(imgs)]
    reqs.insert(2, pb.StreamRequest(id="bad", compress=pb.CompressRequest(image=b"not an image")))
    reqs.append(pb.StreamRequest(id="d", decompress=pb.DecompressRequest(bitstream=bitstream)))
    got = {r.id: r for r in stub.Stream(iter(reqs), timeout=120)}
    assert set(got) == {"c0", "c1", "c2", "c3", "bad", "d"}
    assert got["bad"].WhichOneof("result") == "error"
    assert got["bad"].error.status == "INVALID_ARGUMENT" and got["bad"].error.type == "InvalidImageError"
    for i in range(4):
        assert got[f"c{i}"].compress.width == 48
    assert got["d"].decompress.media_type == "image/png"
    # the streamed bitstreams decode
    back = stub.Decompress(pb.DecompressRequest(bitstream=got["c1"].compress.bitstream), timeout=60)
    assert (back.width, back.height) == (48, 32)


def test_health_and_reflection(grpc_channel) -> None:
    health = health_pb2_grpc.HealthStub(grpc_channel)
    for service in ("", "saic.v1.Codec"):
        r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in resp.list_services_response.service}
    assert {"saic.v1.Codec", "grpc.health.v1.Health"} <= names
    req = reflection_pb2.ServerReflectionRequest(file_containing_symbol="saic.v1.Codec")
    resp = next(refl.ServerReflectionInfo(iter([req]), timeout=5))
    assert resp.file_descriptor_response.file_descriptor_proto  # grpcurl can describe the API


def test_grpc_metrics(http, stub, photo_png) -> None:
    stub.Compress(pb.CompressRequest(image=photo_png), timeout=60)
    text = http.get("/metrics").text
    assert metric_value(text, "saic_requests_total", endpoint="compress", protocol="grpc", code="OK") >= 1
    assert metric_value(text, "saic_received_bytes_total", protocol="grpc") > 0
    assert np.isfinite(metric_value(text, "saic_request_duration_seconds_sum", protocol="grpc"))
