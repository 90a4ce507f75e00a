"""The servers the benchmarks drive, and the closed-loop load that drives them.

- ours: `tests.harness.LiveServer` with the shipped models (IS-Net included), one key with the
  per-account limits lifted;
- rembg's own server (`rembg s`) in its own virtualenv `bench/.venv-rembg`, made once: its pins
  (fastapi, gradio, older uvicorn and python-multipart) conflict with ours.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.harness import (  # noqa: E402  (the tests' server harness)
    LiveServer,
    concurrency_env,
    cpu_seconds,
    free_port,
    proc_status_mb,
    reset_peak_rss,
)

REMBG_VENV = ROOT / "bench" / ".venv-rembg"

# ---------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    # (session, image, mask_only, model) -> response; model None: the server's default (ours:
    # start_ours's default_model; rembg: the one session it was started for).
    post: Callable[[requests.Session, bytes, bool, str | None], requests.Response]
    stop: Callable[[], None]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def rss_mb(self) -> float:
        return proc_status_mb(self.process.pid, "VmRSS")

    def peak_rss_mb(self) -> float:
        return proc_status_mb(self.process.pid, "VmHWM")

    def reset_peak_rss(self) -> None:
        reset_peak_rss(self.process.pid)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit(f"server at {url} not ready after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def ensure_rembg_venv() -> Path:
    """rembg's CLI server lives in its own venv; built once, reused after."""
    exe = REMBG_VENV / "bin" / "rembg"
    version = importlib.metadata.version("rembg")
    marker = REMBG_VENV / f".installed-{version}"
    if exe.exists() and marker.exists():
        return exe
    print(f"making {REMBG_VENV.relative_to(ROOT)} with rembg[cpu,cli]=={version} (once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(REMBG_VENV)], check=True)
    pip = [str(REMBG_VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"rembg[cpu,cli]=={version}"]
    installed = subprocess.run(pip, capture_output=True, text=True)
    if installed.returncode != 0:
        sys.exit(f"installing rembg's server failed:\n{installed.stderr[-3000:]}")
    marker.touch()
    return exe


def start_ours(workdir: Path, models_dir: Path, env_overrides: dict[str, str], default_model: str) -> Server:
    """Our service; a request naming no model (\"name\" or \"name@1024x1024\") runs `default_model`."""
    # One key sends every request at once: lift the per-account concurrency limit for it.
    env = {"CUTOUT_MODELS_DIR": str(models_dir), **concurrency_env(1024), **env_overrides}
    # The shipped models; compiling and warming IS-Net takes minutes on a busy box.
    server = LiveServer(workdir / "data", env, isnet=True).start(timeout_s=900)
    key = server.create_key(10_000_000, "--rate", "1000000/minute")
    assert server.process is not None

    def post(session: requests.Session, image: bytes, mask: bool, model: str | None) -> requests.Response:
        path = "/v2/rembg/mask/" if mask else "/v2/rembg/"
        name, _, resolution = (model or default_model).partition("@")
        data = {"model": name, **({"operating_resolution": resolution} if resolution else {})}
        return session.post(
            server.url + path, headers={"ApiKey": key}, files={"image": ("photo.jpg", image)}, data=data, timeout=300
        )

    return Server("cutout", server.process, post, server.stop)


def start_rembg(workdir: Path, models_dir: Path, rembg_model: str, weights: str) -> Server:
    """`rembg s`; dis_custom runs the IS-Net file `weights` (in models_dir) through extras."""
    exe = ensure_rembg_venv()
    port = free_port()
    # BROWSER=true: its start-up hook "opens a browser"; make that a no-op.
    env = {**os.environ, "U2NET_HOME": str(models_dir), "BROWSER": "true"}
    log = workdir / "rembg.log"
    proc = subprocess.Popen(
        [str(exe), "s", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--log_level", "warning"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    # Its imports (gradio, fastapi, ...) take minutes on a busy box, more on the first run of a fresh venv.
    _wait_ready(proc, url + "/api", log, timeout=900)

    # rembg takes extras in the query string, the rest as form fields.
    extras = json.dumps({"model_path": str(models_dir / weights)}) if rembg_model == "dis_custom" else None
    query = {"extras": extras} if extras else None

    def post(session: requests.Session, image: bytes, mask: bool, model: str | None) -> requests.Response:
        assert model is None, f"rembg s runs {rembg_model} only here"
        data = {"model": rembg_model, "om": "true" if mask else "false"}
        return session.post(
            url + "/api/remove", params=query, files={"file": ("photo.jpg", image)}, data=data, timeout=600
        )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()  # uvicorn exits on SIGTERM
            proc.wait(timeout=30)

    return Server("rembg s", proc, post, stop)


# ---------------------------------------------------------------- load


@dataclass
class Run:
    wall_s: float
    latencies_s: list[float]
    cpu_s: float
    peak_rss_mb: float
    response_bytes: list[int]


def drive(server: Server, images: list[bytes], count: int, concurrency: int, model: str | None = None) -> Run:
    """Closed loop: `concurrency` clients, each sends its next request as soon as the last one returns."""
    server.reset_peak_rss()
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    sizes: list[int] = []
    failures: list[str] = []

    def client() -> None:
        nonlocal next_index
        with requests.Session() as session:
            while True:
                with lock:
                    if next_index >= count or failures:
                        return
                    i = next_index
                    next_index += 1
                t0 = time.perf_counter()
                response = server.post(session, images[i % len(images)], False, model)
                elapsed = time.perf_counter() - t0
                with lock:
                    if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    latencies.append(elapsed)
                    sizes.append(len(response.content))

    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if failures:
        sys.exit(f"{server.name}: request failed: {failures[0]}")
    return Run(wall, latencies, server.cpu_seconds() - cpu0, server.peak_rss_mb(), sizes)


@dataclass
class Summary:
    runs: list[Run] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return statistics.median(len(r.latencies_s) / r.wall_s for r in self.runs)

    def latency_ms(self, q: float) -> float:
        pooled = [x for r in self.runs for x in r.latencies_s]
        return float(np.percentile(pooled, q)) * 1000

    @property
    def cpu_per_image(self) -> float:
        return sum(r.cpu_s for r in self.runs) / sum(len(r.latencies_s) for r in self.runs)

    @property
    def peak_rss(self) -> float:
        return max(r.peak_rss_mb for r in self.runs)

    @property
    def median_bytes(self) -> float:
        return statistics.median(b for r in self.runs for b in r.response_bytes)
