"""Server settings: environment (`SAIC_*`), then CLI flags, then explicit keyword arguments.

Batching vocabulary follows Triton's dynamic batcher: `max_batch_size`, `max_queue_delay_ms`
(how long the oldest request may wait for company), a bounded queue (`max_queue_size`) whose
reject policy answers HTTP 429 / RESOURCE_EXHAUSTED, and a per-request timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_model_dir() -> Path:
    """$SAIC_MODEL_DIR is read by pydantic; otherwise the repo's models/ (editable installs) or ./models."""
    repo_models = Path(__file__).resolve().parents[3] / "models"
    return repo_models if repo_models.is_dir() else Path("models")


class Settings(BaseSettings):
    """Everything an operator can tune.  Each field is also `SAIC_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SAIC_", env_file=None, extra="ignore", protected_namespaces=())

    # network
    host: str = Field("127.0.0.1", description="bind address for both protocols")
    http_port: int = Field(8080, ge=0, le=65535, description="0 picks a free port (logged)")
    grpc_port: int = Field(50051, ge=-1, le=65535, description="0 picks a free port (logged); -1 disables gRPC")
    enable_grpc: bool = True
    # models
    model_dir: Path = Field(default_factory=_default_model_dir)
    default_model: str | None = Field(None, description="model id used when a request names none")
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="ONNX Runtime execution provider (auto: CUDA if present, else CPU; tensorrt: TensorRT, "
        "then CUDA, then CPU, each where present)")
    precision: Literal["auto", "fp32", "fp16"] = Field(
        "auto", description="analysis/synthesis graphs (auto: fp16 on a GPU when the model ships them, else fp32); "
        "bitstreams are the same either way")
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads per session (0 = ORT default)")
    spinning: bool = Field(False, description="let idle ONNX Runtime threads busy-wait (lower latency, burns CPU)")
    tile: int = Field(1024, ge=64, le=8192, description="largest analysis/synthesis tile side in pixels (bounds memory)")
    warmup: bool = Field(True, description="run one compress/decompress per model before reporting ready")
    # batching (Triton vocabulary)
    max_batch_size: int = Field(8, ge=1, description="1 disables batching")
    max_queue_delay_ms: float = Field(5.0, ge=0, description="max wait of the oldest queued request for a fuller batch")
    max_queue_size: int = Field(64, ge=1, description="queued requests before new ones are rejected (429)")
    batch_workers: int = Field(1, ge=1, description="batches run concurrently (threads calling ONNX Runtime)")
    preprocess_threads: int = Field(2, ge=1, description="threads decoding/encoding images off the event loop")
    request_timeout_s: float = Field(30.0, gt=0, description="default per-request deadline")
    # limits
    max_image_pixels: int = Field(16_777_216, ge=1, description="width*height above this is rejected before decoding")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1, description="request bodies above this are rejected (413)")
    max_stream_inflight: int = Field(16, ge=1, description="items in flight per gRPC bidirectional stream")
    max_inflight_requests: int = Field(
        256, ge=1, description="requests handled at once per protocol; more get 429 / RESOURCE_EXHAUSTED before "
        "their body is read (bounds memory: at most this many bodies of max_body_bytes)"
    )
    default_quality: int = Field(50, ge=0, le=100)
    # security
    api_key: SecretStr | None = Field(None, description="if set, required as 'Authorization: Bearer <key>' or x-api-key")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # lifecycle
    drain_timeout_s: float = Field(20.0, ge=0, description="on SIGTERM: time to finish queued/in-flight requests")
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _tls_pair(self) -> "Settings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    def ort_providers(self) -> list[str] | None:
        """Provider list for onnxruntime (None = the codec's default: CUDA if available, else CPU)."""
        if self.providers == "cpu":
            return ["CPUExecutionProvider"]
        if self.providers == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if self.providers == "tensorrt":
            from saic.codec.model import available_providers  # onnxruntime: only when models load

            return available_providers(tensorrt=True)
        return None

    def model_options(self) -> dict:
        """Keyword arguments for every CodecModel the server loads."""
        return {"providers": self.ort_providers(), "threads": self.threads, "max_pixels": self.max_image_pixels,
                "precision": self.precision, "tile": self.tile, "spinning": self.spinning}
