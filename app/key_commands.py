"""What the `keys` commands do: accounts, API keys and credits in the store the settings select;
their arguments and help texts are in app/cli.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from limits import parse as parse_limit

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
