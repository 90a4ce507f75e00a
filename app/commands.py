"""What the operator commands do (`python -m app serve | probe | keys ... | models ... | docs`); their
arguments and help texts are in app/cli.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from limits import parse as parse_limit

from app.inference.weights import WeightsError, fetch, verify
from app.settings import Settings
from app.store import Account, InsufficientCredits, Store, UnknownAccount, open_store

# Per command. Far above any real top-up, far below what 64-bit counters (SQLite, Redis) hold.
MAX_CREDITS = 1_000_000_000


def credit_amount(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of credits from `minimum` to MAX_CREDITS, else a one-line error."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or not minimum <= int(text) <= MAX_CREDITS:
            raise argparse.ArgumentTypeError(f"{text[:30]!r} is not a whole number from {minimum} to {MAX_CREDITS}")
        return int(text)

    return parse


MAX_LABEL = 100


def label_text(text: str) -> str:
    """An argparse type: an account's label, up to MAX_LABEL printable characters."""
    text = text.strip()
    if len(text) > MAX_LABEL or not text.isprintable():
        raise argparse.ArgumentTypeError(f"a label is up to {MAX_LABEL} printable characters on one line")
    return text


def _run_with_store(settings: Settings, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = open_store(settings)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _account_json(account: Account, settings: Settings) -> dict[str, Any]:
    return {
        "account_id": account.id,
        "label": account.label,
        "plan": account.plan,
        "credits": account.credits,
        "unlimited": account.unlimited,
        # The limit in force: the account's own, else its plan's.
        "rate_limit": account.rate_limit or settings.plan_for(account.plan).rate_limit,
        "rate_limit_from": "account" if account.rate_limit else "plan",
        "revoked": account.revoked,
    }


def _check_plan_and_rate(settings: Settings, plan: str | None, rate: str | None) -> None:
    if plan is not None and plan not in settings.plans:
        sys.exit(f"unknown plan {plan!r}; plans: {', '.join(settings.plans)}")
    if rate is not None:
        try:
            parse_limit(rate)
        except ValueError:
            sys.exit(f"invalid rate {rate!r}; write it like 1000/minute")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from app.http.logs import logging_config
    from app.http.server import server_options
    from app.http.shutdown import DrainingServer
    from app.inference.engine import missing_runtime
    from app.main import create_app

    if problem := missing_runtime(settings):
        sys.exit(problem)  # a plain install without [cpu]/[gpu]: one line, no traceback
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=logging_config(settings.log_level),
        log_level=settings.log_level,
        access_log=False,  # app.http.middleware writes the JSON access log, with request ids
        # After the drain deadline: a last second for responses being written, then cancel.
        timeout_graceful_shutdown=1,
        **server_options(settings),  # head limits, head deadline, keep-alive, connection cap (app/http/server.py)
    )
    server = DrainingServer(config, app.state.drain, settings.drain_delay_s, settings.shutdown_timeout_s)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as `uvicorn.run` does: a supervisor must see that it failed


def cmd_probe(args: argparse.Namespace, settings: Settings) -> None:
    """Exit 0 when the local server answers 200 on the path: the container HEALTHCHECK."""
    url = f"http://127.0.0.1:{args.port or settings.port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError as err:
        sys.exit(f"{url}: {err}")
    if status != 200:
        sys.exit(f"{url}: HTTP {status}")


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> None:
    plan = args.plan or settings.default_plan
    _check_plan_and_rate(settings, plan, args.rate)
    account, key = _run_with_store(
        settings,
        lambda s: s.create_account(
            credits=args.credits or 0, plan=plan, rate_limit=args.rate, label=args.label, unlimited=args.unlimited
        ),
    )
    named = f" ({account.label})" if account.label else ""
    funds = "unlimited (not charged)" if account.unlimited else f"{account.credits} credits"
    print(f"account {account.id}{named}, plan {plan}, {funds}. The key is shown once:", file=sys.stderr)
    print(key)


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> None:
    for account in _run_with_store(settings, lambda s: s.list_accounts()):
        print(json.dumps(_account_json(account, settings)))


def account_command(fn: Callable[[Store, argparse.Namespace], Awaitable[Any]]) -> Callable[..., None]:
    def command(args: argparse.Namespace, settings: Settings) -> None:
        try:
            result = _run_with_store(settings, lambda s: fn(s, args))
        except UnknownAccount:
            sys.exit(f"no account {args.account_id!r}")
        if result is not None:
            print(result)

    return command


async def revoke_account(store: Store, args: argparse.Namespace) -> str:
    await store.revoke(args.account_id)
    return f"revoked {args.account_id}"


async def grant_credits(store: Store, args: argparse.Namespace) -> int:
    return await store.adjust_credits(args.account_id, args.amount, "grant")


