"""Peak memory of one job per model, for the memory admission (`peak_mb` / `peak_bytes_per_pixel` in
config/models.toml).

For each model, in this process: load and warm it as the service does (mallopt included), then for
each size reset the kernel's peak-RSS mark (/proc/self/clear_refs), run one full cut-out (decode,
mask, colour, encode) of a synthetic photo of that size and read the peak above the resting RSS.
A least-squares line through the points gives the fixed part and the part per pixel; the config
takes the fixed part and the steepest slope among adjacent points, rounded up.

    .venv/bin/python bench/memory.py [--sides 1000 3000 5000 7000] [--models aurora]
    .venv/bin/python bench/memory.py --background [--sides 2000 4000 6000]

--background measures instead what a bg_image adds (its decode and its scaling to a small cut-out),
per pixel of the background, JPEG, PNG and 16-bit greyscale PNG: app/imaging/compose.py's BACKGROUND_PEAK_BYTES_PER_PIXEL.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.inference.memory import release_large_frees_to_os  # noqa: E402
from app.inference.registry import ModelRegistry  # noqa: E402
from app.removal import job, options  # noqa: E402
from app.removal.render import finish_cutout, render  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.harness import subject_image  # noqa: E402  (the tests' image maker)

MIB = 1024 * 1024


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_above_rest(run: object) -> float:
    rest = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    run()  # type: ignore[operator]
    return (status_kib("VmHWM") - rest) * 1024 / MIB


def _background_file(side: int, fmt: str) -> bytes:
    if fmt != "PNG16":
        return subject_image(side, side, fmt=fmt)
    # 16-bit greyscale (mode I;16): decoded through a float conversion to 8 bits (codec._to_8bit).
    grey = np.asarray(Image.open(io.BytesIO(subject_image(side, side, fmt="PNG"))).convert("L"), np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def measure_background(sides: list[int]) -> None:
    cutout = np.zeros((200, 200, 4), np.uint8)
    cutout[50:150, 50:150] = 200
    photo = np.zeros((200, 200, 3), np.uint8)
    for side in sides:
        for fmt in ("JPEG", "PNG", "PNG16"):
            chosen = options.parse({}, _background_file(side, fmt), mask=False)
            peak = peak_above_rest(lambda chosen=chosen: finish_cutout(cutout, photo, chosen, 1, True))
            print(f"bg_image {side}x{side} {fmt}: peak {peak:.0f} MiB above rest, {peak * MIB / side / side:.1f} B/px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[1000, 3000, 5000, 7000])
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--background", action="store_true", help="a bg_image's cost, not the models'")
    args = parser.parse_args()
    release_large_frees_to_os()
    if args.background:
        measure_background(args.sides)
        return
    settings = Settings()
    names = args.models or list(settings.models)
    # A model another one joins (union) is loaded too, not measured.
    registry = ModelRegistry.load(settings.only_models(names))
    photos = {side: subject_image(side, side, quality=90) for side in args.sides}
    for name in names:
        pipeline = registry.get(name)
        assert pipeline is not None
        pixels, peaks = [], []
        for side, photo in photos.items():
            peak = peak_above_rest(lambda photo=photo, pipeline=pipeline: render(job.plain(pipeline, photo), 1, True))
            pixels.append(side * side)
            peaks.append(peak)
            print(f"{name} {side}x{side}: peak {peak:.0f} MiB above rest", flush=True)
        slope, intercept = np.polyfit(pixels, peaks, 1)
        steepest = max((peaks[i + 1] - peaks[i]) / (pixels[i + 1] - pixels[i]) for i in range(len(pixels) - 1))
        print(
            f"{name}: fit {intercept:.0f} MiB + {slope * MIB:.1f} B/px; "
            f"steepest {steepest * MIB:.1f} B/px (RSS at rest {status_kib('VmRSS') / 1024:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
