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
    try:
        return await store.adjust_credits(args.account_id, -args.amount, "deduct", clamp=args.clamp)
    except InsufficientCredits as err:
        sys.exit(
            f"{args.account_id} has {err.balance} credits: deducting {err.needed} would go below zero. "
            "Nothing changed; --clamp deducts down to 0."
        )


async def _rotate(store: Store, args: argparse.Namespace) -> str:
    account = await store.get_account(args.account_id)
    if account is None:
        raise UnknownAccount(args.account_id)
    if account.revoked:
        sys.exit(f"{args.account_id} is revoked: its keys stay refused (create a new account instead)")
    key = await store.rotate_key(args.account_id)
    print(f"{args.account_id}: new key; the old one is refused from now on. The key is shown once:", file=sys.stderr)
    return key


async def _label(store: Store, args: argparse.Namespace) -> str:
    await store.set_label(args.account_id, args.label or None)
    return f"{args.account_id}: " + (f"label {args.label!r}" if args.label else "no label")


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


SERVE_TEXT = """\
Run the API in this process: loads and warms the models, then listens. Settings come from
CUTOUT_* environment variables and the TOML files in CUTOUT_CONFIG_DIR (docs/configuration.md).
Once ready, the log names the URLs of the demo page (/demo: try a key in the browser) and the
API reference (/docs). SIGTERM drains: /ready turns 503, requests in flight finish (docs/deploy.md).
Make a key first: python -m app keys create --unlimited"""

KEYS_TEXT = """\
Accounts and their API keys, in the store the settings select (SQLite in CUTOUT_DATA_DIR, or Redis
with CUTOUT_REDIS_URL). A key is printed once, as the last line of `create` and `rotate`; the
store keeps only its digest. Account ids (acct_...) come from `create` and `list`."""


def _text(parser: Any, name: str, summary: str, text: str = "", **kw: Any) -> Any:
    """A sub-command whose --help says what `summary` says, then `text` (kept as written)."""
    return parser.add_parser(
        name,
        help=summary,
        description=text or summary[:1].upper() + summary[1:] + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )


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
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Cutout background-removal API: run it, manage its keys and credits, fetch its model weights.",
        epilog="Each command has its own --help. Start with: python -m app keys create --unlimited; python -m app serve",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fields = Settings.model_fields
    serve = _text(sub, "serve", "run the API (HTTP) until SIGTERM or Ctrl-C", SERVE_TEXT)
    serve.add_argument("--host", help=f"address to listen on (default: CUTOUT_HOST, else {fields['host'].default})")
    serve.add_argument(
        "--port", type=int, help=f"port to listen on (default: CUTOUT_PORT, else {fields['port'].default})"
    )
    serve.set_defaults(func=cmd_serve)

    probe = _text(sub, "probe", "check the local server: exit 0 when the path answers 200 (the image's HEALTHCHECK)")
    probe.add_argument("--path", default="/ready", help="path to ask for (default: /ready; /health: alive at all)")
    probe.add_argument("--port", type=int, help="the server's port (default: CUTOUT_PORT)")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default: 5)")
    probe.set_defaults(func=cmd_probe)

    keys = _text(sub, "keys", "manage accounts, API keys and credits", KEYS_TEXT).add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    create = _text(
        keys,
        "create",
        "create an account; prints its API key as the last line",
        "Create an account with --credits N (each request spends its price; see GET /v2/account) or\n"
        "--unlimited (requests are not charged: a single-tenant install). One of the two is required.",
    )
    funds = create.add_mutually_exclusive_group(required=True)
    funds.add_argument("--credits", type=credit_amount(minimum=0), help="starting balance, a whole number")
    funds.add_argument("--unlimited", action="store_true", help="never charge this account's requests")
    create.add_argument("--label", type=label_text, help="your name for the account (a customer, an app)")
    create.add_argument("--plan", help="plan from config/plans.toml (default: CUTOUT_DEFAULT_PLAN)")
    create.add_argument("--rate", help="rate limit overriding the plan's, e.g. 1000/minute")
    create.set_defaults(func=cmd_keys_create)
    _text(
        keys,
        "list",
        "list accounts (never keys) as JSON lines",
        "One JSON object per account: account_id, label, plan, credits, unlimited, rate_limit (the limit\n"
        "in force) and rate_limit_from (`account`: its own override, `plan`: its plan's), revoked.",
    ).set_defaults(func=cmd_keys_list)
    rotate = _text(
        keys,
        "rotate",
        "give an account a new key; the old key is refused from then on",
        "Same account, balance, plan and label; prints the new key as the last line. For a key that\n"
        "leaked, or a routine change. The old key stops working at once, on every replica.",
    )
    rotate.add_argument("account_id")
    rotate.set_defaults(func=_account_command(_rotate))
    label = _text(keys, "label", "set or clear an account's label")
    label.add_argument("account_id")
    label.add_argument("label", nargs="?", default="", type=label_text, help="the new label (none: clear it)")
    label.set_defaults(func=_account_command(_label))
    revoke = _text(keys, "revoke", "revoke an account: its key is refused from then on (there is no undo)")
    revoke.add_argument("account_id")
    revoke.set_defaults(func=_account_command(_revoke))
    grant = _text(keys, "grant", "add credits; prints the new balance")
    grant.add_argument("account_id")
    grant.add_argument("amount", type=credit_amount(minimum=1))
    grant.set_defaults(func=_account_command(_grant))
    deduct = _text(
        keys,
        "deduct",
        "remove credits; prints the new balance",
        "Remove credits. A deduct larger than the balance is refused (exit 1, nothing changed);\n"
        "with --clamp it takes what there is, down to 0.",
    )
    deduct.add_argument("account_id")
    deduct.add_argument("amount", type=credit_amount(minimum=1))
    deduct.add_argument("--clamp", action="store_true", help="deduct down to 0 instead of refusing")
    deduct.set_defaults(func=_account_command(_deduct))
    set_plan = _text(keys, "set-plan", "change an account's plan (and optional rate override)")
    set_plan.add_argument("account_id")
    set_plan.add_argument("plan", help="a plan from config/plans.toml")
    set_plan.add_argument("--rate", help="rate limit overriding the plan's, e.g. 1000/minute (none: the plan's)")
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

    models = _text(sub, "models", "model weights: fetch, verify, list").add_subparsers(
        dest="models_command", required=True, metavar="COMMAND"
    )
    fetch_p = _text(models, "fetch", "fetch and verify weights into CUTOUT_MODELS_DIR (default: those the models use)")
    fetch_p.add_argument("names", nargs="*", help="weights names from config/models.toml")
    fetch_p.add_argument(
        "--force-int8", action="store_true", help="quantize again even where the INT8 network is current"
    )
    fetch_p.set_defaults(func=cmd_models_fetch)
    _text(models, "list", "show each model, its price and the state of its weights").set_defaults(func=cmd_models_list)

    docs = _text(sub, "docs", "regenerate the generated sections of README.md and docs/*.md from the code")
    docs.add_argument("--check", action="store_true", help="only check: exit 1 when a page is stale")
    docs.set_defaults(func=cmd_docs)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args, get_settings())
