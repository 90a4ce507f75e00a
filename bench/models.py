"""Our models against each other: latency at concurrency 1 through the real service, relative to ghost.

    .venv/bin/python bench/models.py [--rounds 3] [--images DIR] [--models ghost,falcon,...]

One server (uvicorn, the shipped config/models.toml) runs every model; each round sends every
photo once to each model in turn, one request at a time, the order of the models rotating from
round to round so that load from others on a shared box falls on all alike. Reported per model:
p50 and p95 latency (client side, whole request) and p50 as a multiple of ghost's: the ratio is
the number to quote, not the milliseconds. `name@1024x1024` asks for an operating resolution.

The target of issue #11: falcon's p50 at most FALCON_P50_TARGET x ghost's (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from servers import ROOT, Summary, drive, start_ours

FALCON_P50_TARGET = 2.5
DEFAULT_MODELS = "ghost,falcon,falcon@1024x1024,aurora"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    args = parser.parse_args()

    photos = sorted(args.images.glob("*.jpg"))
    if not photos:
        sys.exit(f"no photos in {args.images}")
    images = [p.read_bytes() for p in photos]
    models = args.models.split(",")
    print(f"{len(images)} photos from {args.images}; {args.rounds} rounds; models {', '.join(models)}; concurrency 1")

    results: dict[str, Summary] = {m: Summary() for m in models}
    with tempfile.TemporaryDirectory(prefix="cutout-models-") as tmp:
        server = start_ours(Path(tmp), args.models_dir.resolve(), {}, models[0])
        try:
            for model in models:  # warm-up: first requests pay for lazy allocations
                drive(server, images[:2], 2, 1, model)
            for r in range(args.rounds):
                order = models[r % len(models) :] + models[: r % len(models)]
                for model in order:
                    results[model].runs.append(drive(server, images, len(images), 1, model))
        finally:
            server.stop()

    base = results[models[0]].latency_ms(50)
    print(f"\n| model | p50 ms | p95 ms | p50 vs {models[0]} |")
    print("|---|---|---|---|")
    for model, summary in results.items():
        p50 = summary.latency_ms(50)
        print(f"| `{model}` | {p50:.0f} | {summary.latency_ms(95):.0f} | {p50 / base:.2f}x |")
    if "falcon" in results and models[0] == "ghost":
        ratio = results["falcon"].latency_ms(50) / base
        met = ratio <= FALCON_P50_TARGET
        print(f"\ntarget: falcon p50 <= {FALCON_P50_TARGET}x ghost's: {ratio:.2f}x {'met' if met else 'MISSED'}")
        sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
