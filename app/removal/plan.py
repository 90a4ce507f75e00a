"""The steps of a rembg request that the synchronous route and the job runner share:
the model, the operating resolution, the price and the memory admission.

One home for each: app/routes/rembg.py answers at once with them, app/jobs/ reserves
at submission and runs later with the very same functions.
"""

from __future__ import annotations

from app.errors import invalid_parameter
from app.imaging.codec import ImageInfo
from app.inference.pipeline import Output, Pipeline
from app.inference.registry import ModelRegistry
from app.removal.options import Options
from app.settings import Settings


def pipeline_for(registry: ModelRegistry, settings: Settings, model: str | None) -> tuple[str, Pipeline]:
    """The model asked for (default: settings.default_model) and its pipeline, or a 400 naming those there are."""
    name = settings.default_model if model is None else model
    pipeline = registry.get(name)
    if pipeline is None:
        names = ", ".join(registry.names)
        raise invalid_parameter(f"Unknown model {name[:40]!r}. Choose one of: {names}.")
    return name, pipeline


def operating_resolution(pipeline: Pipeline, value: str | None) -> str:
    """The resolution asked for (default: the model's own), or a 400 naming those the model accepts."""
    if value is None:
        return pipeline.resolutions[0]
    if value.strip().lower() in pipeline.resolutions:
        return value.strip().lower()
    accepted = ", ".join(pipeline.resolutions)
    raise invalid_parameter(
        f"Model {pipeline.name!r} cannot run at operating_resolution {value[:40]!r}; it accepts: {accepted}."
    )


def options_cost(settings: Settings, chosen: Options, *, image_url: bool) -> int:
    """Credits the options add to the model's cost (config/models.toml [option_costs])."""
    used = {
        "image_url": image_url,
        "bg_blur": chosen.bg_blur is not None,
        "bg_image": chosen.bg_image is not None,
        "shadow": chosen.shadow,
    }
    return sum(settings.option_costs.get(name, 0) for name, on in used.items() if on)


def cost(pipeline: Pipeline, resolution: str, output: Output, extra_cost: int) -> int:
    """What one result costs: the model's price at the resolution for the output, plus its options' cost."""
    price = pipeline.price(resolution)
    return (price.mask_cost if output == "mask" else price.cost) + extra_cost


def asked_model(model_name: str, pipeline: Pipeline, resolution: str) -> str:
    """The model as the Idempotency-Key fingerprint names it: another resolution is another request."""
    return model_name if resolution == pipeline.resolutions[0] else f"{model_name}@{resolution}"


def memory_bytes(pipeline: Pipeline, info: ImageInfo, options_bytes: int) -> int:
    """A job's estimated peak for the memory admission: the model's measured cost for the image's
    pixels, plus what its options add (a background image's decode)."""
    return pipeline.spec.peak_bytes(info.width * info.height) + options_bytes
