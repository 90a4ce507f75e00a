"""GET /v2/account: the caller's balance, plan and limits."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.accounts.auth import authenticate
from app.inference.pipeline import Pipeline
from app.removal.job import PRICED_OPTIONS
from app.services import services


def _model_prices(pipeline: Pipeline) -> dict[str, object]:
    """Cost at the model's default operating resolution, and at each one it accepts."""
    default = pipeline.price()
    return {
        "cost": default.cost,
        "mask_cost": default.mask_cost,
        "operating_resolution": pipeline.resolutions[0],
        "resolutions": {r: pipeline.price(r).model_dump() for r in pipeline.resolutions},
    }


async def account(request: Request) -> JSONResponse:
    svc = services(request)
    acct = await authenticate(request, svc.store, svc.limits)
    rate = await svc.limits.peek(acct)  # reading the balance does not spend the rate limit
    return JSONResponse(
        {
            "account_id": acct.id,
            "credits": acct.credits,
            "plan": acct.plan,
            "rate_limit": svc.limits.limit_for(acct),
            "rate_limit_remaining": rate.remaining,
            "rate_limit_reset": int(rate.reset_at),
            "models": {
                name: _model_prices(p) for name in svc.registry.names if (p := svc.registry.get(name)) is not None
            },
            # Extra credits per option, added to the model's cost when the request uses it.
            "option_costs": {name: svc.settings.option_costs.get(name, 0) for name in PRICED_OPTIONS},
            # Standard Webhooks secret that signs this account's webhooks (app/jobs/webhooks.py).
            **({"webhook_secret": await svc.jobs.secret(acct.id)} if svc.jobs is not None else {}),
        },
        headers=rate.headers(),
    )
