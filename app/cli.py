"""The operator's command line: `python -m app serve | probe | keys ... | models ... | docs | batch`, each
with its --help text, one function per group of commands; what each does is in app/commands.py
(`keys ...`: app/key_commands.py)."""

from __future__ import annotations

import argparse
from typing import Any

from app.commands import cmd_batch, cmd_docs, cmd_models_fetch, cmd_models_list, cmd_probe, cmd_serve
from app.key_commands import (
    account_command,
    cmd_keys_create,
    cmd_keys_list,
    cmd_keys_set_plan,
    cmd_keys_webhook_secret,
    credit_amount,
    deduct_credits,
    grant_credits,
    label_text,
    revoke_account,
    rotate_key,
    set_label,
)
from app.settings import Settings, get_settings

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Cutout background-removal API: run it, manage its keys and credits, fetch its model weights.",
        epilog="Each command has its own --help. Start with: python -m app keys create --unlimited; python -m app serve",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _server_commands(sub)
    keys = _text(sub, "keys", "manage accounts, API keys and credits", KEYS_TEXT).add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    _account_commands(keys)
    _credit_commands(keys)
    _batch_command(sub)
    _model_commands(sub)
    _docs_command(sub)
    return parser


def _server_commands(sub: Any) -> None:
    """serve and probe."""
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


def _account_commands(keys: Any) -> None:
    """keys create, list, rotate, label, revoke."""
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
    rotate.set_defaults(func=account_command(rotate_key))
    label = _text(keys, "label", "set or clear an account's label")
    label.add_argument("account_id")
    label.add_argument("label", nargs="?", default="", type=label_text, help="the new label (none: clear it)")
    label.set_defaults(func=account_command(set_label))
    revoke = _text(keys, "revoke", "revoke an account: its key is refused from then on (there is no undo)")
    revoke.add_argument("account_id")
    revoke.set_defaults(func=account_command(revoke_account))


def _credit_commands(keys: Any) -> None:
    """keys grant, deduct, set-plan, webhook-secret."""
    grant = _text(keys, "grant", "add credits; prints the new balance")
    grant.add_argument("account_id")
    grant.add_argument("amount", type=credit_amount(minimum=1))
    grant.set_defaults(func=account_command(grant_credits))
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
    deduct.set_defaults(func=account_command(deduct_credits))
    set_plan = _text(keys, "set-plan", "change an account's plan (and optional rate override)")
    set_plan.add_argument("account_id")
    set_plan.add_argument("plan", help="a plan from config/plans.toml")
    set_plan.add_argument("--rate", help="rate limit overriding the plan's, e.g. 1000/minute (none: the plan's)")
    set_plan.set_defaults(func=cmd_keys_set_plan)

    secret = keys.add_parser("webhook-secret", help="the account's webhook signing secret (Standard Webhooks)")
    secret.add_argument("account_id")
    secret.set_defaults(func=cmd_keys_webhook_secret)


def _batch_command(sub: Any) -> None:
    batch = sub.add_parser("batch", help="send a folder of photos to a server as batches; resumable")
    batch.add_argument("folder")
    batch.add_argument("--out", required=True, help="output folder: the cut-outs, side by side")
    batch.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    batch.add_argument("--key", help="API key (default: $CUTOUT_API_KEY)")
    batch.add_argument("--model")
    batch.add_argument("--mask", action="store_true", help="masks instead of cut-outs")
    batch.add_argument("--chunk", type=int, default=100, help="photos per batch (the server's batch_max_items)")
    batch.set_defaults(func=cmd_batch)


def _model_commands(sub: Any) -> None:
    """models fetch and list."""
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


def _docs_command(sub: Any) -> None:
    docs = _text(sub, "docs", "regenerate the generated sections of README.md and docs/*.md from the code")
    docs.add_argument("--check", action="store_true", help="only check: exit 1 when a page is stale")
    docs.set_defaults(func=cmd_docs)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args, get_settings())
