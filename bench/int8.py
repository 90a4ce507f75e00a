"""INT8 against native precision: the quality gates of issue #20, on the two sets of bench/quality.py.

    .venv/bin/python bench/int8.py [--data ../shared/testdata/rembg] [--models ghost,falcon,aurora]

Loads the models twice in one process, `precision = "native"` and `precision = "int8"` (the INT8
networks `python -m app models fetch` made in models/int8/; a network without one runs native and
the start-up log says so), and runs every model at every operating resolution on every image of
both sets (birefnet and composite: bench/quality.py). Reported per model, resolution and set: mean
IoU and mean absolute alpha error against the set's truth in each precision, and the lowest IoU of
the INT8 mask against the native one (the worst image named). The gates:

- every model's INT8 masks within IoU MIN_IOU_VS_NATIVE of native on every image;
- falcon and aurora: composite-set mean IoU within MAX_IOU_LOSS, alpha error within MAX_ERROR_GAIN
  of native;
- falcon (INT8) at least ghost's (INT8) mean IoU on both sets.

`--other f32` measures the floor instead: native against fp32 throughout (`mixed_precision` off,
what `native` is on a CPU without bf16), so the INT8 figures can be read against how far native
precision itself moves between CPUs. Exit status 1 when a gate fails. Masks only (the cut-out's alpha is the mask): the output options
do not differ between precisions.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cpu import describe  # noqa: E402
from quality import birefnet_set, composite_set, iou  # noqa: E402

from app.inference.registry import ModelRegistry  # noqa: E402
from app.settings import Settings  # noqa: E402

MIN_IOU_VS_NATIVE = 0.98
MAX_IOU_LOSS = 0.005
MAX_ERROR_GAIN = 0.003


def alpha(pipeline, data: bytes, resolution: str) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return pipeline.mask(rgb, resolution).astype(np.float32) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg")
    parser.add_argument("--models", default="", help="comma-separated names (default: every model)")
    parser.add_argument(
        "--resolutions", default="", help="comma-separated, e.g. 1024x1024 (default: every one offered)"
    )
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--other", choices=("int8", "f32"), default="int8", help="what to compare native with")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(describe())

    sets = {"birefnet": birefnet_set(args.data), "composite": composite_set(args.data)}
    if not all(sets.values()):
        sys.exit(f"no cut-outs to measure against in {args.data}")
    settings = Settings(models_dir=args.models_dir)
    names = [n for n in args.models.split(",") if n] or list(settings.models)
    settings = settings.only_models(names)  # the others' networks are not loaded (memory)
    native = ModelRegistry.load(settings.model_copy(update={"precision": "native"}))
    update = {"precision": "int8"} if args.other == "int8" else {"precision": "native", "mixed_precision": False}
    other = ModelRegistry.load(settings.model_copy(update=update))
    print(", ".join(f"{name}: {len(samples)} images" for name, samples in sets.items()), f"from {args.data}")
    print(
        f"| model | resolution | set | IoU native | IoU {args.other} | alpha error native | alpha error {args.other} "
        f"| min IoU {args.other} vs native (image) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    failures: list[str] = []
    means: dict[tuple[str, str, str], float] = {}
    for name in names:
        for resolution in native.get(name).resolutions:
            if args.resolutions and resolution not in args.resolutions.split(","):
                continue
            for set_name, samples in sets.items():
                rows = []
                for sample in samples:
                    a = alpha(native.get(name), sample.data, resolution)
                    b = alpha(other.get(name), sample.data, resolution)
                    rows.append(
                        (
                            iou(a, sample.alpha),
                            iou(b, sample.alpha),
                            float(np.abs(a - sample.alpha).mean()),
                            float(np.abs(b - sample.alpha).mean()),
                            iou(a, b),
                            sample.name,
                        )
                    )
                iou_n, iou_8, err_n, err_8 = (statistics.mean(r[i] for r in rows) for i in range(4))
                worst = min(rows, key=lambda r: r[4])
                means[(name, resolution, set_name)] = iou_8
                print(
                    f"| `{name}` | {resolution} | {set_name} | {iou_n:.4f} | {iou_8:.4f} | {err_n:.4f} | {err_8:.4f} "
                    f"| {worst[4]:.4f} ({worst[5]}) |",
                    flush=True,
                )
                if worst[4] < MIN_IOU_VS_NATIVE:
                    bad = sum(r[4] < MIN_IOU_VS_NATIVE for r in rows)
                    failures.append(
                        f"{name} {resolution} {set_name}: {bad} image(s) under IoU {MIN_IOU_VS_NATIVE} vs native"
                    )
                if name in ("falcon", "aurora") and set_name == "composite":
                    if iou_n - iou_8 > MAX_IOU_LOSS:
                        failures.append(f"{name} {resolution}: composite IoU {iou_n - iou_8:.4f} below native")
                    if err_8 - err_n > MAX_ERROR_GAIN:
                        failures.append(f"{name} {resolution}: composite alpha error {err_8 - err_n:.4f} above native")
    for set_name in sets:
        falcon = means.get(("falcon", "768x768", set_name))
        ghost = means.get(("ghost", "320x320", set_name))
        if falcon is not None and ghost is not None and falcon < ghost:
            failures.append(f"falcon below ghost on {set_name}: {falcon:.4f} < {ghost:.4f}")
    print("\n" + ("\n".join(f"MISSED: {f}" for f in failures) if failures else "every gate met"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
