"""The README's generated sections: tables rendered from the one home of each fact.

Each section sits between `<!-- generated: NAME ... -->` and `<!-- end: NAME -->`
lines. `python -m app docs` rewrites them in place; tests/test_docgen.py fails
when the README is stale.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from app.errors import error_table

# A source checkout's README (an installed wheel has none: this is a developer's command).
README = Path(__file__).resolve().parent.parent / "README.md"

SECTIONS: dict[str, Callable[[], str]] = {
    "errors": error_table,  # app/errors.py ERROR_CODES
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
