"""GET /v2/account: the caller's balance, plan, limits and the price list."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from app.accounts import pricing
from app.accounts.auth import authenticate
from app.removal import job as planning
from app.services import services


async def account(request: Request) -> JSONResponse:
    svc = services(request)
    acct = await authenticate(request, svc.store, svc.limits)
    rate = await svc.limits.peek(acct)  # reading the balance does not spend the rate limit
    pipelines = {name: p for name in svc.registry.names if (p := svc.registry.get(name)) is not None}
    prices = pricing.price_list(
        svc.settings,
        {name: p.spec for name, p in pipelines.items()},
        {name: p.resolutions for name, p in pipelines.items()},
    )
    auto = svc.settings.auto
    if auto is not None and planning.AUTO in planning.offered(svc.settings, svc.registry):
        first, then = pipelines[auto.first], pipelines[auto.escalate_to]
        prices["models"][planning.AUTO] = pricing.auto_price(
            svc.settings, first.spec, then.spec, first.resolutions[0], then.resolutions[0]
        )
    return JSONResponse(
        {
            "account_id": acct.id,
            "credits": acct.credits,
            "unlimited": acct.unlimited,  # true: requests are not charged, whatever `credits` says
            "plan": acct.plan,
            "rate_limit": svc.limits.limit_for(acct),
            "rate_limit_remaining": rate.remaining,
            "rate_limit_reset": int(rate.reset_at),
            **prices,
            # Standard Webhooks secret that signs this account's webhooks (app/jobs/webhooks.py).
            **({"webhook_secret": await svc.jobs.secret(acct.id)} if svc.jobs is not None else {}),
        },
        headers=rate.headers(),
    )
