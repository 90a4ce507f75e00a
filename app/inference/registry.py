"""The model registry: public names (falcon, aurora, ghost) -> warmed pipelines, built from config."""

from __future__ import annotations

import logging

from app.inference.engine import Engine, FixedSize, create_engine
from app.inference.pipeline import Pipeline
from app.inference.weights import verify
from app.settings import Settings
from app.specs import resolution_side

log = logging.getLogger("cutout.inference")


class ModelRegistry:
    def __init__(self, pipelines: dict[str, Pipeline]) -> None:
        self._pipelines = pipelines

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        """Verify every weights file the models use, create one engine per file and operating
        resolution (models on the same weights share them), warm each pipeline.

        Raises WeightsError (missing file, checksum mismatch) so the service refuses to start.
        """
        for weights in {spec.weights for spec in settings.models.values()}:
            verify(settings.weights_path(weights), settings.weights[weights])
        engines: dict[tuple[str, str], Engine | None] = {}
        pipelines: dict[str, Pipeline] = {}
        # A model another one joins (spec.union) is built first; settings allow no chains.
        for name, spec in sorted(settings.models.items(), key=lambda item: item[1].union is not None):
            chosen: dict[str, Engine] = {}
            for resolution in spec.prices():
                key = (spec.weights, resolution)
                if key not in engines:
                    try:
                        engines[key] = create_engine(settings, spec.weights, resolution_side(resolution))
                    except FixedSize as err:
                        log.warning("%s; operating resolution %s is not offered", err, resolution)
                        engines[key] = None
                if (engine := engines[key]) is not None:
                    chosen[resolution] = engine
            if not chosen:
                raise RuntimeError(f"model {name!r}: this runtime can run none of its operating resolutions")
            union = pipelines[spec.union] if spec.union is not None else None
            pipelines[name] = Pipeline(name, spec, chosen, union)
        pipelines = {name: pipelines[name] for name in settings.models}  # the config's order
        for pipeline in pipelines.values():
            pipeline.warm()
        return cls(pipelines)

    def get(self, name: str) -> Pipeline | None:
        return self._pipelines.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._pipelines)
