"""PNG encoding of real cut-outs: time and size, Pillow's zlib levels against fpng.

    .venv/bin/python bench/png.py [--images DIR]    # default ../shared/testdata/rembg

The cut-outs are falcon's (the default model) for every photo in DIR; each encoder runs over all
of them three times after one warm pass. Prints mean and median ms per image and the total size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cpu import describe  # noqa: E402  (bench/cpu.py: the CPU line every bench prints)

from app.imaging import codec  # noqa: E402
from app.inference.registry import ModelRegistry  # noqa: E402
from app.settings import Settings  # noqa: E402


def measure(name: str, encode: Callable[[np.ndarray], bytes], cutouts: list[np.ndarray]) -> None:
    for pixels in cutouts:
        encode(pixels)
    times, size = [], 0
    for _ in range(3):
        for pixels in cutouts:
            t0 = time.perf_counter()
            size += len(encode(pixels))
            times.append((time.perf_counter() - t0) * 1000)
    print(
        f"{name:24} mean {statistics.mean(times):6.1f} ms  median {statistics.median(times):6.1f} ms  "
        f"total {size / 3 / 1024:7.0f} KiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg")
    args = parser.parse_args()
    print(describe())
    photos = sorted(args.images.glob("*.jpg"))
    if not photos:
        sys.exit(f"no .jpg photos in {args.images}")
    falcon = ModelRegistry.load(Settings(models_dir=ROOT / "models")).get("falcon")
    cutouts = [falcon.cutout(codec.decode(p.read_bytes())) for p in photos]
    print(f"{len(cutouts)} falcon cut-outs from {args.images}")
    for level in (1, 6):
        measure(f"Pillow zlib level {level}", lambda px, lv=level: codec.encode_png(px, lv), cutouts)
    measure("fpng", lambda px: codec.encode_png(px, 1, fast=True), cutouts)


if __name__ == "__main__":
    main()
