"""Cut-out quality of each public model, on two sets with ground truth.

    .venv/bin/python bench/quality.py [--data ../shared/testdata/rembg] [--repeat 1] [--models aurora,ghost]

- birefnet: every photo that has a `<name>.birefnet-general.png` beside it; the reference is that
  cut-out's alpha (a far stronger network than ours: a reference, not the truth).
- composite: made here, by the Composition-1k recipe. Each subject's RGBA cut-out in the data
  folder (birefnet-general where there is one, else rembg's u2net example) is pasted over another
  photo of the folder and over a generated texture; the alpha it was pasted with is then exactly
  the true alpha of the composite. Faint alpha below COMPOSITE_MIN_ALPHA (a haze some cut-outs
  carry over their whole background) is cleared first, so the truth is a clean subject. With
  --clean-colour, partly transparent pixels also take the colour of the nearest opaque one (the
  cut-outs kept their photo's background there), so the truth has its own colour too and the
  colour errors below mean something; the images then differ (every figure moves a little: compare
  within one kind of run).

Each model runs its full pipeline (decode -> mask -> cut-out -> PNG, as the service does) at each
operating resolution it accepts. Reported per model and resolution: mean IoU of the alpha at 0.5,
mean absolute alpha error (0-1), the edge colour error (composite set: the cut-out over black
against the truth's, 0-255, on partly transparent pixels) and the fringe colour error (the cut-out's
colour against the subject's, where the truth is partly transparent and the alpha is right: the
halo alone), the worst image
(lowest IoU) and the median and mean ms per image (in process, every core; the variants run in
turn on each image). Not a test: it needs the shared photos and takes a few minutes.

Re-check the confidence and auto's threshold whenever a network or its precision changes:

    .venv/bin/python bench/quality.py --sets composite --default-resolution --confidence --auto

prints the Spearman correlation of each model's confidence with its IoU (docs/models.md, "Confidence and model=auto" wants
>= 0.5), auto's escalated share, IoU, alpha error and time against aurora's, and a table of what
other thresholds would give. `--foreground none,estimate_fast,estimate` compares the foreground
steps on ghost and falcon.
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpu import describe  # noqa: E402

from app.inference.pipeline import Pipeline  # noqa: E402
from app.inference.registry import ModelRegistry  # noqa: E402
from app.removal import job  # noqa: E402
from app.removal.render import render as render_job  # noqa: E402
from app.settings import Settings  # noqa: E402

REFERENCE_SUFFIX = ".birefnet-general.png"
CUTOUT_SUFFIXES = (".birefnet-general.png", ".u2net-example.png")
COMPOSITE_MIN_ALPHA = 10 / 255
OPAQUE = 0.99
FRINGE_ALPHA = 0.05
# A cut-out covering less than this (an empty example) makes no test.
MIN_SUBJECT_SHARE = 0.02


@dataclass
class Sample:
    name: str
    data: bytes  # the encoded photo, as a client uploads it
    alpha: np.ndarray  # float32 0-1, the photo's size
    fg: np.ndarray | None = None  # uint8 RGB: the subject's true colour (composite set only)


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


def _clean_colour(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The subject's colour: a reference cut-out's partly transparent pixels still carry its old
    photo's background (its own halo), so each takes the colour of the nearest opaque pixel
    (alpha >= OPAQUE). The composite is made from these, so its truth has no halo to inherit."""
    solid = alpha >= OPAQUE
    if not solid.any():
        return rgb.astype(np.float32)
    _, (iy, ix) = distance_transform_edt(~solid, return_indices=True)
    return rgb[iy, ix].astype(np.float32)


def composite_set(data: Path, seed: int = 0, clean_colour: bool = False) -> list[Sample]:
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
        fg = _clean_colour(rgba[..., :3], alpha) if clean_colour else rgba[..., :3].astype(np.float32)
        for label, bg in backgrounds.items():
            image = fg * alpha[..., None] + bg.astype(np.float32) * (1.0 - alpha[..., None])
            buf = io.BytesIO()
            Image.fromarray((image + 0.5).astype(np.uint8)).save(buf, "PNG", compress_level=1)
            truth = fg.astype(np.uint8) if clean_colour else None  # colour errors need a clean subject
            samples.append(Sample(f"{subject} on {label}", buf.getvalue(), alpha, truth))
    return samples


