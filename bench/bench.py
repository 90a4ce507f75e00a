"""Side-by-side benchmark: this service against rembg's own server (`rembg s`), same weights, same box.

    .venv/bin/python bench/bench.py                      # ghost vs rembg u2netp: 10 rounds x 12 requests
    .venv/bin/python bench/bench.py --quick              # fewer rounds and requests (help: --quick)
    .venv/bin/python bench/bench.py --model aurora       # aurora vs rembg's dis_custom on the same IS-Net file
    .venv/bin/python bench/bench.py --images DIR         # photos to send (default ../shared/testdata/rembg)

One run:
1. makes (once) a separate virtualenv `bench/.venv-rembg` with `rembg[cpu,cli]` at the version our
   venv has (servers.py: its pins conflict with ours);
2. starts both servers on 127.0.0.1 with the same weights (--model ghost: u2netp, U2NET_HOME
   points rembg at our models/ folder, so it downloads nothing; --model aurora: models/isnet.onnx,
   which rembg's dis_custom session loads from extras={"model_path": ...}) and warms both up;
3. measures the floor (floors.py): bare inference of that network on this machine, in onnxruntime fp32
   (what rembg runs; not for IS-Net, seconds a run), in OpenVINO fp32, and in OpenVINO with our
   service's graph (bf16 where the weights allow, on CPUs with native bf16); "of floor" is
   against the fastest;
4. drives both servers alternately (A B, then B A, ...) with the same images, closed loop, a fixed
   request count per round, at each concurrency; prints requests/s, p50/p95 latency, server CPU
   seconds per image, peak RSS and response bytes, plus our/rembg ratios;
5. checks: our mask has IoU >= 0.99 with rembg's on every image (ghost: the same masks as
   rembg's u2netp); peak RSS with all three models loaded under load <= MAX_RSS_MB; a
   12-megapixel JPEG completes on every model and the server's memory returns to its baseline.

The machine may be shared: absolute times are noisy, which is why the servers alternate and the
ratios are the numbers to quote. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cpu import describe  # noqa: E402
from floors import openvino_floor, ort_floor, preprocessed  # noqa: E402
from servers import Server, Summary, drive, start_ours, start_rembg  # noqa: E402

from app.settings import Settings  # noqa: E402

MIN_IOU = 0.99
# Peak RSS with all three models loaded under load (IS-Net at 1024 included).
MAX_RSS_MB = 1536


@dataclass(frozen=True)
class Pair:
    """One of our models against `rembg s` running the same weights file."""

    ours: str  # our model name
    rembg_model: str  # rembg's session name
    weights: str  # file in models/
    side: int  # the network's input side (for the floors)
    concurrency: tuple[int, ...]
    throughput_target: float  # ours / rembg at the highest concurrency, at least
    p50_target: float  # ours / rembg at concurrency 1, at most
    rounds: tuple[int, int]  # (rounds, requests per round) for the full run; fewer with --quick
    floor_runs: int
    # Our model whose masks must match rembg's. None: one added for the run (PARITY_MODEL), our
    # model's network alone, once, at `side`: aurora keeps per pixel the larger of two runs (the
    # photo and its mirror) and falcon joins ghost's mask, so neither is what rembg runs.
    parity: str | None


PARITY_MODEL = "parity"


def parity_env(pair: Pair) -> dict[str, str]:
    """Server environment adding PARITY_MODEL (merged into config/models.toml's models) where the pair needs it."""
    if pair.parity is not None:
        return {}
    # Normalised as rembg's sessions do (pixels / the image's maximum, then (x - 0.5) / 1 for IS-Net),
    # so that the check compares the engines on the same input. The shipped models normalise as
    # the export was made, (pixel - 128) / 256: on a photo whose brightest pixel is far from 255
    # the two inputs differ, and so do the masks (docs/performance.md).
    alone = (
        Settings()
        .models[pair.ours]
        .model_copy(
            update={
                "description": f"{pair.ours}'s network alone, once, at {pair.side}x{pair.side}, rembg's input",
                "input_size": pair.side,
                "resolutions": {},
                "mirror": "none",
                "union": None,
                "foreground": "none",
                "scale": "image_max",
                "mean": (0.5, 0.5, 0.5),
                "std": (1.0, 1.0, 1.0),
            }
        )
    )
    return {"CUTOUT_MODELS": json.dumps({PARITY_MODEL: alone.model_dump(mode="json")})}


PAIRS = {
    "ghost": Pair("ghost", "u2netp", "u2netp.onnx", 320, (1, 4), 1.3, 0.8, (10, 12), 30, "ghost"),
    # rembg's dis_custom session takes any IS-Net file through extras={"model_path": ...}. Its runs
    # take seconds each in onnxruntime here, hence fewer, shorter rounds.
    "aurora": Pair("aurora", "dis_custom", "isnet.onnx", 1024, (1, 2), 1.5, 0.7, (4, 6), 5, None),
}
# Memory "returns to baseline" when RSS after the big uploads is within this of before.
RSS_SLACK_MB = 40


# ---------------------------------------------------------------- images


def load_images(folder: Path) -> tuple[list[tuple[str, bytes]], str]:
    photos = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if photos:
        return [(p.name, p.read_bytes()) for p in photos], f"{len(photos)} photos from {folder}"
    return generated_images(), f"no photos in {folder}: 8 generated images"


def synthetic_photo(width: int, height: int, seed: int) -> np.ndarray:
    """A coloured blob subject on a smooth gradient with sensor-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.4, 0.6)
    rx, ry = width * rng.uniform(0.15, 0.3), height * rng.uniform(0.2, 0.35)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    background = 200 + 40 * (yy / height)[..., None] * np.array([1.0, 0.9, 0.7], np.float32)
    rgb = np.where(inside[..., None], rng.uniform(20, 160, 3).astype(np.float32), background)
    rgb += rng.normal(0, 6, rgb.shape).astype(np.float32)
    return rgb.clip(0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def generated_images() -> list[tuple[str, bytes]]:
    sizes = [(1000, 667), (640, 480), (1440, 1080), (800, 1200)]
    return [(f"generated-{i}.jpg", jpeg(synthetic_photo(*sizes[i % 4], seed=i))) for i in range(8)]


# ---------------------------------------------------------------- checks


def mask_of(response: requests.Response) -> np.ndarray:
    img = Image.open(io.BytesIO(response.content))
    return np.asarray(img.getchannel("A") if img.mode in ("RGBA", "LA") else img.convert("L")) >= 128


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def check_parity(ours: Server, rembg: Server, images: list[tuple[str, bytes]], pair: Pair) -> bool:
    parity = pair.parity or PARITY_MODEL
    print(f"\nSame cut-outs: {parity} mask vs rembg {pair.rembg_model} mask, IoU >= {MIN_IOU} on every image")
    ok = True
    with requests.Session() as session:
        for name, data in images:
            ours_mask = mask_of(ours.post(session, data, True, parity))
            score = iou(ours_mask, mask_of(rembg.post(session, data, True, None)))
            ok &= score >= MIN_IOU
            print(f"  {name:24} IoU {score:.4f}{'' if score >= MIN_IOU else '  FAIL'}")
    return ok


def check_memory(ours: Server, images: list[bytes], count: int) -> bool:
    """All three models under load stay under MAX_RSS_MB; a 12 MP JPEG completes and memory comes back."""
    models = ["ghost", "falcon", "aurora"]
    lock = threading.Lock()
    jobs = iter(range(count))
    failures: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(jobs, None)
                if i is None:
                    return
                r = ours.post(session, images[i % len(images)], False, models[i % 3])
                if r.status_code != 200:
                    failures.append(r.text[:200])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peak = ours.peak_rss_mb()
    ok = not failures and peak <= MAX_RSS_MB
    print(
        f"\nMemory: peak RSS since start, all three models under load (concurrency 4): {peak:.0f} MB "
        f"(limit {MAX_RSS_MB}){'' if ok else '  FAIL ' + '; '.join(failures[:1])}"
    )

    big = jpeg(synthetic_photo(4000, 3000, seed=12), quality=92)
    baseline = ours.rss_mb()
    with requests.Session() as session:
        for model in models:
            ours.reset_peak_rss()
            t0 = time.perf_counter()
            r = ours.post(session, big, False, model)
            elapsed = time.perf_counter() - t0
            done = r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (4000, 3000)
            ok &= done
            print(
                f"  12 MP JPEG ({len(big) >> 10} KiB), {model:6}: {'200' if done else r.status_code} in {elapsed:.1f} s, "
                f"peak RSS {ours.peak_rss_mb():.0f} MB"
            )
    time.sleep(1.0)
    after = ours.rss_mb()
    back = after <= baseline + RSS_SLACK_MB
    ok &= back
    print(
        f"  RSS before {baseline:.0f} MB, after {after:.0f} MB: "
        f"{'back to baseline' if back else 'NOT back to baseline  FAIL'} (slack {RSS_SLACK_MB} MB)"
    )
    return ok


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="half the rounds, 2/3 of the requests: ghost 5 x 8 instead of 10 x 12, aurora 2 x 4 instead of 4 x 6",
    )
    parser.add_argument(
        "--model",
        choices=sorted(PAIRS),
        default="ghost",
        help="ghost: vs rembg u2netp; aurora: vs rembg dis_custom on the same IS-Net file",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", help="default: 1 4 (ghost), 1 2 (aurora)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="CUTOUT_KEY=VALUE",
        help="setting for our server (compare configurations), repeatable",
    )
    args = parser.parse_args()

    # Many short rounds, servers alternating (A B, B A, ...): load from others on a shared box
    # then falls on both alike. Each round starts one image further on.
    pair = PAIRS[args.model]
    concurrency = args.concurrency or list(pair.concurrency)
    rounds, count = (max(2, pair.rounds[0] // 2), max(4, pair.rounds[1] * 2 // 3)) if args.quick else pair.rounds
    named_images, described = load_images(args.images)
    images = [data for _, data in named_images]
    models_dir = args.models_dir.resolve()
    weights = models_dir / pair.weights
    overrides = dict(item.split("=", 1) for item in args.env)

    print(f"machine: {describe()}; onnxruntime {ort.__version__}, rembg {importlib.metadata.version('rembg')}")
    print(
        f"{pair.ours} vs rembg s {pair.rembg_model} on {pair.weights}; "
        f"images: {described}; {rounds} rounds x {count} requests per server and concurrency"
        + (f"; ours with {overrides}" if overrides else "")
    )

    with tempfile.TemporaryDirectory(prefix="cutout-bench-") as tmp:
        workdir = Path(tmp)
        servers = [start_ours(workdir, models_dir, {**parity_env(pair), **overrides}, pair.ours)]
        try:
            servers.append(start_rembg(workdir, models_dir, pair.rembg_model, pair.weights))
            for server in servers:  # warm-up: rembg builds its session on the first request
                drive(server, images, len(images) if pair.side < 1024 else 2, 2)
            x = preprocessed(images[0], pair.side)
            runs = max(3, pair.floor_runs // 3) if args.quick else pair.floor_runs
            floors = {
                # IS-Net in onnxruntime takes seconds a run here: rembg's own rows show it.
                "onnxruntime fp32": ort_floor(weights, x, runs) if pair.side < 1024 else None,
                "OpenVINO fp32": openvino_floor(weights, x, runs, mixed=False),
                "OpenVINO as our service (bf16 where the weights allow)": openvino_floor(weights, x, runs, mixed=True),
            }
            for runtime, floor in floors.items():
                if floor:
                    print(
                        f"floor (bare {runtime}, {pair.weights} at {pair.side}x{pair.side}): {floor[0]:.0f} ms "
                        f"per image on all cores, {floor[1]:.2f} images/s with one single-thread run per core"
                    )
            floor_rps = max(floor[1] for floor in floors.values() if floor)

            results: dict[tuple[str, int], Summary] = {}
            for c in concurrency:
                for r in range(rounds):
                    batch = [images[(r * count + i) % len(images)] for i in range(count)]
                    for server in servers if r % 2 == 0 else servers[::-1]:
                        results.setdefault((server.name, c), Summary()).runs.append(drive(server, batch, count, c))
            report(results, servers, concurrency, floor_rps, pair)
            ok = check_parity(servers[0], servers[1], named_images, pair)
            servers[1].stop()  # the memory check runs alone
            ok &= check_memory(servers[0], images, 3 * len(images) if not args.quick else 12)
        finally:
            for server in servers:
                server.stop()
    print("\nall checks passed" if ok else "\nSOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


def report(
    results: dict[tuple[str, int], Summary],
    servers: list[Server],
    concurrencies: list[int],
    floor_rps: float,
    pair: Pair,
) -> None:
    """The table and the ratios; the speed targets are reported, not enforced (a shared box is noisy)."""
    print(
        f"\n{'server':8} {'conc':>4} {'req/s':>7} {'of floor':>8} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'CPU s/img':>9} {'peak RSS MB':>11} {'resp KiB':>8}"
    )
    for c in concurrencies:
        for server in servers:
            s = results[(server.name, c)]
            print(
                f"{server.name:8} {c:>4} {s.throughput:7.2f} {s.throughput / floor_rps:8.0%} {s.latency_ms(50):7.0f} "
                f"{s.latency_ms(95):7.0f} {s.cpu_per_image:9.3f} {s.peak_rss:11.0f} {s.median_bytes / 1024:8.0f}"
            )
    ours, theirs = servers[0].name, servers[1].name
    print("\nratios (ours / rembg):")
    for c in concurrencies:
        a, b = results[(ours, c)], results[(theirs, c)]
        print(
            f"  concurrency {c}: throughput {a.throughput / b.throughput:.2f}x, p50 {a.latency_ms(50) / b.latency_ms(50):.2f}x, "
            f"p95 {a.latency_ms(95) / b.latency_ms(95):.2f}x, CPU/img {a.cpu_per_image / b.cpu_per_image:.2f}x, "
            f"bytes {a.median_bytes / b.median_bytes:.2f}x"
        )
    top, one = max(concurrencies), min(concurrencies)
    thr = results[(ours, top)].throughput / results[(theirs, top)].throughput
    p50 = results[(ours, one)].latency_ms(50) / results[(theirs, one)].latency_ms(50)
    print(
        f"  target: throughput at concurrency {top} >= {pair.throughput_target}x: {thr:.2f}x "
        f"{'met' if thr >= pair.throughput_target else 'MISSED'}; p50 at concurrency {one} <= {pair.p50_target}x: "
        f"{p50:.2f}x {'met' if p50 <= pair.p50_target else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
