"""The model registry: public names (falcon, aurora, ghost) -> warmed pipelines, built from config."""

from __future__ import annotations

import logging

import onnxruntime as ort

from app.inference.pipeline import Pipeline
from app.inference.weights import verify
from app.settings import Settings

log = logging.getLogger("cutout.inference")


def _providers(wanted: list[str]) -> list[str]:
    """Configured providers that this onnxruntime build has, CPU always last as the fallback."""
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available and p != "CPUExecutionProvider"]
    skipped = [p for p in wanted if p not in available]
    if skipped:
        log.warning("execution providers not available, skipped: %s", ", ".join(skipped))
    return [*chosen, "CPUExecutionProvider"]


def create_session(settings: Settings, weights_name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        str(settings.weights_path(weights_name)), options, providers=_providers(settings.providers)
    )


class ModelRegistry:
    def __init__(self, pipelines: dict[str, Pipeline]) -> None:
        self._pipelines = pipelines

    @classmethod
    def load(cls, settings: Settings, warm: bool = True) -> "ModelRegistry":
        """Verify every weights file the models use, create one session per file, warm each pipeline.

        Raises WeightsError (missing file, checksum mismatch) so the service refuses to start.
        """
        sessions: dict[str, ort.InferenceSession] = {}
        for spec in settings.models.values():
            if spec.weights not in sessions:
                verify(settings.weights_path(spec.weights), settings.weights[spec.weights])
                sessions[spec.weights] = create_session(settings, spec.weights)
        pipelines = {
            name: Pipeline(name, spec, sessions[spec.weights], settings.png_compress_level)
            for name, spec in settings.models.items()
        }
        if warm:
            for pipeline in pipelines.values():
                pipeline.warm()
        return cls(pipelines)

    def get(self, name: str) -> Pipeline | None:
        return self._pipelines.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._pipelines)
