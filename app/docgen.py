"""The docs' generated sections: tables rendered from the one home of each fact.

A section sits between a `<!-- generated: NAME ... -->` line and an `<!-- end: NAME -->` line,
in the README or in any page under docs/. `python -m app docs` rewrites every section of
every such file in place; tests/test_one_home.py fails when one is stale, names a section
that does not exist, or when a section is shown nowhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import ERROR_CODES, error_table
from app.settings import Settings

# A source checkout's pages (an installed wheel has none: this is a developer's command).
ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

_START = re.compile(r"<!-- generated: ([\w-]+)\b[^\n]*-->\n")


def _shown(value: Any) -> str:
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return f"`{json.dumps(value)}`"
    if isinstance(value, Path) and not value.is_absolute():
        return f"`./{value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_table() -> str:
    """The service settings (the described fields of app.settings.Settings) with their defaults."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.description:
            default = _shown(field.get_default(call_default_factory=True))
            rows.append(f"| `CUTOUT_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows) + "\n"


def errors_at_a_glance() -> str:
    """The public error codes grouped by status: the README's short form of the full table."""
    by_status: dict[int, list[str]] = {}
    for code, spec in ERROR_CODES.items():
        if spec.public:
            by_status.setdefault(spec.status, []).append(f"`{code}`")
    rows = ["| status | codes |", "|---|---|"]
    rows += [f"| {status} | {', '.join(codes)} |" for status, codes in sorted(by_status.items())]
    return "\n".join(rows) + "\n"


def _option_fields() -> tuple[dict[str, Any], set[str]]:
    """The rembg routes' optional form fields (name -> schema with its description), and those the
    mask route takes too. Their one home today is the OpenAPI description of the options."""
    # When the options get their own table (issue #19), read it here instead.
    from app.openapi.options import form_properties

    return form_properties(mask=False), set(form_properties(mask=True))


def options_table() -> str:
    """The output options' reference: each field, whether /mask/ takes it, and what it does."""
    fields, on_mask = _option_fields()
    rows = ["| field | on `/mask/` | what it does |", "|---|---|---|"]
    for name, schema in fields.items():
        rows.append(f"| `{name}` | {'yes' if name in on_mask else 'no'} | {_cell(schema['description'])} |")
    return "\n".join(rows) + "\n"


def option_names() -> str:
    """One line naming every output option, the cut-out-only ones apart."""
    fields, on_mask = _option_fields()
    both = ", ".join(f"`{name}`" for name in fields if name in on_mask)
    cutout_only = ", ".join(f"`{name}`" for name in fields if name not in on_mask)
    return f"on both routes: {both}; on the cut-out route only: {cutout_only}.\n"


def aliases_table() -> str:
    from app.removal.option_table import aliases_markdown

    return aliases_markdown()


def flag_rule() -> str:
    from app.removal.option_table import FLAG_RULE

    return FLAG_RULE + "\n"


def accept_rule() -> str:
    from app.removal.accept import ACCEPT_RULE

    return ACCEPT_RULE + "\n"


SECTIONS: dict[str, Callable[[], str]] = {
    "errors": error_table,  # app/errors.py ERROR_CODES
    "errors-at-a-glance": errors_at_a_glance,  # the same, by status
    "config": config_table,  # app/settings.py Settings
    "options": options_table,  # the OpenAPI description of the output options
    "option-names": option_names,  # the same, names only
    "aliases": aliases_table,  # app/removal/option_table.py ALIASES and SAME_NAMES
    "flags": flag_rule,  # app/removal/option_table.py FLAG_RULE
    "accept": accept_rule,  # app/removal/accept.py ACCEPT_RULE
}


def sections_in(text: str) -> list[str]:
    """The names of the generated sections a page holds, in order."""
    return _START.findall(text)


def render(text: str) -> str:
    """The text with every generated section it holds replaced by its current rendering."""
    for name in sections_in(text):
        if name not in SECTIONS:
            raise ValueError(f"unknown generated section {name!r} (known: {', '.join(SECTIONS)})")
        pattern = re.compile(
            rf"(<!-- generated: {re.escape(name)}\b[^\n]*-->\n)(.*?)(<!-- end: {re.escape(name)} -->)", re.DOTALL
        )
        found = pattern.search(text)
        if found is None:
            raise ValueError(f"generated section {name!r} has no `<!-- end: {name} -->` line")
        text = text[: found.start(2)] + SECTIONS[name]() + text[found.end(2) :]
    return text


def pages() -> list[Path]:
    """The README and every page under docs/ that holds a generated section."""
    candidates = [README, *sorted(DOCS.glob("*.md"))]
    return [path for path in candidates if sections_in(path.read_text())]


def stale() -> list[Path]:
    """The pages whose generated sections differ from the code."""
    return [path for path in pages() if render(path.read_text()) != path.read_text()]


def update(path: Path | None = None) -> bool:
    """Rewrite the generated sections of one page, or of every page; True when anything changed."""
    changed = False
    for page in [path] if path else pages():
        text = page.read_text()
        fresh = render(text)
        if fresh != text:
            page.write_text(fresh)
            changed = True
    return changed
