# syntax=docker/dockerfile:1
# saic service images (see docs/deploy.md).  Two final targets:
#   docker build --target cpu -t saic:cpu .     # the default (last) target
#   docker build --target gpu -t saic:gpu .     # NVIDIA CUDA 12 + cuDNN 9 runtime, onnxruntime-gpu
# Each builds its virtualenv in a build stage on the same base as its runtime stage (so the
# venv's interpreter path is valid), then copies only the venv and the models into a runtime
# stage without compilers, pip caches or sources.  Both run as an unprivileged user, bake the
# shipped models into /opt/saic/models (mount another folder there, or set SAIC_MODEL_DIR, to
# serve other models) and expose HTTP 8080 (REST, /metrics, /healthz, /readyz) and gRPC 50051.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- CPU build
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# .dockerignore whitelists only what the wheel needs (pyproject, setup.py, service/, protos/).
COPY . .
RUN pip install --no-cache-dir . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---------------------------------------------------------------- GPU build
FROM ${CUDA_IMAGE} AS gpu-build
# onnxruntime-gpu 1.22 is built for CUDA 12.x + cuDNN 9.x, which the CUDA_IMAGE provides.
ARG ORT_GPU_VERSION=1.22.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# The CPU wheel of onnxruntime is a base dependency; swap it for the GPU build (same module).
RUN pip install --no-cache-dir . \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---------------------------------------------------------------- GPU runtime
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 saic \
    && useradd --system --uid 10001 --gid saic --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin saic
COPY --from=gpu-build /opt/venv /opt/venv
COPY models/ /opt/saic/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SAIC_HOST=0.0.0.0 \
    SAIC_HTTP_PORT=8080 \
    SAIC_GRPC_PORT=50051 \
    SAIC_MODEL_DIR=/opt/saic/models \
    SAIC_PROVIDERS=cuda
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 50051
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SAIC_HTTP_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["saic"]
CMD ["serve"]

# ---------------------------------------------------------------- CPU runtime
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 saic \
    && useradd --system --uid 10001 --gid saic --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin saic
COPY --from=cpu-build /opt/venv /opt/venv
COPY models/ /opt/saic/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SAIC_HOST=0.0.0.0 \
    SAIC_HTTP_PORT=8080 \
    SAIC_GRPC_PORT=50051 \
    SAIC_MODEL_DIR=/opt/saic/models \
    SAIC_PROVIDERS=cpu
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 50051
# Liveness only: readiness (/readyz) is the orchestrator's business.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SAIC_HTTP_PORT', '8080'), timeout=2)"]
# Settings come from SAIC_* variables (pydantic-settings); SIGTERM drains for SAIC_DRAIN_TIMEOUT_S.
ENTRYPOINT ["saic"]
CMD ["serve"]
