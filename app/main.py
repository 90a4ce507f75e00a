"""create_app: routes, middleware, lifespan. The only place where the parts are wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route

from app.accounts import idempotency
from app.accounts.admission import AccountSlots
from app.accounts.auth import API_KEY_HEADER, X_API_KEY_HEADER
from app.accounts.limits import RateLimits
from app.http import metrics
from app.http.errors import EXCEPTION_HANDLERS
from app.http.middleware import AliasRoute, BodyLimit, Cors, RequestContext, relative_slash_redirects
from app.http.shutdown import Drain, DrainGate
from app.http.unsent import UNSENT
from app.inference.gate import WorkerGate
from app.inference.memory import MemoryBudget, release_large_frees_to_os, resident_bytes
from app.inference.registry import ModelRegistry
from app.jobs import routes as job_routes
from app.jobs.service import JobService, open_engine
from app.openapi import document
from app.routes import account, health, pages, rembg
from app.services import Services
from app.settings import Settings, get_settings
from app.store import open_store

log = logging.getLogger("cutout")

SWEEP_INTERVAL_S = 60.0
# At shutdown, how long requests cancelled by uvicorn get to land their refunds before the store closes.
SETTLE_TIMEOUT_S = 5.0


async def _sweep_forever(svc: Services) -> None:
    # Often enough that a held reservation is refunded soon after it goes stale.
    interval = min(SWEEP_INTERVAL_S, svc.settings.reservation_ttl_s / 2)
    while True:
        try:
            refunded = await svc.store.sweep_stale(svc.settings.reservation_ttl_s)
            if refunded:
                log.warning("refunded %d stale reservations", refunded)
        except Exception:
            log.exception("reservation sweep failed")
        await asyncio.sleep(interval)


def _memory_budget(settings: Settings, registry: ModelRegistry) -> MemoryBudget | None:
    """What jobs may hold: the configured budget less what the process holds at rest (models loaded)."""
    if not settings.memory_budget_mb:
        return None
    at_rest = resident_bytes()
    budget = MemoryBudget(settings.memory_budget_mb * 1024 * 1024 - at_rest, settings.memory_wait_s)
    log.info(
        "memory budget %d MiB: %d MiB at rest, %d MiB for jobs",
        settings.memory_budget_mb,
        at_rest >> 20,
        budget.capacity >> 20,
    )
    if budget.capacity <= 0:
        log.warning("memory_budget_mb is below the RSS at rest: jobs run one at a time")
    # Answers their clients have not read yet hold memory too (app/http/unsent.py), and so does INT8's
    # recheck network while it is loaded (app/inference/recheck.py).
    recheck = registry.recheck
    budget.outside = (lambda: UNSENT.bytes + recheck.resident_bytes) if recheck is not None else (lambda: UNSENT.bytes)
    UNSENT.on_release = budget.wake
    return budget


def _services(settings: Settings, registry: ModelRegistry) -> Services:
    svc = Services(
        settings=settings,
        store=open_store(settings),
        registry=registry,
        gate=WorkerGate(settings.workers, settings.queue_size, _memory_budget(settings, registry)),
        limits=RateLimits(settings),
        slots=AccountSlots(settings),
    )
    svc.jobs = JobService(settings, open_engine(settings), svc.store, registry, svc.gate)
    return svc


def _lifespan(settings: Settings, drain: Drain) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        release_large_frees_to_os()
        # Loading refuses to start on missing or corrupt weights (WeightsError says what to do).
        registry = await asyncio.to_thread(ModelRegistry.load, settings)
        svc = _services(settings, registry)
        app.state.services = svc
        metrics.watch(svc.gate, drain)
        sweeper = asyncio.create_task(_sweep_forever(svc))
        assert svc.jobs is not None
        svc.jobs.start()
        log.info("ready: models %s, %d workers", ", ".join(svc.registry.names), settings.workers)
        try:
            yield
        finally:
            sweeper.cancel()
            await svc.jobs.stop()
            await drain.settled(SETTLE_TIMEOUT_S)
            svc.gate.shutdown()
            await svc.jobs.engine.close()
            await svc.store.close()

    return lifespan


def _routes(settings: Settings) -> list[BaseRoute]:
    return [
        # Both spellings answer directly: a redirected POST loses its body in many clients. The
        # documented one (app/openapi/document.py) names the route in the logs and the metrics.
        Route("/", pages.index, methods=["GET"]),
        Route("/v2/rembg/", rembg.remove_background, methods=["POST"]),
        AliasRoute("/v2/rembg", "/v2/rembg/", rembg.remove_background, methods=["POST"]),
        Route("/v2/rembg/mask/", rembg.remove_background_mask, methods=["POST"]),
        AliasRoute("/v2/rembg/mask", "/v2/rembg/mask/", rembg.remove_background_mask, methods=["POST"]),
        Route("/v2/account", account.account, methods=["GET"]),
        Route("/v2/jobs/{job_id}", job_routes.job, methods=["GET", "DELETE"]),
        Route("/v2/jobs/{job_id}/result", job_routes.get_result, methods=["GET"]),
        Route("/v2/batches", job_routes.create_batch, methods=["POST"]),
        Route("/v2/batches/", job_routes.create_batch, methods=["POST"]),
        Route("/v2/batches/{batch_id}", job_routes.batch, methods=["GET", "DELETE"]),
        Route("/v2/batches/{batch_id}/zip", job_routes.batch_zip, methods=["GET"]),
        AliasRoute("/v2/account/", "/v2/account", account.account, methods=["GET"]),
        Route("/health", health.health, methods=["GET"]),
        Route("/ready", health.ready, methods=["GET"]),
        Route("/openapi.json", document.endpoint(settings), methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/docs", pages.docs, methods=["GET"]),
        Route("/demo", pages.demo, methods=["GET"]),
        Mount("/static/swagger-ui", pages.swagger_ui_files()),
        Mount("/static", pages.static_files()),
    ]


def _cors(settings: Settings) -> Middleware:
    return Middleware(
        Cors,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=[API_KEY_HEADER, X_API_KEY_HEADER, "Authorization", "Content-Type", idempotency.HEADER, "Prefer"],
        expose_headers=[
            "X-Request-ID",
            "X-Credits-Charged",
            "X-Credits-Remaining",
            "X-Model",
            "X-Operating-Resolution",
            "X-Mask-Confidence",
            "X-Model-Escalated",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "Retry-After",
            idempotency.REPLAYED_HEADER,
            "Location",
            "Preference-Applied",
        ],
        max_age=600,
    )


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    drain = Drain()  # `python -m app serve` starts it on SIGTERM (app.http.shutdown)
    middleware = [
        Middleware(
            RequestContext,
            max_headers=settings.max_headers,
            trusted_proxies=settings.trusted_proxies,
            proxy_header=settings.proxy_header,
        ),
        _cors(settings),
        Middleware(DrainGate, drain=drain),
        Middleware(
            BodyLimit,
            max_bytes=settings.max_body_bytes,
            read_timeout_s=settings.body_timeout_s,
            deadline_s=settings.body_deadline_s,
        ),
    ]
    app = Starlette(
        routes=_routes(settings),
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=_lifespan(settings, drain),
    )
    relative_slash_redirects(app.router)
    app.state.drain = drain
    return app