@dataclass
class Result:
    iou: float
    alpha_error: float
    colour_error: float
    fringe_error: float
    ms: float
    confidence: float
    escalated: bool = False


@dataclass
class Variant:
    label: str  # model, resolution and what differs
    model: str
    run: Callable[[bytes], tuple[bytes, float, bool]]  # upload -> (PNG, confidence, escalated)


def colour_error(png: bytes, sample: Sample) -> float:
    """Mean absolute error (0-255) of the cut-out composited over black (premultiplied RGB) against
    the truth's, on the edge band: pixels either alpha leaves partly transparent. A halo of the old
    background on soft edges shows here; the alpha's own error too."""
    if sample.fg is None:
        return float("nan")
    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3] / 255.0
    band = ((alpha > 0) & (alpha < 1)) | ((sample.alpha > 0) & (sample.alpha < 1))
    if not band.any():
        return 0.0
    ours = rgba[..., :3][band] * alpha[band, None]
    truth = sample.fg[band].astype(np.float32) * sample.alpha[band, None]
    return float(np.abs(ours - truth).mean())


def fringe_error(png: bytes, sample: Sample) -> float:
    """The cut-out's own colour against the subject's true colour (mean abs, 0-255) on the pixels the
    truth leaves partly transparent and the cut-out's alpha gets right (within FRINGE_ALPHA): the
    halo alone, apart from the alpha's errors."""
    if sample.fg is None:
        return float("nan")
    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3] / 255.0
    band = (sample.alpha > 0) & (sample.alpha < 1) & (np.abs(alpha - sample.alpha) < FRINGE_ALPHA)
    if not band.any():
        return 0.0
    return float(np.abs(rgba[..., :3][band] - sample.fg[band].astype(np.float32)).mean())


