"""Prometheus metrics.  Names and labels are fixed by docs/design.md (dashboards and alerts in
deploy/ depend on them).  Each server instance owns its own registry so several servers can
live in one process (tests, benchmarks)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
BPP_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
SI_BUCKETS = tuple(i / 10 for i in range(11))

CONTENT_TYPE = CONTENT_TYPE_LATEST

disable_created_metrics()  # the *_created series only add noise to every scrape


class Metrics:
    """All saic_* metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, process_metrics: bool = True):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.requests = Counter(
            "saic_requests", "Requests by endpoint, protocol and status code", ["endpoint", "protocol", "code"], registry=r
        )
        self.request_duration = Histogram(
            "saic_request_duration_seconds",
            "Request latency from receipt to response",
            ["endpoint", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "saic_queue_wait_seconds", "Time a request waited in the batcher queue", ["op"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("saic_batch_size", "Requests per executed batch", ["op"], buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram(
            "saic_inference_seconds", "Seconds per codec stage per batch", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.output_bpp = Histogram(
            "saic_output_bits_per_pixel", "Bits per pixel of compressed outputs", ["model"], buckets=BPP_BUCKETS, registry=r
        )
        self.received_bytes = Counter("saic_received_bytes", "Request payload bytes", ["protocol"], registry=r)
        self.sent_bytes = Counter("saic_sent_bytes", "Response payload bytes", ["protocol"], registry=r)
        self.inflight = Gauge("saic_inflight_requests", "Requests being handled", ["protocol"], registry=r)
        self.queue_depth = Gauge("saic_queue_depth", "Requests waiting in the batcher queue", registry=r)
        self.rejected = Counter(
            "saic_rejected_requests", "Requests refused or dropped before inference", ["reason"], registry=r
        )
        self.provider_info = Gauge(
            "saic_execution_provider_info", "ONNX Runtime execution provider per model (value 1)", ["model", "provider"], registry=r
        )
        self.semantic_information = Histogram(
            "saic_semantic_information", "Semantic information scores returned by score-si", buckets=SI_BUCKETS, registry=r
        )
        self.classify_seconds = Histogram(
            "saic_classify_seconds",
            "Compressed-domain classification per request in the data plane (queue + entropy decoding + latent head)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for proto in ("http", "grpc"):  # export zeros so dashboards see the series from the start
            self.inflight.labels(proto)
            self.received_bytes.labels(proto)
            self.sent_bytes.labels(proto)

    def observe_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.inference.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
