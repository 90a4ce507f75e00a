"""One home for each default and each error code: the README's generated sections match the
code, and neither config/cutout.toml nor the Dockerfile repeats a default of the settings model."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from app import docgen
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _is_default(key: str, value: Any) -> bool:
    """Whether a value given in a file (TOML, or an environment variable's text) is the setting's default."""
    field = Settings.model_fields[key]
    adapter = TypeAdapter(field.annotation)
    parsed = adapter.validate_json(value) if isinstance(value, str) and value.startswith("[") else adapter.validate_python(value)
    return parsed == field.get_default(call_default_factory=True)


def test_readme_generated_sections_are_current() -> None:
    text = docgen.README.read_text()
    assert docgen.render(text) == text, "README.md is stale: run `python -m app docs`"


def test_every_service_setting_is_documented() -> None:
    """Each setting without a description must be one that config/models.toml or plans.toml supplies."""
    undocumented = {name for name, field in Settings.model_fields.items() if not field.description}
    assert undocumented == {"weights", "models", "default_plan", "plans"}


def test_cutout_toml_sets_only_what_differs_from_the_defaults() -> None:
    for key, value in tomllib.loads((ROOT / "config" / "cutout.toml").read_text()).items():
        assert key in Settings.model_fields, f"cutout.toml sets unknown {key!r}"
        assert not _is_default(key, value), f"cutout.toml repeats the default of {key}"


def test_dockerfile_sets_only_what_differs_from_the_defaults() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, quoted, bare in re.findall(r"\bCUTOUT_([A-Z_]+)=(?:'([^']*)'|([^\s\\]+))", dockerfile):
        value = quoted or bare
        key = name.lower()
        assert key in Settings.model_fields, f"Dockerfile sets unknown CUTOUT_{name}"
        assert not _is_default(key, value), f"Dockerfile repeats the default of CUTOUT_{name}"
