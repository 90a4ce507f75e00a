"""Per-request cost of the production layer (JSON access log, metrics, drain tracking).

Starts two real servers in one run: `before` from an export of a git ref
(default: the merge base with main, i.e. the code without this layer) and
`after` from the working tree, both at the production log level (info), and
interleaves identical requests to them. Prints medians and after/before ratios.

    .venv/bin/python bench/production_overhead.py [--ref REF] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cpu import describe  # noqa: E402  (bench/cpu.py: the CPU line every bench prints)

from tests.harness import LiveServer, subject_image  # noqa: E402  (the tests' server harness)


def export(ref: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    tar_path = dest / "src.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest / "src", filter="data")
    return dest / "src"


def timed(call) -> float:
    started = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text[:200]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default=None, help="git ref for `before` (default: merge base with main)")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    ref = (
        args.ref
        or subprocess.run(
            ["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    )

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {"CUTOUT_LOG_LEVEL": "info"}
        servers = {
            "before": LiveServer(work / "before", env, cwd=export(ref, work)),
            "after": LiveServer(work / "after", env),
        }
        try:
            for server in servers.values():
                server.start(timeout_s=300)
            assert requests.get(servers["before"].url + "/metrics", timeout=5).status_code == 404, "before has no layer"
            keys = {
                name: server.create_key(10 * args.rounds, "--rate", "100000/minute") for name, server in servers.items()
            }
            photo = subject_image(160, 120)
            samples: dict[str, dict[str, list[float]]] = {"account": {}, "ghost_160x120": {}}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    headers = {"ApiKey": keys[name]}
                    samples["account"].setdefault(name, []).append(
                        timed(
                            lambda server=server, headers=headers: requests.get(
                                server.url + "/v2/account", headers=headers, timeout=30
                            )
                        )
                    )
            for _ in range(args.rounds // 5):
                for name, server in servers.items():
                    samples["ghost_160x120"].setdefault(name, []).append(
                        timed(lambda server=server, name=name: server.remove(keys[name], photo, model="ghost"))
                    )
        finally:
            for server in servers.values():
                server.stop()

    report = {"cpu": describe(), "before_ref": ref, "rounds": args.rounds}
    for what, by_server in samples.items():
        medians = {name: statistics.median(values) * 1000 for name, values in by_server.items()}
        report[what] = {
            "n": len(by_server["after"]),
            "median_ms_before": round(medians["before"], 2),
            "median_ms_after": round(medians["after"], 2),
            "ratio_after_before": round(medians["after"] / medians["before"], 3),
        }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "production_overhead.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
