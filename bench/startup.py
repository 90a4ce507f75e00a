"""Start-up time and memory at rest: the service with the shipped models, started STARTS times in a row.

    .venv/bin/python bench/startup.py [--starts 3] [--precision int8|native] [--env NAME=VALUE ...]

The first start finds an empty compiled-model cache (a fresh models folder: the weights and the
INT8 networks linked from models/, nothing else), the next ones find what it left (OpenVINO's
CACHE_DIR, models_dir/ov-cache). Reported per start: seconds from launching the process to
/ready answering 200 (imports, weights' checksums, compiling or importing every network, warm-up
runs) and RSS right then, plus each network's start-up log line (what precision it runs and why).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from cpu import describe
from servers import ROOT

sys.path.insert(0, str(ROOT / "tests"))
from harness import LiveServer, proc_status_mb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory(prefix="cutout-startup-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        for entry in (ROOT / "models").iterdir():
            if entry.name != "ov-cache":
                (models / entry.name).symlink_to(entry)
        env = {
            "CUTOUT_MODELS_DIR": str(models),
            "CUTOUT_PRECISION": args.precision,
            "CUTOUT_LOG_LEVEL": "info",
            **dict(e.split("=", 1) for e in args.env),
        }
        for n in range(args.starts):
            server = LiveServer(Path(tmp) / f"data-{n}", env, isnet=True)
            started = time.perf_counter()
            server.start(timeout_s=900)
            ready_s = time.perf_counter() - started
            assert server.process is not None
            rss = proc_status_mb(server.process.pid, "VmRSS")
            server.stop()
            lines = [
                line for line in server.log().splitlines() if " at " in line and ("INT8" in line or "native" in line)
            ]
            cache = sum(f.stat().st_size for f in (models / "ov-cache").glob("*")) / 2**20
            print(
                f"start {n + 1} ({'empty cache' if n == 0 else 'cache from before'}): ready in {ready_s:.1f} s, "
                f"RSS at rest {rss:.0f} MiB; cache {cache:.0f} MiB",
                flush=True,
            )
            if n == 0:
                print("\n".join("    " + line[-300:] for line in lines))


if __name__ == "__main__":
    main()
