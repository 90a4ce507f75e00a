"""One typed settings object: environment (CUTOUT_*) over the TOML files in config/.

The service knobs have their defaults here, in `Settings` (config/cutout.toml
sets only what a deployment changes); config/models.toml holds the weights and
the public model names, config/plans.toml the plans and the default plan (their
shapes: app/specs.py).
CUTOUT_CONFIG_DIR points at another config folder (tests and deployments use
it); a file that folder lacks is read from the defaults. An installed wheel
carries the default config inside the package as app/config/ (pyproject.toml maps it).
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from app.specs import AutoSpec, ModelSpec, PlanSpec, WeightsSpec, check_models


def _default_config_dir() -> Path:
    # An installed wheel has it as package data; a source checkout keeps config/ beside app/.
    packaged = Path(str(files("app") / "config"))
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "config"


DEFAULT_CONFIG_DIR = _default_config_dir()
CONFIG_FILES = ("cutout.toml", "models.toml", "plans.toml")


class Settings(BaseSettings):
    """Every service setting, its default and what it means: the one home of each.

    The README's configuration table is generated from the fields (`python -m app docs`);
    config/cutout.toml holds only what an operator changes. A field without a description
    is not a service knob: it comes from config/models.toml or config/plans.toml.
    """

    model_config = SettingsConfigDict(env_prefix="CUTOUT_", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="embedded store (SQLite) location")
    models_dir: Path = Field(
        Path("./models"), description="weights location (`python -m app models fetch` writes there)"
    )
    redis_url: str = Field(
        "",
        description="Redis (`redis://host:6379/0`) for accounts, credits, idempotency and limits shared by replicas; "
        "empty: embedded SQLite and in-process limits",
    )
    # The sweeper refunds a reservation this old and frees its Idempotency-Key: a request cut off by
    # a crash is retryable under its key after ttl + one sweep interval (min(60 s, ttl/2)) = 180 s.
    reservation_ttl_s: float = Field(
        120.0,
        gt=0,
        description="held credits older than this are refunded (crash/outage recovery), freeing their "
        "`Idempotency-Key`; keep it above `memory_wait_s` + `processing_timeout_s`",
    )
    idempotency_window_s: float = Field(
        86400.0, gt=0, description="how long a completed `Idempotency-Key` is remembered"
    )
    auth_failure_limit: str = Field("30/minute", description="wrong API keys per client address before 429")

    host: str = Field("0.0.0.0", description="address `python -m app serve` listens on")
    port: int = Field(8000, description="port `python -m app serve` listens on")

    workers: int = Field(2, ge=1, description="requests processed at once (decode, inference, encode)")
    queue_size: int = Field(16, ge=0, description="requests waiting beyond that before 503 `server_busy`")
    runtime: Literal["auto", "openvino", "onnxruntime"] = Field(
        "auto",
        description="`openvino`, `onnxruntime`, or `auto`: onnxruntime when `providers` names an accelerator, "
        "else OpenVINO when installed",
    )
    intra_op_threads: int = Field(0, ge=0, description="inference threads (0: one per core this process may use)")
    concurrent_inferences: int = Field(
        1, ge=1, description="inferences running at once per weights file (each holds its own activations)"
    )
    mixed_precision: bool = Field(
        True,
        description="OpenVINO on a CPU with native bf16: the heaviest convolutions run in bf16, the rest in fp32 "
        "(see docs/performance.md); `false`: fp32 throughout",
    )
    # int8 by default: native's masks (the photos INT8 leaves undecided run again in native, loaded
    # on demand: app/inference/recheck.py) in less time, and with less memory at rest than native on
    # either kind of CPU: docs/performance.md, INT8.
    precision: Literal["int8", "native"] = Field(
        "int8",
        description="OpenVINO: `int8` runs the INT8 networks `python -m app models fetch` makes with the quantize "
        "extra, where they exist and are current, else native with a log line; photos INT8 leaves undecided run "
        "again in native (docs/performance.md); `native` runs fp32, bf16 where the CPU has it (`mixed_precision`)",
    )
    recheck_idle_s: float = Field(
        30.0,
        gt=0,
        description="precision int8: a native network loaded to recheck a photo INT8 leaves undecided is released "
        "after this long without one (one is loaded at a time: docs/performance.md, INT8)",
    )
    compiled_cache: bool = Field(
        True,
        description="OpenVINO keeps each network's prepared graph, and compiled networks, in `models_dir`/ov-cache: "
        "later starts read them instead of preparing or compiling again (replicas may share it)",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="onnxruntime execution providers in order (CUDA: the `gpu` extra)",
    )

    max_body_bytes: int = Field(25 * 1024 * 1024, description="request body limit, enforced while streaming")
    max_pixels: int = Field(50_000_000, description="image size limit, checked on the header")
    max_side: int = Field(12_000, description="longest side accepted, checked on the header")
    body_timeout_s: float = Field(30.0, gt=0, description="an upload pausing this long gets 408")
    body_deadline_s: float = Field(300.0, gt=0, description="an upload still arriving after this gets 408")
    processing_timeout_s: float = Field(60.0, description="per-request processing deadline (503 `processing_timeout`)")
    memory_budget_mb: int = Field(
        2560,
        ge=0,
        description="the process's memory budget: jobs' estimated peaks (`config/models.toml`) must fit in it above "
        "the memory at rest after start-up, else they wait; keep it under the container's limit; 0: admission by count only",
    )
    memory_wait_s: float = Field(10.0, ge=0, description="how long a job waits for memory before 503 `server_busy`")
    max_head_bytes: int = Field(
        16384, ge=1024, description="request line + headers size before 431 `request_head_too_large`"
    )
    max_headers: int = Field(100, ge=10, description="header count before 431 `request_head_too_large`")
    head_timeout_s: float = Field(
        10.0, gt=0, description="no complete request head this long after opening (or the last response): closed"
    )
    send_timeout_s: float = Field(
        30.0, gt=0, description="a client that reads nothing of its answer this long has its connection closed"
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(1000, ge=1, description="open connections; past it new ones are closed at once")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description='proxies (JSON list of addresses or networks, e.g. `["10.0.0.0/8"]`) whose `proxy_header` '
        "names the client; empty: the peer address is the client (anyone can write those headers)",
    )
    proxy_header: Literal["x-forwarded-for", "forwarded"] = Field(
        "x-forwarded-for",
        description="the one header a trusted proxy writes the client into; the other is ignored, since a proxy "
        "passes a client's own copy of the header it does not write through untouched",
    )
    drain_delay_s: float = Field(
        5.0,
        ge=0,
        description="after SIGTERM, how long new requests are still served while `/ready` says 503 "
        "(load balancers take the replica out meanwhile)",
    )
    shutdown_timeout_s: float = Field(
        25.0,
        ge=0,
        description="from SIGTERM, how long the drain (delay included) waits for requests in flight before "
        "cancelling them; keep it under the orchestrator's kill timeout",
    )

    default_model: str = Field("falcon", description="the model of a request that names none")
    png_fast: bool = Field(
        True, description="encode cut-outs with fpng (faster, larger files: docs/performance.md); `false`: Pillow"
    )
    png_compress_level: int = Field(
        1, ge=0, le=9, description="Pillow's zlib level for masks (and cut-outs when `png_fast` is off)"
    )
    cors_origins: list[str] = Field(default_factory=lambda: ["*"], description="browser origins allowed (JSON list)")
    fetch_enabled: bool = Field(
        True, description="`false`: `image_url` and `webhook_url` are refused: the server makes no outbound request"
    )
    fetch_allow: list[str] = Field(
        default_factory=list,
        description="`image_url` fetches and `webhook_url` calls: networks (JSON list of CIDRs) that may be reached "
        "although loopback, private, link-local or reserved",
    )
    fetch_connect_timeout_s: float = Field(5.0, gt=0, description="`image_url`: connecting to the host")
    fetch_timeout_s: float = Field(20.0, gt=0, description="`image_url`: the whole fetch, redirects included")
    job_ttl_s: float = Field(
        86400.0,
        gt=0,
        description="asynchronous jobs and batches: results are kept this long after a job ends; a job not run "
        "this long after its submission expires (refunded)",
    )
    job_lease_s: float = Field(
        60.0,
        gt=0,
        description="a running job whose replica stopped renewing its claim this long (it died) is run again by "
        "another replica, or by itself after a restart",
    )
    job_workers: int = Field(
        1, ge=0, description="asynchronous jobs run at once per replica, only while no synchronous request is; 0: none"
    )
    job_idle_s: float = Field(
        0.25,
        ge=0,
        description="an asynchronous job starts only after this long without a synchronous request in a worker "
        "(one arriving stops a running job at its next step; it runs again later)",
    )
    batch_max_items: int = Field(100, ge=1, description="items one `POST /v2/batches` may hold")
    webhook_timeout_s: float = Field(10.0, gt=0, description="one webhook delivery attempt, connecting included")
    webhook_backoff_s: float = Field(
        5.0, gt=0, description="wait before a failed webhook's first retry; it doubles with each retry (at most 10 min)"
    )
    webhook_retry_s: float = Field(
        3600.0, gt=0, description="how long a failed webhook is retried before it is recorded as failed"
    )
    log_level: str = Field("info", description="`info` writes a JSON access line per request")
    # Extra credits per option (config/models.toml [option_costs]), added to the model's cost.
    option_costs: dict[str, int] = Field(default_factory=dict)

    weights: dict[str, WeightsSpec] = Field(default_factory=dict)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    auto: AutoSpec | None = None  # config/models.toml [auto]; None: no model=auto
    default_plan: str  # config/plans.toml
    plans: dict[str, PlanSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        check_models(self.models, self.weights, self.auto, self.default_model)
        for cidr in self.fetch_allow:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        if self.default_plan not in self.plans:
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
        toml_files = [
            config_dir / name if (config_dir / name).exists() else DEFAULT_CONFIG_DIR / name for name in CONFIG_FILES
        ]
        toml = TomlConfigSettingsSource(settings_cls, toml_file=[p for p in toml_files if p.exists()])
        return (init_settings, env_settings, toml)

    @property
    def store_path(self) -> Path:
        return self.data_dir / "cutout.sqlite3"

    def plan_for(self, name: str) -> PlanSpec:
        """The named plan; an account on a plan the config no longer has gets the default plan."""
        return self.plans.get(name) or self.plans[self.default_plan]  # the default exists (checked)

    def only_models(self, names: list[str] | tuple[str, ...]) -> Settings:
        """These settings with only the named models loaded, and the models they join (`union`).
        "auto" loads auto's two models; without both, auto is off."""
        wanted = [name for name in names if name != "auto"]
        if "auto" in names and self.auto is not None:
            wanted += [self.auto.first, self.auto.escalate_to]
        chosen = {name: self.models[name] for name in wanted}
        for spec in list(chosen.values()):
            if spec.union is not None:
                chosen.setdefault(spec.union, self.models[spec.union])
        auto = self.auto if self.auto is not None and {self.auto.first, self.auto.escalate_to} <= set(chosen) else None
        return self.model_copy(update={"models": chosen, "auto": auto})

    def weights_path(self, weights_name: str) -> Path:
        return self.models_dir / self.weights[weights_name].file


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
