"""The README's generated sections: tables rendered from the one home of each fact.

Each section sits between `<!-- generated: NAME ... -->` and `<!-- end: NAME -->`
lines. `python -m app docs` rewrites them in place; tests/test_one_home.py fails
when the README is stale.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import error_table
from app.settings import Settings

# A source checkout's README (an installed wheel has none: this is a developer's command).
README = Path(__file__).resolve().parent.parent / "README.md"



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


def config_table() -> str:
    """The service settings (the described fields of app.settings.Settings) with their defaults."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.description:
            default = _shown(field.get_default(call_default_factory=True))
            rows.append(f"| `CUTOUT_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows) + "\n"


SECTIONS: dict[str, Callable[[], str]] = {
    "errors": error_table,  # app/errors.py ERROR_CODES
    "config": config_table,  # app/settings.py Settings
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated: {name}\b[^\n]*-->\n)(.*?)(<!-- end: {name} -->)", re.DOTALL)


def render(text: str) -> str:
    """The text with every generated section replaced by its current rendering."""
    for name, make in SECTIONS.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"README has no generated section {name!r}")
        text = pattern.sub(lambda match: match.group(1) + make() + match.group(3), text, count=1)
    return text


def update(path: Path = README) -> bool:
    """Rewrite the generated sections; True when anything changed."""
    text = path.read_text()
    fresh = render(text)
    if fresh != text:
        path.write_text(fresh)
    return fresh != text
