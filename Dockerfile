# syntax=docker/dockerfile:1
# Cutout API image. CPU (default) or GPU (onnxruntime-gpu on CUDA 12 + cuDNN 9):
#   docker build -t cutout .
#   docker build --build-arg VARIANT=gpu -t cutout:gpu .
# tests/test_deploy.py runs this file's build and run steps (the CPU variant) outside
# Docker, as a non-root user, so every command here is one the test suite exercises.
ARG VARIANT=cpu

FROM python:3.11-slim-bookworm AS base-cpu

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base-gpu
# CUDA images have no Python; Ubuntu 24.04's python3 is 3.12 (pinned by the base image's tag).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV CUTOUT_PROVIDERS='["CUDAExecutionProvider", "CPUExecutionProvider"]'

# Build: virtualenv, dependencies and the model weights, fetched and checksum-verified
# (a mismatch fails the build), with the same script the tests and CI run.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY config ./config
COPY scripts ./scripts
RUN scripts/setup --service --${VARIANT}

# Runtime: the built /app without pip's caches or the build's downloads, as a non-root user.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
WORKDIR /app
COPY --from=build /app /app
RUN mkdir -p /data && chown 10001:10001 /data
ENV CUTOUT_DATA_DIR=/data \
    CUTOUT_MODELS_DIR=/app/models \
    CUTOUT_PORT=8000 \
    CUTOUT_WORKERS=2 \
    CUTOUT_SHUTDOWN_TIMEOUT_S=25 \
    PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/app/.venv/bin/python", "-m", "app", "probe", "--path", "/ready"]
CMD ["/app/.venv/bin/python", "-m", "app", "serve"]
