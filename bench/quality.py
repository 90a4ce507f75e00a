"""Cut-out quality of each public model, on two sets with ground truth.

    .venv/bin/python bench/quality.py [--data ../shared/testdata/rembg] [--repeat 1] [--models aurora,ghost]

- birefnet: every photo that has a `<name>.birefnet-general.png` beside it; the reference is that
  cut-out's alpha (a far stronger network than ours: a reference, not the truth).
- composite: made here, by the Composition-1k recipe. Each subject's RGBA cut-out in the data
  folder (birefnet-general where there is one, else rembg's u2net example) is pasted over another
  photo of the folder and over a generated texture; the alpha it was pasted with is then exactly
  the true alpha of the composite. Faint alpha below COMPOSITE_MIN_ALPHA (a haze some cut-outs
  carry over their whole background) is cleared first, so the truth is a clean subject.

Each model runs its full pipeline (decode -> mask -> cut-out -> PNG, as the service does) at each
operating resolution it accepts. Reported per model and resolution: mean IoU of the alpha at 0.5,
mean absolute alpha error (0-1), the worst image (lowest IoU) and the median ms per image (in
process, every core). Not a test: it needs the shared photos and takes a few minutes.
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.inference.pipeline import Pipeline  # noqa: E402
from app.inference.registry import ModelRegistry  # noqa: E402
from app.removal import job  # noqa: E402
from app.removal.render import render as render_job  # noqa: E402
from app.settings import Settings  # noqa: E402

REFERENCE_SUFFIX = ".birefnet-general.png"
CUTOUT_SUFFIXES = (".birefnet-general.png", ".u2net-example.png")
COMPOSITE_MIN_ALPHA = 10 / 255
# A cut-out covering less than this (an empty example) makes no test.
MIN_SUBJECT_SHARE = 0.02


@dataclass
class Sample:
    name: str
    data: bytes  # the encoded photo, as a client uploads it
    alpha: np.ndarray  # float32 0-1, the photo's size


def alpha_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).getchannel("A"), dtype=np.float32) / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a >= 0.5, b >= 0.5
    union = np.logical_or(fa, fb).sum()
    return float(np.logical_and(fa, fb).sum() / union) if union else 1.0


def birefnet_set(data: Path) -> list[Sample]:
    samples = []
    for ref in sorted(data.glob("*" + REFERENCE_SUFFIX)):
        photo = ref.with_name(ref.name.replace(REFERENCE_SUFFIX, ".jpg"))
        samples.append(Sample(photo.stem, photo.read_bytes(), alpha_of(ref.read_bytes())))
    return samples


def _cutouts(data: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(subject, RGBA array) per photo: its best cut-out in the folder."""
    for photo in sorted(data.glob("*.jpg")):
        for suffix in CUTOUT_SUFFIXES:
            path = photo.with_name(photo.stem + suffix)
            if path.exists():
                rgba = np.asarray(Image.open(path).convert("RGBA"))
                if (rgba[..., 3] >= 128).mean() >= MIN_SUBJECT_SHARE:
                    yield photo.stem, rgba
                break


def _texture(kind: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Backgrounds a photo rarely has: smooth noise, stripes, a checkerboard, each in random colours."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:
        coarse = rng.random((max(2, height // 64), max(2, width // 64), 3)) * 255
        return np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
    if kind == 1:
        t = (np.sin((xx * 0.7 + yy * 0.3) / rng.uniform(6, 20)) + 1) / 2
    else:
        cell = int(rng.integers(16, 64))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return (a + (b - a) * t[..., None]).clip(0, 255).astype(np.uint8)


def _cover(photo: Path, height: int, width: int) -> np.ndarray:
    """The photo scaled to cover height x width, centre-cropped."""
    img = Image.open(photo).convert("RGB")
    scale = max(width / img.width, height / img.height)
    img = img.resize((max(width, round(img.width * scale)), max(height, round(img.height * scale))))
    left, top = (img.width - width) // 2, (img.height - height) // 2
    return np.asarray(img.crop((left, top, left + width, top + height)))


def composite_set(data: Path, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    cutouts = list(_cutouts(data))
    photos = sorted(data.glob("*.jpg"))
    samples = []
    for index, (subject, rgba) in enumerate(cutouts):
        height, width = rgba.shape[:2]
        alpha = rgba[..., 3].astype(np.float32) / 255.0
        alpha[alpha < COMPOSITE_MIN_ALPHA] = 0.0
        others = [p for p in photos if p.stem != subject]
        backgrounds = {
            f"photo-{others[index * 3 % len(others)].stem}": _cover(others[index * 3 % len(others)], height, width),
            f"texture-{index % 3}": _texture(index % 3, height, width, rng),
        }
        fg = rgba[..., :3].astype(np.float32)
        for label, bg in backgrounds.items():
            image = fg * alpha[..., None] + bg.astype(np.float32) * (1.0 - alpha[..., None])
            buf = io.BytesIO()
            Image.fromarray((image + 0.5).astype(np.uint8)).save(buf, "PNG", compress_level=1)
            samples.append(Sample(f"{subject} on {label}", buf.getvalue(), alpha))
    return samples


@dataclass
class Score:
    mean_iou: float
    mean_abs_error: float
    worst: str
    median_ms: float


def _body(pipeline: Pipeline, data: bytes, resolution: str) -> bytes:
    """The cut-out PNG the service answers, at this operating resolution."""
    return render_job(job.plain(pipeline, data, resolution=resolution), 1, True).image.body


def score(render, samples: list[Sample], repeat: int) -> Score:
    ious, errors, times = [], [], []
    for sample in samples:
        for _ in range(repeat):
            started = time.perf_counter()
            png = render(sample.data)
            times.append((time.perf_counter() - started) * 1000)
        alpha = alpha_of(png)
        ious.append((iou(alpha, sample.alpha), sample.name))
        errors.append(float(np.abs(alpha - sample.alpha).mean()))
    worst_iou, worst_name = min(ious)
    return Score(
        statistics.mean(i for i, _ in ious),
        statistics.mean(errors),
        f"{worst_name} ({worst_iou:.3f})",
        statistics.median(times),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per image and model")
    parser.add_argument("--models", default="", help="comma-separated names (default: every model)")
    args = parser.parse_args()

    sets = {"birefnet": birefnet_set(args.data), "composite": composite_set(args.data)}
    if not all(sets.values()):
        sys.exit(f"no cut-outs to measure against in {args.data}")
    registry = ModelRegistry.load(Settings(models_dir=ROOT / "models"))
    names = [n for n in args.models.split(",") if n] or registry.names

    print(", ".join(f"{name}: {len(samples)} images" for name, samples in sets.items()), f"from {args.data}")
    print("| model | resolution | set | mean IoU ↑ | mean abs alpha error ↓ | worst image (IoU) | median ms |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        pipeline = registry.get(name)
        if pipeline is None:
            sys.exit(f"unknown model {name!r}")
        for resolution in pipeline.resolutions:
            render = functools.partial(_body, pipeline, resolution=resolution)
            for set_name, samples in sets.items():
                s = score(render, samples, args.repeat)
                print(
                    f"| `{name}` | {resolution} | {set_name} | {s.mean_iou:.4f} | {s.mean_abs_error:.4f} "
                    f"| {s.worst} | {s.median_ms:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