def measure(variant: Variant, sample: Sample) -> Result:
    started = time.perf_counter()
    png, confidence, escalated = variant.run(sample.data)
    ms = (time.perf_counter() - started) * 1000
    alpha = alpha_of(png)
    return Result(
        iou(alpha, sample.alpha),
        float(np.abs(alpha - sample.alpha).mean()),
        colour_error(png, sample),
        fringe_error(png, sample),
        ms,
        confidence,
        escalated,
    )


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y)[0]) if len(set(x)) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per image and model")
    parser.add_argument("--models", default="", help="comma-separated names (default: every model)")
    parser.add_argument("--sets", default="birefnet,composite", help="comma-separated sets (default: both)")
    parser.add_argument("--default-resolution", action="store_true", help="each model at its default only")
    parser.add_argument(
        "--foreground",
        default="",
        help="comma-separated foreground steps to compare on every model (none,estimate_fast,estimate); "
        "default: each model's own",
    )
    parser.add_argument(
        "--confidence",
        action="store_true",
        help="Spearman rank correlation of each model's confidence with the per-image IoU, and the "
        "confidences per image",
    )
    parser.add_argument(
        "--auto",
        action="store_true",
        help="model=auto too (config/models.toml [auto]), against its two models: escalated share, "
        "time ratio, and what other thresholds would have given (from the two models' own runs)",
    )
    parser.add_argument(
        "--clean-colour",
        action="store_true",
        help="composite subjects in their own colour on soft edges: the colour errors (halo) are measured",
    )
    parser.add_argument("--below", type=float, default=None, help="auto's threshold (default: the config's)")
    args = parser.parse_args()

    print(describe())
    chosen_sets = [n for n in args.sets.split(",") if n]
    makers = {"birefnet": birefnet_set, "composite": functools.partial(composite_set, clean_colour=args.clean_colour)}
    sets = {name: makers[name](args.data) for name in chosen_sets}
    if not all(sets.values()):
        sys.exit(f"no cut-outs to measure against in {args.data}")
    settings = Settings(models_dir=ROOT / "models")
    registry = ModelRegistry.load(settings)
    names = [n for n in args.models.split(",") if n] or registry.names
    auto_spec = settings.auto
    if args.auto:
        if auto_spec is None:
            sys.exit("config/models.toml has no [auto]")
        below = auto_spec.below if args.below is None else args.below
        names += [n for n in (auto_spec.first, auto_spec.escalate_to) if n not in names]

    variants: list[Variant] = []
    for name in names:
        pipeline = registry.get(name)
        if pipeline is None:
            sys.exit(f"unknown model {name!r}")
        resolutions = pipeline.resolutions[:1] if args.default_resolution else pipeline.resolutions
        # aurora's full estimate is its own: the comparison is for the models without it.
        own = pipeline.spec.foreground == "estimate"
        steps = (
            [pipeline.spec.foreground]
            if own
            else [f for f in args.foreground.split(",") if f] or [pipeline.spec.foreground]
        )
        for resolution in resolutions:
            for step in steps:
                run = _model_run(pipeline, resolution, step, settings.png_compress_level)
                variants.append(Variant(f"`{name}` | {resolution} | {step}", name, run))
    if args.auto:
        first, then = registry.get(auto_spec.first), registry.get(auto_spec.escalate_to)
        assert first is not None and then is not None

        escalation = job.Escalation(then, below, 0, 0)

        def auto_run(data: bytes) -> tuple[bytes, float, bool]:
            result = render_job(job.plain(first, data, escalation=escalation), settings.png_compress_level, True)
            return result.image.body, result.confidence, bool(result.escalated)

        variants.append(Variant(f"`auto` (below {below}) | | ", "auto", auto_run))

    print(", ".join(f"{name}: {len(samples)} images" for name, samples in sets.items()), f"from {args.data}")
    print("Variants run in turn on each image (interleaved), so a noisy machine slows them alike.")
    results: dict[tuple[str, str], list[tuple[Sample, Result]]] = {}
    for set_name, samples in sets.items():
        for sample in samples:
            for variant in variants:
                for _ in range(args.repeat):
                    result = measure(variant, sample)
                    results.setdefault((variant.label, set_name), []).append((sample, result))
            print(f"  {set_name}: {sample.name} done", file=sys.stderr, flush=True)
    print()
    print(
        "| model | resolution | foreground | set | mean IoU ↑ | mean abs alpha error ↓ | edge colour error ↓ "
        "| fringe colour error ↓ | worst image (IoU) | median ms | mean ms |"
        + (" confidence ρ |" if args.confidence else "")
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if args.confidence else ""))
    for variant in variants:
        for set_name in sets:
            rows = results[(variant.label, set_name)]
            rs = [r for _, r in rows]
            worst_iou, worst_name = min((r.iou, s.name) for s, r in rows)
            line = (
                f"| {variant.label} | {set_name} | {statistics.mean(r.iou for r in rs):.4f} "
                f"| {statistics.mean(r.alpha_error for r in rs):.4f} | {statistics.mean(r.colour_error for r in rs):.2f} "
                f"| {statistics.mean(r.fringe_error for r in rs):.2f} "
                f"| {worst_name} ({worst_iou:.3f}) | {statistics.median(r.ms for r in rs):.0f} "
                f"| {statistics.mean(r.ms for r in rs):.0f} |"
            )
            if args.confidence:
                line += f" {spearman([r.confidence for r in rs], [r.iou for r in rs]):.3f} |"
            print(line, flush=True)
    _paired_times(variants, results, sets)
    if args.confidence:
        _confidence_cost(registry, names)
    if args.auto:
        _auto_report(variants, results, sets, auto_spec.first, auto_spec.escalate_to, below)
    if args.confidence:
        print()
        print("Per image: confidence (IoU) of each variant")
        for set_name, samples in sets.items():
            for index, sample in enumerate(samples):
                cells = []
                for variant in variants:
                    r = results[(variant.label, set_name)][index * args.repeat][1]
                    cells.append(f"{variant.model} {r.confidence:.3f} ({r.iou:.3f}){' E' if r.escalated else ''}")
                print(f"{set_name} | {sample.name} | " + " | ".join(cells))


def _model_run(
    pipeline: Pipeline, resolution: str, step: str, png_level: int
) -> Callable[[bytes], tuple[bytes, float, bool]]:
    """The service's render path on `pipeline`, its foreground step replaced by `step`."""
    if step != pipeline.spec.foreground:
        spec = pipeline.spec.model_copy(update={"foreground": step})
        pipeline = Pipeline(pipeline.name, spec, pipeline._engines, pipeline._union)

    def run(data: bytes) -> tuple[bytes, float, bool]:
        result = render_job(job.plain(pipeline, data, resolution=resolution), png_level, True)
        return result.image.body, result.confidence, False

    return run


