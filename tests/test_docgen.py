"""The README's generated sections (app/docgen.py) match what the code renders now."""

from __future__ import annotations

from app import docgen


def test_readme_generated_sections_are_current() -> None:
    text = docgen.README.read_text()
    assert docgen.render(text) == text, "README.md is stale: run `python -m app docs`"
