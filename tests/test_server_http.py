"""HTTP API against a real server on loopback (uvicorn, real sockets, the shipped model)."""

from __future__ import annotations

import io

import numpy as np
from conftest import encode, make_photo, metric_value
from PIL import Image


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def test_round_trip_raw_body(http, photo, photo_png) -> None:
    r = http.post("/v1/compress?quality=70", content=photo_png, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    h, w = photo.shape[:2]
    assert (int(r.headers["x-saic-width"]), int(r.headers["x-saic-height"])) == (w, h)
    assert r.headers["x-saic-model"] == "saic-small" or r.headers["x-saic-model"]
    assert int(r.headers["x-saic-quality"]) == 70
    bpp = float(r.headers["x-saic-bpp"])
    assert abs(bpp - 8 * len(r.content) / (w * h)) < 1e-4
    assert 0 < bpp < 24

    d = http.post("/v1/decompress", content=r.content, headers={"content-type": "application/octet-stream"})
    assert d.status_code == 200, d.text
    assert d.headers["content-type"] == "image/png"
    out = _decode_png(d.content)
    assert out.shape == photo.shape
    psnr = 10 * np.log10(255**2 / np.mean((out.astype(float) - photo) ** 2))
    assert psnr > 15, psnr  # a real reconstruction, not noise


def test_compress_is_deterministic_and_matches_in_process_codec(http, registry, photo, photo_png) -> None:
    r1 = http.post("/v1/compress?quality=40", content=photo_png, headers={"content-type": "image/png"})
    r2 = http.post("/v1/compress?quality=40", content=photo_png, headers={"content-type": "image/png"})
    direct = registry.get().compress_batch([photo], [40])[0]
    assert r1.content == r2.content == direct


def test_multipart_and_jpeg_input(http) -> None:
    img = make_photo(40, 56, seed=3)
    jpg = encode(img, "JPEG", quality=92)
    r = http.post("/v1/compress", files={"image": ("x.jpg", jpg, "image/jpeg")}, params={"quality": 30})
    assert r.status_code == 200, r.text
    assert (r.headers["x-saic-width"], r.headers["x-saic-height"]) == ("56", "40")
    d = http.post("/v1/decompress", files={"bitstream": ("x.saic", r.content, "application/octet-stream")})
    assert d.status_code == 200
    assert _decode_png(d.content).shape == (40, 56, 3)


def test_quality_raises_rate(http, photo_png) -> None:
    sizes = []
    for q in (0, 100):
        r = http.post(f"/v1/compress?quality={q}", content=photo_png, headers={"content-type": "image/png"})
        assert r.status_code == 200
        sizes.append(len(r.content))
    assert sizes[0] < sizes[1]


def test_target_bpp(http, photo_png) -> None:
    r = http.post("/v1/compress?target_bpp=1.5", content=photo_png, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert float(r.headers["x-saic-bpp"]) <= 1.5 or int(r.headers["x-saic-quality"]) == 0


def test_target_bpp_below_quality_0_codes_half_resolution(http) -> None:
    """A cap under full-resolution quality 0 gets a half-resolution stream that decodes at full size."""
    from saic.codec import bitstream as bs

    photo = make_photo(256, 320, seed=5)  # large enough that the 64-pixel padding does not dominate
    photo_png = encode(photo)
    q0 = http.post("/v1/compress?quality=0", content=photo_png, headers={"content-type": "image/png"})
    cap = 0.8 * float(q0.headers["x-saic-bpp"])
    r = http.post(f"/v1/compress?target_bpp={cap}", content=photo_png, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert bs.read_header(r.content).downscale == 2 and float(r.headers["x-saic-bpp"]) <= cap
    d = http.post("/v1/decompress", content=r.content)
    assert d.status_code == 200
    assert Image.open(io.BytesIO(d.content)).size == (photo.shape[1], photo.shape[0])


def test_decompress_formats_by_parameter_and_accept(http, bitstream) -> None:
    r = http.post("/v1/decompress?format=webp", content=bitstream)
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert r.content[:4] == b"RIFF" and r.content[8:12] == b"WEBP"
    r = http.post("/v1/decompress", content=bitstream, headers={"accept": "image/jpeg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:3] == b"\xff\xd8\xff"
    r = http.post("/v1/decompress", content=bitstream, headers={"accept": "image/gif"})
    assert r.status_code == 406


def test_score_si_pixel_only_until_semantics(http, photo_png, bitstream) -> None:
    by_stream = http.post("/v1/score-si", files={"original": photo_png, "bitstream": bitstream})
    assert by_stream.status_code == 200, by_stream.text
    body = by_stream.json()
    assert set(body["parts"]) >= {"psnr_db", "ms_ssim"}
    assert 0 < body["parts"]["ms_ssim"] <= 1
    if body["semantic"] is None:  # no classifier model: pixel parts only, and the response says so
        assert body["si"] is None and "pixel" in body["note"]
    else:
        assert 0 <= body["si"] <= 1 and {"pixel", "semantic", "agreement"} <= set(body["parts"])
    decoded = http.post("/v1/decompress", content=bitstream).content
    by_image = http.post("/v1/score-si", files={"original": photo_png, "decoded": decoded}).json()
    assert abs(by_image["parts"]["psnr_db"] - body["parts"]["psnr_db"]) < 1e-9
    same = http.post("/v1/score-si", files={"original": photo_png, "decoded": photo_png}).json()
    assert same["parts"]["psnr_db"] is None and abs(same["parts"]["ms_ssim"] - 1) < 1e-9  # identical: inf dB


def test_classify_from_the_compressed_domain(http, bitstream) -> None:
    r = http.post("/v1/classify?top_k=3", content=bitstream)
    if r.status_code == 501:  # this codec ships no latent head
        assert r.json()["error"]["reason"] == "not_implemented"
        return
    assert r.status_code == 200, r.text
    labels = r.json()["labels"]
    assert 1 <= len(labels) <= 3
    probs = [lb["probability"] for lb in labels]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)


def test_models_health_ready_docs(http, server) -> None:
    m = http.get("/v1/models").json()
    assert m["default"] in [x["id"] for x in m["models"]]
    info = m["models"][0]
    assert len(info["sha256"]) == 64 and 0 <= info["tag"] < 65536
    assert info["quality_range"] == [0, 100]
    assert info["providers"] == ["CPUExecutionProvider"] and info["precision"] == "fp32"
    assert http.get("/healthz").json() == {"status": "alive"}
    assert http.get("/readyz").status_code == 200
    spec = http.get("/openapi.json").json()
    assert {"/v1/compress", "/v1/decompress", "/v1/score-si", "/v1/models"} <= set(spec["paths"])
    assert "image/png" in spec["paths"]["/v1/compress"]["post"]["requestBody"]["content"]
    assert "429" in spec["paths"]["/v1/compress"]["post"]["responses"]
    assert http.get("/docs").status_code == 200


def test_metrics_names_from_design_doc(http, bitstream) -> None:
    text = http.get("/metrics").text
    for name in [
        "saic_requests_total",
        "saic_request_duration_seconds",
        "saic_queue_wait_seconds",
        "saic_batch_size",
        "saic_inference_seconds",
        "saic_output_bits_per_pixel",
        "saic_received_bytes_total",
        "saic_sent_bytes_total",
        "saic_inflight_requests",
        "saic_queue_depth",
        "saic_rejected_requests_total",
        "saic_execution_provider_info",
        "saic_semantic_information",
    ]:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert metric_value(text, "saic_requests_total", endpoint="compress", protocol="http", code="200") >= 1
    assert metric_value(text, "saic_execution_provider_info", model="saic-small", provider="CPUExecutionProvider") == 1
    assert metric_value(text, "saic_inference_seconds_count", stage="analysis") >= 1
    assert metric_value(text, "saic_inference_seconds_count", stage="synthesis") >= 1
    assert metric_value(text, "saic_output_bits_per_pixel_count") >= 1
    assert metric_value(text, "saic_received_bytes_total", protocol="http") > 0
    assert metric_value(text, "saic_sent_bytes_total", protocol="http") > 0
