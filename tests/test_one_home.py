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
    assert undocumented == {"weights", "models", "default_plan", "plans", "option_costs"}


def test_config_files_set_only_what_differs_from_the_defaults() -> None:
    for path in sorted((ROOT / "config").glob("*.toml")):
        for key, value in tomllib.loads(path.read_text()).items():
            assert key in Settings.model_fields, f"{path.name} sets unknown {key!r}"
            if not isinstance(value, dict):  # tables (weights, models, plans) are data, not defaults
                assert not _is_default(key, value), f"{path.name} repeats the default of {key}"


def test_dockerfile_sets_only_what_differs_from_the_defaults() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = re.search(r"^EXPOSE (\d+)", dockerfile, re.M)
    assert exposed and int(exposed.group(1)) == Settings.model_fields["port"].default, "EXPOSE is the default port"
    for name, quoted, bare in re.findall(r"\bCUTOUT_([A-Z_]+)=(?:'([^']*)'|([^\s\\]+))", dockerfile):
        value = quoted or bare
        key = name.lower()
        assert key in Settings.model_fields, f"Dockerfile sets unknown CUTOUT_{name}"
        assert not _is_default(key, value), f"Dockerfile repeats the default of CUTOUT_{name}"


# Measured figures that matter, each as the patterns its claim is written in. Each may stand in
# one of the HOMES only (docs/performance.md is meant to be the one): copies drift apart.
FIGURES = {
    "fpng speed-up": r"1[45]\s*[×x]\s*faster|fpng takes 0\.9 ms",
    "fpng file size": r"1[24]\s*%\s*larger",
    "mixed precision time saved": r"15\s*[–-]\s*17\s*%",
    "OpenVINO time saved over onnxruntime": r"6\s*[–-]\s*12\s*%",
    "activations per inference": r"~?90 MB|~?280 MB",
    "mixed precision mask IoU": r"IoU\s*(?:≥|>=|of)?\s*0\.998",
    "bf16 throughout": r"IoU 0\.89\b",
    "OpenVINO thread scaling": r"190 ms|190 on\s+one",
    "pinned threads": r"13\s*%\s*of the\s+machine",
    "sRGB profile cost": r"12 ms per\s+megapixel",
    "model input resampling": r"35 ms instead of 160",
    "benchmark headline": r"1\.51\s*×|0\.66\s*×|438 MB",
}
HOMES = {
    "code comments": [*sorted((ROOT / "app").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py"))],
    "config comments": sorted((ROOT / "config").glob("*.toml")),
    "README": [ROOT / "README.md"],
    "performance doc": [ROOT / "docs" / "performance.md"],
}


def test_each_measured_figure_has_one_home() -> None:
    texts = {home: "\n".join(path.read_text() for path in paths) for home, paths in HOMES.items()}
    for figure, pattern in FIGURES.items():
        found_in = [home for home, text in texts.items() if re.search(pattern, text)]
        assert len(found_in) <= 1, f"{figure!r} is written in {found_in}: keep it in docs/performance.md only"
        assert found_in == ["performance doc"], f"{figure!r} is no longer in docs/performance.md"
