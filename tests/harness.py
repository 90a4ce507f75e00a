"""The live-server harness: real uvicorn servers on free ports, real weights, real HTTP, and a
real redis-server. Plain helpers (no pytest), shared by the tests (tests/conftest.py wraps them
in fixtures) and by bench/.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
SHARED_TESTDATA = ROOT.parent / "shared" / "testdata" / "rembg"
STARTUP_TIMEOUT_S = 90
# A server with IS-Net compiles it at two sizes and warms four runs of it first.
ISNET_STARTUP_TIMEOUT_S = 300


def _lean_config() -> str:
    """A config folder whose models.toml keeps the shipped model names and prices, all on U2-Netp.

    Most tests exercise the HTTP contract, billing, limits and shutdown, not the networks: their
    servers skip IS-Net (88 MB of weights, ~1 GB of RSS per server, ~0.4 s a run at 1024x1024).
    Each model keeps its name, its default resolution's cost, its memory figures and its
    foreground step, on U2-Netp at 320x320 with falcon's guided filter. The folder holds
    models.toml only (the other files come from the defaults). Tests of the real bindings start
    a server with `isnet=True` (config/models.toml as shipped).
    """
    from app.settings import Settings

    shipped = (ROOT / "config" / "models.toml").read_text()
    start = shipped.index("[weights.u2netp]")
    lines = [shipped[start : shipped.index("\n[", start + 1)].strip(), ""]
    for name, spec in Settings(models_dir=MODELS_DIR).models.items():
        price = spec.prices()[next(iter(spec.prices()))]
        on_isnet = spec.weights != "u2netp"
        lines += [
            f"[models.{name}]",
            f"description = {json.dumps(spec.description)}",
            'weights = "u2netp"',
            f'refine = "{"guided" if on_isnet else spec.refine}"',
            f"edge_contrast = {2.0 if on_isnet else spec.edge_contrast}",
            f'foreground = "{spec.foreground}"',
            f"cost = {price.cost}",
            f"mask_cost = {price.mask_cost}",
            # U2-Netp with the guided filter measured 32 MiB + 28 B/px (bench/memory.py) before
            # falcon and aurora moved to IS-Net: never less than that here.
            f"peak_mb = {max(spec.peak_mb, 32) if on_isnet else spec.peak_mb}",
            f"peak_bytes_per_pixel = {max(spec.peak_bytes_per_pixel, 28) if on_isnet else spec.peak_bytes_per_pixel}",
            "",
        ]
    auto = shipped.index("[auto]")  # model=auto as shipped (its two models keep their names here)
    lines += [shipped[auto : shipped.index("\n[", auto + 1)].strip(), ""]
    folder = Path(tempfile.mkdtemp(prefix="cutout-lean-config-"))
    atexit.register(shutil.rmtree, folder, True)  # servers outlive no test run
    (folder / "models.toml").write_text("\n".join(lines))
    return str(folder)


LEAN_CONFIG_DIR = _lean_config()


def concurrency_env(max_concurrent: int) -> dict[str, str]:
    """Server environment giving every plan this `max_concurrent`: for tests that load one account
    with many requests at once on purpose (queueing, ledger races), not the per-account limit."""
    plans = tomllib.loads((ROOT / "config" / "plans.toml").read_text())["plans"]
    return {
        "CUTOUT_PLANS": json.dumps({name: {**plan, "max_concurrent": max_concurrent} for name, plan in plans.items()})
    }


def wait_until(condition: Callable[[], bool], timeout_s: float = 30, what: str = "condition") -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def proc_status_mb(pid: int, field: str) -> float:
    """A memory line of /proc/PID/status (VmRSS now, VmHWM its peak) in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS: the peak mark starts from now


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hang_up_after_upload(server: LiveServer, key: str, image: bytes, model: str, after_s: float) -> None:
    """Send a whole request on a raw socket, wait `after_s`, then close it before the answer comes."""
    prepared = requests.Request(
        "POST",
        server.url + "/v2/rembg/",
        headers={"ApiKey": key},
        files={"image": ("photo.jpg", image)},
        data={"model": model},
    ).prepare()
    head = f"POST /v2/rembg/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in prepared.headers.items()
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head.encode() + b"\r\n" + prepared.body)  # type: ignore[operator]
        time.sleep(after_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subject_image(width: int = 160, height: int = 120, fmt: str = "JPEG", mode: str = "RGB", **save: Any) -> bytes:
    """A dark disc on a light, slightly textured background: something the model sees as a subject."""
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((xx - width / 2) / (width * 0.28)) ** 2 + ((yy - height / 2) / (height * 0.35)) ** 2 <= 1
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[...] = (235, 235, 228)
    rgb[inside] = (150, 30, 40)
    rgb = (rgb.astype(np.int16) + np.random.default_rng(0).integers(-6, 7, rgb.shape)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def png_of(content: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(content))
    img.load()
    return img


def assert_error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    """The fapihub error contract: status, JSON shape, request id in body and header."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    error = body["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["code"] == code, body
    assert error["message"] and "Traceback" not in error["message"]
    assert error["request_id"].startswith("req_")
    assert response.headers["X-Request-ID"] == error["request_id"]
    return body


def raw_request(
    url: str, head: str, body_chunks: Iterable[bytes] = (), pause_s: float = 0.0, timeout: float = 30
) -> tuple[int, dict[str, Any]]:
    """Send a hand-written HTTP request over a socket, possibly never finishing the body.

    Returns the status and the JSON body of whatever the server answers, as soon
    as it answers (clients like requests cannot show an answer to an unfinished upload).
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                time.sleep(pause_s)
        except OSError:
            pass  # the server answered and closed while we were still sending: read its answer
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            received += data
    status_line, _, rest = received.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


class LiveServer:
    """`python -m app serve` on a free port. `python`, `cwd` and `user` default to this checkout
    run by us; the Dockerfile test points them at a built image tree and its non-root user."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        python: str = sys.executable,
        cwd: Path = ROOT,
        user: int | None = None,
        isnet: bool = False,
    ) -> None:
        self.python = python
        self.isnet = isnet
        self.cwd = cwd
        self.user = user
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "CUTOUT_DATA_DIR": str(data_dir),
            "CUTOUT_MODELS_DIR": str(MODELS_DIR),
            "CUTOUT_LOG_LEVEL": "warning",
            # No load balancer to wait for when a test stops its server; tests of the delay set it.
            "CUTOUT_DRAIN_DELAY_S": "0",
            **({} if isnet else {"CUTOUT_CONFIG_DIR": LEAN_CONFIG_DIR}),
            **env,
        }
        self.log_path = data_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float | None = None) -> LiveServer:
        if timeout_s is None:
            timeout_s = ISNET_STARTUP_TIMEOUT_S if self.isnet else STARTUP_TIMEOUT_S
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.python, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user is not None else None,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/ready", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, "-m", "app", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user is not None else None,
        )

    def create_key(self, credits: int = 100, *extra: str) -> str:
        result = self.cli("keys", "create", "--credits", str(credits), *extra)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def balance(self, key: str) -> int:
        response = requests.get(self.url + "/v2/account", headers={"ApiKey": key}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["credits"]

    def remove(
        self,
        key: str | None,
        image: bytes | None = None,
        model: str | None = None,
        path: str = "/v2/rembg/",
        headers: dict[str, str] | None = None,
        fields: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        headers = {**({"ApiKey": key} if key is not None else {}), **(headers or {})}
        files = {"image": ("photo.jpg", image if image is not None else subject_image(), "image/jpeg")}
        data = {**({"model": model} if model is not None else {}), **(fields or {})}
        return requests.post(self.url + path, headers=headers, files=files, data=data, timeout=120, **kwargs)


class RedisServer:
    """A real redis-server on a free port, persisting to its own folder (AOF, fsync on every write),
    so it can be stopped and started again mid-test without losing a credit."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: scripts/setup installs it"
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                "redis.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        # SIGTERM: redis finishes the command at hand, flushes its replies and the AOF, then exits.
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)
