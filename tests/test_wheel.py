"""The wheel runs where it is installed, not only in a source checkout.

A wheel is built from a copy of the tree and installed without a runtime extra into
a fresh virtualenv; everything runs from an empty folder, so `import app` can only
find the installed package. Its default config comes from inside the package,
CUTOUT_CONFIG_DIR still overrides it, and `serve` without `[cpu]`/`[gpu]` says in one
line what to install. The wheel with the `cpu` extra serving a cut-out from a folder
without the source is tests/test_deploy.py's image build.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ROOT

pytestmark = pytest.mark.slow  # builds a wheel and fresh virtualenvs

PIP_TIMEOUT_S = 600


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()), **env},
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )


def test_wheel_lists_every_package_under_app() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "app").rglob("__init__.py")} | {
        "app.static"
    }
    assert on_disk | {"app.config"} == listed


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the wheel and its base dependencies, no runtime extra."""
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "tree"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    for name in ("app", "config"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(work / "dist"), str(tree)], work
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "dist").glob("cutout-*.whl")
    venv.create(work / "venv", with_pip=True)
    python = work / "venv" / "bin" / "python"
    installed = run([str(python), "-m", "pip", "install", "-q", str(wheel)], work)
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield python


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An unrelated working directory: no app/, no config/ next to it."""
    return tmp_path


def test_serve_without_a_runtime_extra_says_what_to_install(bare_venv: Path, elsewhere: Path) -> None:
    result = run([str(bare_venv), "-m", "app", "serve", "--port", "1"], elsewhere, CUTOUT_DATA_DIR=str(elsewhere))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert 'pip install "cutout[cpu]"' in lines[0] and 'pip install "cutout[gpu]"' in lines[0]


def test_installed_package_reads_its_own_config_and_the_override(bare_venv: Path, elsewhere: Path) -> None:
    where = run([str(bare_venv), "-c", "import app; print(app.__file__)"], elsewhere)
    assert where.stdout.startswith(str(bare_venv.parent.parent / "lib")), where.stdout + where.stderr

    packaged = run([str(bare_venv), "-m", "app", "models", "list"], elsewhere, CUTOUT_MODELS_DIR=str(elsewhere))
    assert packaged.returncode == 0, packaged.stderr
    assert [line.split()[0] for line in packaged.stdout.splitlines()] == list(
        tomllib.loads((ROOT / "config" / "models.toml").read_text())["models"]
    )

    # Only models.toml: the folder's files replace the defaults, the others come from the package.
    override = elsewhere / "config"
    override.mkdir()
    models_toml = (ROOT / "config" / "models.toml").read_text()
    # falcon joins ghost's mask by name: the rename carries over to its reference.
    renamed = models_toml.replace("[models.ghost]", "[models.phantom]").replace('union = "ghost"', 'union = "phantom"')
    (override / "models.toml").write_text(renamed)
    overridden = run(
        [str(bare_venv), "-m", "app", "models", "list"],
        elsewhere,
        CUTOUT_MODELS_DIR=str(elsewhere),
        CUTOUT_CONFIG_DIR=str(override),
    )
    assert overridden.returncode == 0, overridden.stderr
    names = [line.split()[0] for line in overridden.stdout.splitlines()]
    assert "phantom" in names and "ghost" not in names
