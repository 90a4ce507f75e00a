"""The model registry: public names (falcon, aurora, ghost) -> pipelines on warmed engines, built from config."""

from __future__ import annotations

import functools
import logging

import numpy as np

from app.inference.engine import Engine, FixedSize, choose_runtime, create_engine, create_engines
from app.inference.pipeline import Pipeline
from app.inference.recheck import OnDemandEngine, RecheckSlot
from app.inference.weights import verify
from app.settings import Settings
from app.specs import resolution_side

log = logging.getLogger("cutout.inference")


class ModelRegistry:
    def __init__(self, pipelines: dict[str, Pipeline], recheck: RecheckSlot | None = None) -> None:
        self._pipelines = pipelines
        # INT8's native recheck networks, loaded on demand (app/inference/recheck.py).
        self.recheck = recheck

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        """Verify every weights file the models use, create one engine per file and operating
        resolution (models on the same weights share them; the resolutions of one file share its
        weights), run each engine once.

        Raises WeightsError (missing file, checksum mismatch) so the service refuses to start.
        """
        for weights in {spec.weights for spec in settings.models.values()}:
            verify(settings.weights_path(weights), settings.weights[weights])
        wanted: dict[str, dict[str, None]] = {}  # weights -> its resolutions, in the config's order
        for spec in settings.models.values():
            wanted.setdefault(spec.weights, {}).update(dict.fromkeys(spec.prices()))
        engines: dict[tuple[str, str], Engine | None] = {}
        for weights, resolutions in wanted.items():
            made = create_engines(settings, weights, [resolution_side(r) for r in resolutions])
            for resolution in resolutions:
                result = made[resolution_side(resolution)]
                if isinstance(result, FixedSize):
                    log.warning("%s; operating resolution %s is not offered", result, resolution)
                    engines[(weights, resolution)] = None
                else:
                    engines[(weights, resolution)] = result
        slot = RecheckSlot(settings.recheck_idle_s)
        natives = _native_twins(settings, engines, slot)
        _warm(engines, natives)
        pipelines: dict[str, Pipeline] = {}
        # A model another one joins (spec.union) is built first; settings allow no chains.
        for name, spec in sorted(settings.models.items(), key=lambda item: item[1].union is not None):
            chosen = {
                resolution: engine
                for resolution in spec.prices()
                if (engine := engines[(spec.weights, resolution)]) is not None
            }
            if not chosen:
                raise RuntimeError(f"model {name!r}: this runtime can run none of its operating resolutions")
            union = pipelines[spec.union] if spec.union is not None else None
            twins: dict[str, Engine] = {
                r: natives[(spec.weights, r)] for r in spec.int8_recheck_below if (spec.weights, r) in natives
            }
            pipelines[name] = Pipeline(name, spec, chosen, union, twins)
        # The config's order.
        return cls({name: pipelines[name] for name in settings.models}, slot if natives else None)

    def get(self, name: str) -> Pipeline | None:
        return self._pipelines.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._pipelines)


def _warm(engines: dict[tuple[str, str], Engine | None], natives: dict[tuple[str, str], OnDemandEngine]) -> None:
    """A network's first run faults in its buffers (17-30 thousand page faults, a few % more CPU than
    the runs after it: docs/performance.md, "Start-up and memory at rest"); run here, the first
    request does not pay it. Once per engine, not once per pipeline and resolution as before (aurora
    ran IS-Net 1024 twice more): pipelines sharing an engine share it. Each recheck network is
    loaded once, one at a time, then released: that fills the compiled-model cache."""
    for (_, resolution), warming in engines.items():
        if warming is not None:
            side = resolution_side(resolution)
            warming.run(np.zeros((1, 3, side, side), np.float32))
    for twin in natives.values():
        twin.warm()


def _native_twins(
    settings: Settings, engines: dict[tuple[str, str], Engine | None], slot: RecheckSlot
) -> dict[tuple[str, str], OnDemandEngine]:
    """precision int8: a native network for each INT8 one a model rechecks (ModelSpec.int8_recheck_below),
    loaded into `slot` when a photo needs it. Memory: docs/performance.md, INT8."""
    if settings.precision != "int8":
        return {}
    asking = {(spec.weights, resolution) for spec in settings.models.values() for resolution in spec.int8_recheck_below}
    native = settings.model_copy(update={"precision": "native"})
    twins: dict[tuple[str, str], OnDemandEngine] = {}
    for (weights, resolution), engine in engines.items():
        if (weights, resolution) in asking and getattr(engine, "precision", None) == "int8":
            log.info("%s at %s: native too, loaded when a photo INT8 leaves undecided needs it", weights, resolution)
            side = resolution_side(resolution)
            load = functools.partial(create_engine, native, weights, side)
            twins[(weights, resolution)] = OnDemandEngine(
                f"{weights} at {resolution}", load, slot, choose_runtime(native)
            )
    return twins
