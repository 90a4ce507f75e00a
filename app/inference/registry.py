"""The model registry: public names (falcon, aurora, ghost) -> warmed pipelines, built from config."""

from __future__ import annotations

from app.inference.engine import Engine, create_engine
from app.inference.pipeline import Pipeline
from app.inference.weights import verify
from app.settings import Settings


class ModelRegistry:
    def __init__(self, pipelines: dict[str, Pipeline]) -> None:
        self._pipelines = pipelines

    @classmethod
    def load(cls, settings: Settings) -> "ModelRegistry":
        """Verify every weights file the models use, create one engine per file, warm each pipeline.

        Raises WeightsError (missing file, checksum mismatch) so the service refuses to start.
        """
        engines: dict[str, Engine] = {}
        for spec in settings.models.values():
            if spec.weights not in engines:
                verify(settings.weights_path(spec.weights), settings.weights[spec.weights])
                engines[spec.weights] = create_engine(settings, spec.weights)
        pipelines = {
            name: Pipeline(name, spec, engines[spec.weights], settings.png_compress_level, settings.png_fast)
            for name, spec in settings.models.items()
        }
        for pipeline in pipelines.values():
            pipeline.warm()
        return cls(pipelines)

    def get(self, name: str) -> Pipeline | None:
        return self._pipelines.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._pipelines)
