"""One home for each default and each error code: the generated sections of the README and of
docs/ match the code, and neither config/cutout.toml nor the Dockerfile repeats a default of the
settings model. The README stays a short front door whose links, and the docs pages', all lead
somewhere."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from app import docgen
from app.accounts.auth import MISSING_KEY
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _is_default(key: str, value: Any) -> bool:
    """Whether a value given in a file (TOML, or an environment variable's text) is the setting's default."""
    field = Settings.model_fields[key]
    adapter = TypeAdapter(field.annotation)
    parsed = (
        adapter.validate_json(value)
        if isinstance(value, str) and value.startswith("[")
        else adapter.validate_python(value)
    )
    return parsed == field.get_default(call_default_factory=True)


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200


def test_generated_sections_are_current() -> None:
    """Every page with a generated section (the README, docs/*.md) matches the code."""
    assert docgen.README in docgen.pages()
    stale = [str(path.relative_to(ROOT)) for path in docgen.stale()]
    assert not stale, f"stale: {stale}: run `python -m app docs`"


def test_each_generated_section_is_shown_somewhere() -> None:
    shown = {name for path in docgen.pages() for name in docgen.sections_in(path.read_text())}
    assert shown == set(docgen.SECTIONS), f"never shown: {set(docgen.SECTIONS) - shown}"


def test_a_generated_section_needs_its_end_and_a_known_name() -> None:
    with pytest.raises(ValueError, match="no `<!-- end: errors -->`"):
        docgen.render("<!-- generated: errors -->\n| stale |\n")
    with pytest.raises(ValueError, match="unknown generated section 'nonsense'"):
        docgen.render("<!-- generated: nonsense -->\n<!-- end: nonsense -->")


def test_readme_is_a_short_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES, "README.md is the front door: move detail to docs/"
    assert "```sh\n./scripts/serve\n```" in readme and "```sh\n./scripts/test\n```" in readme
    assert "/demo" in readme[: readme.index("## A first request")], "the first screen sends newcomers to /demo"
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {_slug(title) for title in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_readme_quotes_the_missing_key_message_as_the_service_says_it() -> None:
    assert f'"message":{json.dumps(MISSING_KEY)}' in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda path: path.name)
def test_relative_links_lead_somewhere(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links {target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name} links {target}: no such heading"


def test_every_service_setting_is_documented() -> None:
    """Each setting without a description must be one that config/models.toml or plans.toml supplies."""
    undocumented = {name for name, field in Settings.model_fields.items() if not field.description}
    assert undocumented == {"weights", "models", "auto", "default_plan", "plans", "option_costs"}


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
    "other docs pages": [path for path in sorted((ROOT / "docs").glob("*.md")) if path.name != "performance.md"],
    "performance doc": [ROOT / "docs" / "performance.md"],
}


def test_each_measured_figure_has_one_home() -> None:
    texts = {home: "\n".join(path.read_text() for path in paths) for home, paths in HOMES.items()}
    for figure, pattern in FIGURES.items():
        found_in = [home for home, text in texts.items() if re.search(pattern, text)]
        assert len(found_in) <= 1, f"{figure!r} is written in {found_in}: keep it in docs/performance.md only"
        assert found_in == ["performance doc"], f"{figure!r} is no longer in docs/performance.md"
