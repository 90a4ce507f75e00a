"""What a request costs: the one home of model and option prices.

The figures are data (config/models.toml: each model's `cost` and `mask_cost` at its own
operating resolution, its other `resolutions` with theirs, and `[option_costs]`); this module
is the only code that reads them to price a request or to show the price list.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal

from app.settings import Settings
from app.specs import ModelSpec, Price

# Options that cost credits on top of the model, when the request uses them.
PRICED_OPTIONS = ("image_url", "bg_blur", "bg_image", "shadow")

Output = Literal["cutout", "mask"]


def model_price(spec: ModelSpec, resolution: str) -> Price:
    return spec.prices()[resolution]


def cost(settings: Settings, spec: ModelSpec, resolution: str, output: Output, used: Collection[str]) -> int:
    """Credits for one result: the model's at this resolution, plus each priced option in `used`."""
    price = model_price(spec, resolution)
    extra = sum(settings.option_costs.get(name, 0) for name in PRICED_OPTIONS if name in used)
    return (price.mask_cost if output == "mask" else price.cost) + extra


def costs(
    settings: Settings, runs: Sequence[tuple[ModelSpec, str]], output: Output, used: Collection[str]
) -> list[int]:
    """`cost` for each (model, operating resolution) a request may run: model=auto prices both of its."""
    return [cost(settings, spec, resolution, output, used) for spec, resolution in runs]


def price_list(settings: Settings, specs: dict[str, ModelSpec], resolutions: dict[str, list[str]]) -> dict[str, Any]:
    """GET /v2/account's prices: per model its cost at the default operating resolution and at each
    one it runs at (`resolutions`, the default first), and the extra credits per option."""
    models: dict[str, Any] = {}
    for name, spec in specs.items():
        offered = resolutions[name]
        default = model_price(spec, offered[0])
        models[name] = {
            "cost": default.cost,
            "mask_cost": default.mask_cost,
            "operating_resolution": offered[0],
            "resolutions": {r: model_price(spec, r).model_dump() for r in offered},
        }
    return {"models": models, "option_costs": {name: settings.option_costs.get(name, 0) for name in PRICED_OPTIONS}}


def auto_price(
    settings: Settings, first: ModelSpec, then: ModelSpec, first_resolution: str, then_resolution: str
) -> dict[str, Any]:
    """model=auto's entry in the price list: the first model's price, or the one it escalates to
    when it does (the request reserves the larger and is charged what ran)."""
    assert settings.auto is not None
    plain, escalated = model_price(first, first_resolution), model_price(then, then_resolution)
    return {
        "cost": plain.cost,
        "mask_cost": plain.mask_cost,
        "escalated_cost": escalated.cost,
        "escalated_mask_cost": escalated.mask_cost,
        "runs": settings.auto.first,
        "escalates_to": settings.auto.escalate_to,
        "escalates_below_confidence": settings.auto.below,
    }