def _paired_times(variants: list[Variant], results, sets) -> None:
    """Each variant's time against its model's first variant, image by image (the median ratio):
    what a foreground step costs, free of the drift between images."""
    for set_name in sets:
        for variant in variants:
            base = next(v for v in variants if v.model == variant.model)
            if base is variant:
                continue
            ours = [r.ms for _, r in results[(variant.label, set_name)]]
            theirs = [r.ms for _, r in results[(base.label, set_name)]]
            ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
            print(f"{set_name}: {variant.label} takes {ratio:.3f}x {base.label} (median per-image ratio)")


def _confidence_cost(registry: ModelRegistry, names: list[str]) -> None:
    """The confidence's own time on each model's operating-resolution masks (median of 20), against
    that model's median request time above."""
    from app.inference import confidence

    for name in names:
        pipeline = registry.get(name)
        if pipeline is None:
            continue
        side = int(pipeline.resolutions[0].split("x")[0])
        # A soft-edged disc and a shifted copy: the sums are the work, whatever the shape.
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        mask = np.clip((side / 3 - np.hypot(yy - side / 2, xx - side / 2)) / (side / 40) + 0.5, 0, 1)
        other = np.roll(mask, side // 20, axis=1)
        two = pipeline.spec.mirror == "max" or pipeline.spec.union is not None
        times = []
        for _ in range(20):
            started = time.perf_counter()
            confidence.score(mask, mask, other) if two else confidence.score(mask)
            times.append((time.perf_counter() - started) * 1000)
        print(
            f"confidence on `{name}` ({side}x{side}{', two views' if two else ''}): {statistics.median(times):.1f} ms"
        )


def _auto_report(variants, results, sets, first: str, then: str, below: float) -> None:
    """Auto against its two models, and what other thresholds would have given (first's and then's
    own runs combined: time = first's + then's where it escalates, an upper bound)."""

    def pick(model: str) -> str:
        return next(v.label for v in variants if v.model == model)

    for set_name in sets:
        a = [r for _, r in results[(pick("auto"), set_name)]]
        f = [r for _, r in results[(pick(first), set_name)]]
        t = [r for _, r in results[(pick(then), set_name)]]
        mean = statistics.mean
        print()
        print(
            f"auto on {set_name} (threshold {below}): escalated {sum(r.escalated for r in a)}/{len(a)} "
            f"({sum(r.escalated for r in a) / len(a):.0%}); IoU {mean(r.iou for r in a):.4f} vs {then} "
            f"{mean(r.iou for r in t):.4f} ({mean(r.iou for r in a) - mean(r.iou for r in t):+.4f}); alpha error "
            f"{mean(r.alpha_error for r in a):.4f} vs {mean(r.alpha_error for r in t):.4f} "
            f"({mean(r.alpha_error for r in a) - mean(r.alpha_error for r in t):+.4f}); mean time "
            f"{mean(r.ms for r in a) / mean(r.ms for r in t):.2f}x {then}'s, {first} alone "
            f"{mean(r.ms for r in f) / mean(r.ms for r in t):.2f}x"
        )
        print(f"| threshold | escalated | IoU − {then}'s | alpha error − {then}'s | time / {then}'s (bound) |")
        print("|---|---|---|---|---|")
        for threshold in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7):
            up = [fr.confidence < threshold for fr in f]
            chosen = [tr if u else fr for fr, tr, u in zip(f, t, up, strict=True)]
            ms = sum(fr.ms + (tr.ms if u else 0) for fr, tr, u in zip(f, t, up, strict=True))
            print(
                f"| {threshold} | {sum(up) / len(up):.0%} | {mean(r.iou for r in chosen) - mean(r.iou for r in t):+.4f} "
                f"| {mean(r.alpha_error for r in chosen) - mean(r.alpha_error for r in t):+.4f} "
                f"| {ms / sum(r.ms for r in t):.2f} |"
            )


if __name__ == "__main__":
    main()
