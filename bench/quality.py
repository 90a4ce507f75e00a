"""Quality of each public model against a far stronger reference (rembg's birefnet-general cut-outs).

    .venv/bin/python bench/quality.py [--data ../shared/testdata/rembg] [--repeat 3]

For every photo that has a `<name>.birefnet-general.png` beside it, runs each
model's full pipeline (decode -> mask -> cut-out -> PNG, as the service does)
and reports per model: mean IoU of the alpha (thresholded at 50%), mean
absolute alpha error (0-1 scale) and median ms per image. Not a test: it needs
the shared photos and takes a while.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.inference.registry import ModelRegistry  # noqa: E402
from app.settings import Settings  # noqa: E402

REFERENCE_SUFFIX = ".birefnet-general.png"


def alpha_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).getchannel("A"), dtype=np.float32) / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a >= 0.5, b >= 0.5
    union = np.logical_or(fa, fb).sum()
    return float(np.logical_and(fa, fb).sum() / union) if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per image and model")
    args = parser.parse_args()

    references = sorted(args.data.glob("*" + REFERENCE_SUFFIX))
    if not references:
        sys.exit(f"no *{REFERENCE_SUFFIX} references in {args.data}")
    settings = Settings(models_dir=ROOT / "models")
    registry = ModelRegistry.load(settings)

    rows = []
    for name in registry.names:
        pipeline = registry.get(name)
        assert pipeline is not None
        ious, errors, times = [], [], []
        for ref_path in references:
            photo = ref_path.with_name(ref_path.name.replace(REFERENCE_SUFFIX, ".jpg"))
            data = photo.read_bytes()
            reference = alpha_of(ref_path.read_bytes())
            for _ in range(args.repeat):
                started = time.perf_counter()
                png = pipeline.render(data, "cutout")
                times.append((time.perf_counter() - started) * 1000)
            alpha = alpha_of(png)
            ious.append(iou(alpha, reference))
            errors.append(float(np.abs(alpha - reference).mean()))
        rows.append((name, statistics.mean(ious), statistics.mean(errors), statistics.median(times)))

    print(f"{len(references)} images with birefnet-general references in {args.data}")
    print(f"| model | mean IoU | mean abs alpha error | median ms / image |")
    print(f"|---|---|---|---|")
    for name, mean_iou, mean_err, ms in rows:
        print(f"| `{name}` | {mean_iou:.4f} | {mean_err:.4f} | {ms:.0f} |")


if __name__ == "__main__":
    main()
