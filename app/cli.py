"""Operator commands: `python -m app serve | keys ... | models ...`."""

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
from app.settings import Settings, get_settings
from app.store import Account, Store, UnknownAccount, open_store

# Per command. Far above any real top-up, far below what 64-bit counters (SQLite, Redis) hold.
MAX_CREDITS = 1_000_000_000


def credit_amount(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of credits from `minimum` to MAX_CREDITS, else a one-line error."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or not minimum <= int(text) <= MAX_CREDITS:
            raise argparse.ArgumentTypeError(f"{text[:30]!r} is not a whole number from {minimum} to {MAX_CREDITS}")
        return int(text)

    return parse


def _run_with_store(settings: Settings, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = open_store(settings)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _account_json(account: Account) -> dict[str, Any]:
    return {
        "account_id": account.id,
        "plan": account.plan,
        "credits": account.credits,
        "rate_limit": account.rate_limit,
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
        settings, lambda s: s.create_account(credits=args.credits, plan=plan, rate_limit=args.rate)
    )
    print(f"account {account.id}, plan {plan}, {account.credits} credits. The key is shown once:", file=sys.stderr)
    print(key)


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> None:
    for account in _run_with_store(settings, lambda s: s.list_accounts()):
        print(json.dumps(_account_json(account)))


def _account_command(fn: Callable[[Store, argparse.Namespace], Awaitable[Any]]) -> Callable[..., None]:
    def command(args: argparse.Namespace, settings: Settings) -> None:
        try:
            result = _run_with_store(settings, lambda s: fn(s, args))
        except UnknownAccount:
            sys.exit(f"no account {args.account_id!r}")
        if result is not None:
            print(result)

    return command


async def _revoke(store: Store, args: argparse.Namespace) -> str:
    await store.revoke(args.account_id)
    return f"revoked {args.account_id}"


async def _grant(store: Store, args: argparse.Namespace) -> int:
    return await store.adjust_credits(args.account_id, args.amount, "grant")


async def _deduct(store: Store, args: argparse.Namespace) -> int:
    return await store.adjust_credits(args.account_id, -args.amount, "deduct")


def cmd_keys_set_plan(args: argparse.Namespace, settings: Settings) -> None:
    _check_plan_and_rate(settings, args.plan, args.rate)

    async def op(store: Store, a: argparse.Namespace) -> str:
        await store.set_plan(a.account_id, a.plan, a.rate)
        return f"{a.account_id}: plan {a.plan}, rate {a.rate or 'from plan'}"

    _account_command(op)(args, settings)


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
        if docgen.render(docgen.README.read_text()) != docgen.README.read_text():
            sys.exit("README.md is stale: run `python -m app docs`")
        return
    print("README.md " + ("updated" if docgen.update() else "already current"))


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Cutout background-removal API")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    probe = sub.add_parser("probe", help="check the local server (exit 0 when the path answers 200)")
    probe.add_argument("--path", default="/ready")
    probe.add_argument("--port", type=int)
    probe.add_argument("--timeout", type=float, default=5.0)
    probe.set_defaults(func=cmd_probe)

    keys = sub.add_parser("keys", help="manage API keys and credits").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an account; prints its API key as the last line")
    create.add_argument("--credits", type=credit_amount(minimum=0), required=True)
    create.add_argument("--plan")
    create.add_argument("--rate", help="rate limit overriding the plan's, e.g. 1000/minute")
    create.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="list accounts (never keys) as JSON lines").set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke an account's key")
    revoke.add_argument("account_id")
    revoke.set_defaults(func=_account_command(_revoke))
    for name, fn, text in (("grant", _grant, "add credits"), ("deduct", _deduct, "remove credits (not below 0)")):
        p = keys.add_parser(name, help=f"{text}; prints the new balance")
        p.add_argument("account_id")
        p.add_argument("amount", type=credit_amount(minimum=1))
        p.set_defaults(func=_account_command(fn))
    set_plan = keys.add_parser("set-plan", help="change an account's plan (and optional rate override)")
    set_plan.add_argument("account_id")
    set_plan.add_argument("plan")
    set_plan.add_argument("--rate")
    set_plan.set_defaults(func=cmd_keys_set_plan)

    secret = keys.add_parser("webhook-secret", help="the account's webhook signing secret (Standard Webhooks)")
    secret.add_argument("account_id")
    secret.set_defaults(func=cmd_keys_webhook_secret)

    batch = sub.add_parser("batch", help="send a folder of photos to a server as batches; resumable")
    batch.add_argument("folder")
    batch.add_argument("--out", required=True, help="output folder: the cut-outs, side by side")
    batch.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    batch.add_argument("--key", help="API key (default: $CUTOUT_API_KEY)")
    batch.add_argument("--model")
    batch.add_argument("--mask", action="store_true", help="masks instead of cut-outs")
    batch.add_argument("--chunk", type=int, default=100, help="photos per batch (the server's batch_max_items)")
    batch.set_defaults(func=cmd_batch)

    models = sub.add_parser("models", help="model weights").add_subparsers(dest="models_command", required=True)
    fetch_p = models.add_parser("fetch", help="fetch and verify weights (default: those the models use)")
    fetch_p.add_argument("names", nargs="*")
    fetch_p.set_defaults(func=cmd_models_fetch)
    models.add_parser("list", help="show each model and the state of its weights").set_defaults(func=cmd_models_list)

    docs = sub.add_parser("docs", help="regenerate the README's tables (error codes, configuration) from the code")
    docs.add_argument("--check", action="store_true", help="only check: exit 1 when the README is stale")
    docs.set_defaults(func=cmd_docs)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args, get_settings())
