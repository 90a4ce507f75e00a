"""A rolling restart behind a real HAProxy loses no request, and the ledger stays exact.

deploy/haproxy.cfg (its addresses rewritten to loopback) balances two replicas that share a real
redis-server. Clients keep uploading through HAProxy while each replica in turn gets SIGTERM, as
a rolling restart sends it, and is started again: its /ready turns 503, HAProxy's health checks
take it out of rotation during the drain delay (its default in app/settings.py, in which it still
serves what arrives), it finishes what it holds and exits; started again, it comes back into
rotation before the next one stops. Every response must be a 200, and the credits the responses
report as charged plus the balance left must equal the credits bought."""

from __future__ import annotations

import concurrent.futures
import csv
import io
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from app.settings import Settings
from harness import ROOT, LiveServer, RedisServer, concurrency_env, free_port, subject_image, wait_until

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
DRAIN_DELAY_S = Settings.model_fields["drain_delay_s"].default
CLIENTS = 4
CREDITS = 5000


class HAProxy:
    """`haproxy -db` on deploy/haproxy.cfg, listening on loopback, balancing the given replicas."""

    def __init__(self, workdir: Path, replicas: list[LiveServer]) -> None:
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = HAPROXY_CFG.read_text()
        config = config.replace("bind :8000", f"bind 127.0.0.1:{self.port}")
        config = config.replace("bind :8404", f"bind 127.0.0.1:{self.stats_port}")
        servers = "".join(f"    server r{i} 127.0.0.1:{r.port}\n" for i, r in enumerate(replicas))
        config, replaced = re.subn(r"(^\s*server .*\n)+", servers, config, count=1, flags=re.M)
        assert replaced == 1, "deploy/haproxy.cfg lists its replicas as `server` lines"
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(config)
        self.log = workdir / "haproxy.log"
        binary = shutil.which("haproxy")
        assert binary, "haproxy is missing: scripts/setup installs it"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )

    def states(self) -> dict[str, str]:
        """Server name -> UP / DOWN / ..., from HAProxy's own stats; {} until it listens."""
        assert self.process.poll() is None, self.log.read_text()
        try:
            text = requests.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text.lstrip("# ")
        except requests.ConnectionError:
            return {}
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"] for row in rows if row["pxname"] == "cutout" and row["svname"].startswith("r")
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class Load:
    """CLIENTS threads uploading through HAProxy back to back until stopped."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.image = subject_image(160, 120)
        self.results: list[tuple[int, int, str]] = []  # status, credits charged, error text
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def client(self) -> None:
        with requests.Session() as session:
            while not self.stopping.is_set():
                try:
                    response = session.post(
                        self.url + "/v2/rembg/",
                        headers={"ApiKey": self.key},
                        files={"image": ("photo.jpg", self.image, "image/jpeg")},
                        data={"model": "ghost"},
                        timeout=60,
                    )
                    charged = int(response.headers.get("X-Credits-Charged", 0))
                    result = (response.status_code, charged, "" if response.ok else response.text[:200])
                except requests.RequestException as err:
                    result = (0, 0, repr(err))
                with self.lock:
                    self.results.append(result)

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def stop(self) -> list[tuple[int, int, str]]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(90)
        return self.results


@pytest.fixture
def haproxy_factory(tmp_path: Path) -> Iterator[Callable[[list[LiveServer]], HAProxy]]:
    started: list[HAProxy] = []

    def start(replicas: list[LiveServer]) -> HAProxy:
        started.append(HAProxy(tmp_path, replicas))
        return started[-1]

    yield start
    for proxy in started:
        proxy.stop()


def test_rolling_restart_behind_haproxy_loses_nothing(
    start_redis: Callable[[], RedisServer],
    start_server: Callable[..., LiveServer],
    haproxy_factory: Callable[[list[LiveServer]], HAProxy],
    tmp_path: Path,
) -> None:
    redis_server = start_redis()
    # One key carries all the load: lift the per-account concurrency limit.
    env = {"CUTOUT_REDIS_URL": redis_server.url, "CUTOUT_DRAIN_DELAY_S": str(DRAIN_DELAY_S), **concurrency_env(CLIENTS)}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replicas = list(pool.map(lambda i: start_server(data_dir=tmp_path / f"replica{i}", **env), range(2)))
    key = replicas[0].create_key(CREDITS, "--rate", "100000/minute")
    proxy = haproxy_factory(replicas)
    wait_until(lambda: proxy.states() == {"r0": "UP", "r1": "UP"}, 30, "HAProxy to see both replicas up")

    load = Load(proxy.url, key)
    taken_out_s: list[float] = []
    try:
        wait_until(lambda: load.count() >= 10, 60, "the load to get going")
        for index, replica in enumerate(replicas):
            name = f"r{index}"
            assert replica.process is not None
            replica.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            wait_until(lambda name=name: proxy.states()[name] != "UP", DRAIN_DELAY_S, f"HAProxy to take {name} out")
            taken_out_s.append(time.monotonic() - signalled)
            assert replica.process.wait(timeout=DRAIN_DELAY_S + 30) == 0, replica.log()
            replica.start()
            wait_until(lambda name=name: proxy.states()[name] == "UP", 30, f"HAProxy to put {name} back")
        # The last replica restarted serves alongside the first: the load carries on through both.
        served = load.count()
        wait_until(lambda: load.count() >= served + 10, 60, "the load to carry on after the restart")
    finally:
        results = load.stop()

    failures = [r for r in results if r[0] != 200]
    print(
        f"{len(results)} requests, {len(failures)} not 200; out of rotation "
        + ", ".join(f"{s:.1f}" for s in taken_out_s)
        + " s after SIGTERM"
    )
    assert not failures, failures[:5]
    charged = sum(r[1] for r in results)
    assert charged == len(results), "ghost costs 1"
    assert replicas[0].balance(key) + charged == CREDITS, "credits served + balance = credits bought"
