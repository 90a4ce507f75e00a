"""Start-up time, the first requests and memory at rest: the service with the shipped models,
started twice on a fresh models folder (empty cache, then the cache the first start left), in
rounds, optionally against another checkout of the code in the same rounds.

    .venv/bin/python bench/startup.py [--rounds 3] [--precision native|int8] [--env NAME=VALUE ...]
    .venv/bin/python bench/startup.py --baseline ../before   # a checkout of another commit, same runs

Each round starts, for each checkout in turn (the order alternating from round to round, so that
other load on a shared box falls on both alike): a fresh models folder (the weights and the INT8
networks linked from models/, nothing else), so the first start finds an empty compiled-model
cache (models_dir/ov-cache) and the second one what the first left. Per start: seconds from
launching the process to /ready answering 200 (imports, weights' checksums, compiling or importing
every network, warm-up), the peak RSS until then and RSS then, the time of the first request to each model and of a second
one (client side, one photo) with the server's CPU seconds for each, and RSS after them: "at rest" is that last figure (every model has
run once), as in bench/models.py. Reported: every start, then the medians per checkout and start,
and with --baseline the ratios ours / baseline. The CPU's model and flags and the load average
are printed first and last: quote only figures from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from cpu import describe
from servers import ROOT

sys.path.insert(0, str(ROOT / "tests"))
from harness import LiveServer, cpu_seconds, proc_status_mb, subject_image  # noqa: E402

MODELS = ("ghost", "falcon", "aurora")
FIGURES = (
    "ready_s",
    "peak_start",
    "rss_ready",
    "rss_rest",
    *(f"{when}_{m}" for when in ("first", "again", "first_cpu", "again_cpu") for m in MODELS),
)


@dataclass
class Checkout:
    name: str
    root: Path
    python: str
    runs: dict[int, list[dict[str, float]]] = field(default_factory=lambda: {1: [], 2: []})


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def fresh_models(tmp: Path) -> Path:
    models = Path(tempfile.mkdtemp(prefix="models-", dir=tmp))
    for entry in (ROOT / "models").iterdir():
        if entry.name != "ov-cache":
            (models / entry.name).symlink_to(entry)
    return models


def post(server: LiveServer, key: str, image: bytes, model: str) -> tuple[float, float]:
    """The request's time (client side) and the server's CPU seconds meanwhile (all its threads):
    the second is what other load on a shared box barely changes."""
    assert server.process is not None
    cpu = cpu_seconds(server.process.pid)
    started = time.perf_counter()
    response = requests.post(
        server.url + "/v2/rembg/",
        headers={"ApiKey": key},
        files={"image": ("photo.jpg", image, "image/jpeg")},
        data={"model": model},
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed, cpu_seconds(server.process.pid) - cpu


def one_start(
    checkout: Checkout, models: Path, data: Path, env: dict[str, str], image: bytes
) -> tuple[dict[str, float], list[str]]:
    """The figures of one start, and its networks' start-up log lines (what each runs, from where)."""
    server = LiveServer(data, {"CUTOUT_MODELS_DIR": str(models), **env}, checkout.python, checkout.root, isnet=True)
    started = time.perf_counter()
    server.start(timeout_s=900)
    figures = {"ready_s": time.perf_counter() - started}
    try:
        assert server.process is not None
        figures["rss_ready"] = proc_status_mb(server.process.pid, "VmRSS")
        figures["peak_start"] = proc_status_mb(server.process.pid, "VmHWM")
        key = server.create_key(1000)
        for when in ("first", "again"):
            for model in MODELS:
                figures[f"{when}_{model}"], figures[f"{when}_cpu_{model}"] = post(server, key, image, model)
        figures["rss_rest"] = proc_status_mb(server.process.pid, "VmRSS")
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if " at " in line and ("INT8" in line or "native" in line)]
    return figures, lines


def show(name: str, start: int, figures: dict[str, float], cache_mib: float) -> None:
    firsts, agains = (
        " ".join(
            f"{m} {figures[f'{when}_{m}'] * 1000:.0f} ({figures[f'{when}_cpu_{m}'] * 1000:.0f} CPU)" for m in MODELS
        )
        for when in ("first", "again")
    )
    print(
        f"{name} start {start} ({'empty cache' if start == 1 else 'cache from start 1'}): ready in "
        f"{figures['ready_s']:.2f} s (peak RSS until then {figures['peak_start']:.0f} MiB), RSS {figures['rss_ready']:.0f} "
        f"MiB when ready, {figures['rss_rest']:.0f} MiB at rest; first requests ms: {firsts}; second: {agains}; cache {cache_mib:.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="", help="native or int8 (default: the service's own)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--baseline", type=Path, help="another checkout, run in the same rounds")
    parser.add_argument("--baseline-python", default=sys.executable, help="its interpreter (default: this one)")
    parser.add_argument("--image", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg" / "animal-3.jpg")
    args = parser.parse_args()
    image = args.image.read_bytes() if args.image.is_file() else subject_image(1000, 667)
    env = {"CUTOUT_LOG_LEVEL": "info", **dict(e.split("=", 1) for e in args.env)}
    if args.precision:
        env["CUTOUT_PRECISION"] = args.precision
    checkouts = [Checkout("ours", ROOT, sys.executable)]
    if args.baseline:
        checkouts.append(Checkout("baseline", args.baseline.resolve(), args.baseline_python))
    print(describe())
    print(load(), f"; photo {args.image.name if args.image.is_file() else 'generated 1000x667'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cutout-startup-") as tmp:
        for round_ in range(args.rounds):
            for checkout in checkouts[round_ % len(checkouts) :] + checkouts[: round_ % len(checkouts)]:
                models = fresh_models(Path(tmp))
                for start in (1, 2):
                    data = Path(tmp) / f"data-{checkout.name}-{round_}-{start}"
                    figures, lines = one_start(checkout, models, data, env, image)
                    cache = sum(f.stat().st_size for f in (models / "ov-cache").rglob("*") if f.is_file()) / 2**20
                    show(checkout.name, start, figures, cache)
                    if round_ == 0:
                        print("\n".join("    " + line[-300:] for line in lines))
                    checkout.runs[start].append(figures)
    print(f"\nmedians over {args.rounds} rounds (ms for requests, MiB for RSS):")
    medians = {
        (c.name, start): {k: statistics.median(r[k] for r in c.runs[start]) for k in FIGURES}
        for c in checkouts
        for start in (1, 2)
    }
    print(
        "| checkout | start | ready s | peak RSS starting | RSS ready | RSS at rest | "
        + " | ".join(f"first {m} (CPU)" for m in MODELS)
        + " |"
    )
    print("|---" * (6 + len(MODELS)) + "|")
    for (name, start), m in medians.items():
        firsts = " | ".join(
            f"{m[f'first_{model}'] * 1000:.0f} ({m[f'first_cpu_{model}'] * 1000:.0f})" for model in MODELS
        )
        print(
            f"| {name} | {start} | {m['ready_s']:.2f} | {m['peak_start']:.0f} | {m['rss_ready']:.0f} | "
            f"{m['rss_rest']:.0f} | {firsts} |"
        )
    if args.baseline:
        print("\nratios ours / baseline (medians of the same rounds):")
        for start in (1, 2):
            ours, base = medians[("ours", start)], medians[("baseline", start)]
            ratios = ", ".join(f"{k} {ours[k] / base[k]:.2f}x" for k in FIGURES)
            print(f"  start {start}: {ratios}")
    print(describe())
    print(load())


if __name__ == "__main__":
    main()
