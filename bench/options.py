"""What each output option adds to a cut-out's worker time, against the plain PNG.

In process, with the service's own pipeline (default model falcon, the configured runtime and
PNG settings). The model's work is the same with or without options, so it runs once and only
what differs is timed: the finishing (shadow, crop, background, resize, encode) of each option
against the plain PNG encode, interleaved in shuffled rounds so that other load on the machine
falls on all alike. Ratio = (plain request + added) / plain request, the plain request being the
whole worker time (decode, model, PNG) measured in the same rounds; in wall time and in the
process's CPU time (which other load on the machine stretches far less). The photo is scaled to
~1 MP (the issue's yardstick); the JSON answer adds base64 and JSON encoding, as the route does.
`image_url` is timed apart: a fetch from a loopback HTTP server (the network is the client's).

    .venv/bin/python bench/options.py [--image PATH] [--rounds N] [--model NAME]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cpu import describe  # noqa: E402  (bench/cpu.py: the CPU line every bench prints)

from app.http.client_address import parse_networks  # noqa: E402
from app.imaging import codec  # noqa: E402
from app.inference.registry import ModelRegistry  # noqa: E402
from app.removal import fetch_transport, job, options  # noqa: E402
from app.removal.render import finish_cutout, render  # noqa: E402
from app.settings import Settings  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "testdata" / "rembg"
CASES: dict[str, dict[str, str]] = {
    "crop_to_bbox": {"crop_to_bbox": "true"},
    "crop_margin=5%": {"crop_margin": "5%"},
    "output_format=webp (lossless)": {"output_format": "webp"},
    "output_format=webp quality=80": {"output_format": "webp", "quality": "80"},
    "output_format=jpeg (white)": {"output_format": "jpeg"},
    "bg_color=#ffffff (PNG, RGB)": {"bg_color": "#ffffff"},
    "bg_color=#00000080 (PNG, RGBA)": {"bg_color": "#00000080"},
    "bg_blur=12": {"bg_blur": "12"},
    "bg_image": {},  # the second photo, below
    "shadow=true": {"shadow": "true"},
    "max_side=512": {"max_side": "512"},
    "crop + jpeg + bg_color (shop photo)": {"crop_to_bbox": "true", "output_format": "jpeg", "bg_color": "white"},
    "sync_mode (JSON, data URI)": {"sync_mode": "true"},
}


def photo_bytes(path: Path, megapixels: float = 1.0) -> tuple[bytes, tuple[int, int]]:
    img = Image.open(path).convert("RGB")
    scale = (megapixels * 1e6 / (img.width * img.height)) ** 0.5
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue(), img.size


def loopback_fetch_ms(data: bytes, rounds: int) -> float:
    class Serve(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
    allow = parse_networks(["127.0.0.1/32"])

    async def one() -> float:
        started = time.perf_counter()
        got = await fetch_transport.fetch_image(
            url, allow=allow, max_bytes=26_214_400, connect_timeout_s=5, total_timeout_s=20
        )
        assert got == data
        return time.perf_counter() - started

    times = [anyio.run(one) for _ in range(rounds)]
    server.shutdown()
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, default=PHOTOS / "animal-3.jpg")
    parser.add_argument("--background", type=Path, default=PHOTOS / "car-2.jpg")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    print(describe())

    settings = Settings()
    model = args.model or settings.default_model
    settings = settings.only_models([model])
    pipeline = ModelRegistry.load(settings).get(model)
    assert pipeline is not None
    data, size = photo_bytes(args.image)
    background, _ = photo_bytes(args.background, 0.5)

    # The model's part is the same for every option: run it once, then time only what differs
    # (finishing and encoding), interleaved; the plain request's full time is the yardstick.
    decoded = codec.decode(data)
    rgba = pipeline.cutout(decoded)
    level, fast = settings.png_compress_level, settings.png_fast
    work: dict[str, Callable[[], object]] = {"plain PNG (today)": lambda: codec.encode_png(rgba, level, fast)}
    for name, fields in CASES.items():
        chosen = options.parse(fields, background if name == "bg_image" else None, mask=False)

        def finish(chosen: options.Options = chosen) -> object:
            rendered = finish_cutout(rgba, decoded.rgb, chosen, level, fast)
            if chosen.sync_mode:  # what the route adds for a JSON answer
                url = "data:image/png;base64," + base64.b64encode(rendered.body).decode("ascii")
                return json.dumps({"image": {"url": url, "file_size": len(rendered.body)}})
            return rendered

        work[name] = finish

    times: dict[str, list[float]] = {name: [] for name in work}
    cpu: dict[str, list[float]] = {name: [] for name in work}
    full: list[float] = []
    full_cpu: list[float] = []
    for call in work.values():  # warm every path once
        call()
    for _ in range(args.rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        render(job.plain(pipeline, data), level, fast)
        full.append(time.perf_counter() - started)
        full_cpu.append(time.process_time() - started_cpu)
        order = list(work)
        random.shuffle(order)
        for name in order:
            started, started_cpu = time.perf_counter(), time.process_time()
            work[name]()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)

    # Wall time, and CPU time of the process (all its threads): CPU time is what an option costs
    # us, and other load on the machine stretches it far less than wall time.
    request, request_cpu = statistics.median(full), statistics.median(full_cpu)
    plain = statistics.median(times["plain PNG (today)"])
    plain_cpu = statistics.median(cpu["plain PNG (today)"])
    print(
        f"photo {args.image.name} scaled to {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.2f} MP), model {model}, "
        f"{args.rounds} interleaved rounds"
    )
    print(
        f"plain cut-out, whole worker time (decode, model, PNG): median {request * 1000:.1f} ms wall, "
        f"{request_cpu * 1000:.1f} ms CPU; of which the PNG encode {plain * 1000:.1f} ms wall"
    )
    print(f"{'option':40} {'added wall ms':>13} {'x wall':>7} {'added CPU ms':>13} {'x CPU':>6}")
    for name in times:
        added = statistics.median(times[name]) - plain
        added_cpu = statistics.median(cpu[name]) - plain_cpu
        print(
            f"{name:40} {added * 1000:13.1f} {(request + added) / request:6.2f}x "
            f"{added_cpu * 1000:13.1f} {(request_cpu + added_cpu) / request_cpu:5.2f}x"
        )
    print(
        f"{'image_url fetch (loopback, same JPEG)':40} {loopback_fetch_ms(data, args.rounds):10.1f}   (before the worker)"
    )


if __name__ == "__main__":
    main()