async def deduct_credits(store: Store, args: argparse.Namespace) -> int:
    try:
        return await store.adjust_credits(args.account_id, -args.amount, "deduct", clamp=args.clamp)
    except InsufficientCredits as err:
        sys.exit(
            f"{args.account_id} has {err.balance} credits: deducting {err.needed} would go below zero. "
            "Nothing changed; --clamp deducts down to 0."
        )


async def rotate_key(store: Store, args: argparse.Namespace) -> str:
    account = await store.get_account(args.account_id)
    if account is None:
        raise UnknownAccount(args.account_id)
    if account.revoked:
        sys.exit(f"{args.account_id} is revoked: its keys stay refused (create a new account instead)")
    key = await store.rotate_key(args.account_id)
    print(f"{args.account_id}: new key; the old one is refused from now on. The key is shown once:", file=sys.stderr)
    return key


async def set_label(store: Store, args: argparse.Namespace) -> str:
    await store.set_label(args.account_id, args.label or None)
    return f"{args.account_id}: " + (f"label {args.label!r}" if args.label else "no label")


def cmd_keys_set_plan(args: argparse.Namespace, settings: Settings) -> None:
    _check_plan_and_rate(settings, args.plan, args.rate)

    async def op(store: Store, a: argparse.Namespace) -> str:
        await store.set_plan(a.account_id, a.plan, a.rate)
        return f"{a.account_id}: plan {a.plan}, rate {a.rate or 'from plan'}"

    account_command(op)(args, settings)


def cmd_models_fetch(args: argparse.Namespace, settings: Settings) -> None:
    names = args.names or sorted({m.weights for m in settings.models.values()})
    failed = False
    for name in names:
        spec = settings.weights.get(name)
        if spec is None:
            sys.exit(f"unknown weights {name!r}; known: {', '.join(settings.weights)}")
        try:
            fetch(name, spec, settings.models_dir)
        except WeightsError as err:
            print(f"error: {err}", file=sys.stderr)
            failed = True
    if failed:
        sys.exit(1)
    _make_int8(settings, names, args.force_int8)


def _make_int8(settings: Settings, names: list[str], force: bool) -> None:
    """The INT8 networks of the fetched weights, at every side the models serve them (quantization.py)."""
    import importlib.util

    from app.inference import quantization

    wanted = [n for n in names if quantization.recipe_for(n) is not None and quantization.served_sides(settings, n)]
    for name in names:
        if name not in wanted and name in quantization.NO_RECIPE:
            print(f"{name}: stays in native precision: {quantization.NO_RECIPE[name]}")
    if not wanted:
        return
    if settings.precision == "native":
        print("precision is native: no INT8 networks made")
        return
    missing = [m for m in ("nncf", "skimage") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"INT8 networks not made: {', '.join(missing)} not installed (pip install 'cutout[quantize]'; "
            "scripts/setup does it); the service runs these weights in native precision"
        )
        return
    for name in wanted:
        for side in quantization.served_sides(settings, name):
            quantization.make_int8(settings, name, side, force=force)


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> None:
    for name, model in settings.models.items():
        path = settings.weights_path(model.weights)
        try:
            verify(path, settings.weights[model.weights])
            state = "ok"
        except WeightsError as err:
            state = str(err)
        about = f"  ({model.description})" if model.description else ""
        print(f"{name:8} weights={model.weights:24} cost={model.cost} mask_cost={model.mask_cost}  {state}{about}")


def cmd_docs(args: argparse.Namespace, settings: Settings) -> None:
    from app import docgen

    if args.check:
        stale = docgen.stale()
        if stale:
            sys.exit(f"stale generated sections in {', '.join(p.name for p in stale)}: run `python -m app docs`")
        return
    print("generated sections " + ("updated" if docgen.update() else "already current"))


def cmd_batch(args: argparse.Namespace, settings: Settings) -> None:
    import os

    from app.jobs.client import ClientError, run_batch

    key = args.key or os.environ.get("CUTOUT_API_KEY", "")
    if not key:
        sys.exit("give the API key with --key or CUTOUT_API_KEY")
    fields = {"model": args.model} if args.model else {}
    if args.mask:
        fields["output"] = "mask"
    try:
        failed = run_batch(Path(args.folder), Path(args.out), args.url.rstrip("/"), key, fields, args.chunk)
    except ClientError as err:
        sys.exit(f"error: {err}")
    if failed:
        sys.exit(f"{failed} photo(s) failed (listed above); the others are in {args.out}")


def cmd_keys_webhook_secret(args: argparse.Namespace, settings: Settings) -> None:
    from app.jobs.model import webhook_secret
    from app.jobs.service import open_engine

    async def secret(store: Store) -> str:
        if await store.get_account(args.account_id) is None:
            raise UnknownAccount(args.account_id)
        engine = open_engine(settings)
        try:
            return webhook_secret(await engine.master_key(), args.account_id)
        finally:
            await engine.close()

    try:
        print(_run_with_store(settings, secret))
    except UnknownAccount:
        sys.exit(f"no account {args.account_id!r}")
