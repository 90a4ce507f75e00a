"""Our models against each other: latency at concurrency 1 through the real service, relative to ghost.

    .venv/bin/python bench/models.py [--rounds 3] [--images DIR] [--models ghost,falcon,...]
    .venv/bin/python bench/models.py --precisions native,int8    # both precisions side by side

One server (uvicorn, the shipped config/models.toml) per precision runs every model; each round
sends every photo once to each model on each server in turn, one request at a time, the order of
the models and of the servers rotating from round to round so that load from others on a shared
box falls on all alike. Reported per model and precision: p50 and p95 latency (client side, whole
request), p50 as a multiple of ghost's (same precision) and, with two precisions, int8's p50 as a
multiple of native's: the ratios are the numbers to quote, not the milliseconds. Also each
server's RSS at rest after start-up and warm-up, and its start-up time (ready to serve).
`name@1024x1024` asks for an operating resolution. The CPU's model and flags are printed first.

Targets (exit status 1 if missed): falcon's p50 at most FALCON_P50_TARGET x ghost's (issue #11, for
each precision); with int8 measured against native, falcon's and aurora's int8 p50 at most
INT8_P50_TARGET x native's (issue #20, a CPU with native bf16; INT8_P50_TARGET_NO_BF16 without).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from cpu import describe
from servers import ROOT, Summary, drive, start_ours

sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402

FALCON_P50_TARGET = 2.5
INT8_P50_TARGET = 0.8
INT8_P50_TARGET_NO_BF16 = 0.55
DEFAULT_MODELS = "ghost,falcon,falcon@1024x1024,aurora"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "testdata" / "rembg")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument(
        "--precisions", default="", help="comma-separated, e.g. native,int8 (default: the configured one)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="for every server, e.g. CUTOUT_MIXED_PRECISION=false: native f32 on a bf16 CPU (repeatable)",
    )
    args = parser.parse_args()

    photos = sorted(args.images.glob("*.jpg"))
    if not photos:
        sys.exit(f"no photos in {args.images}")
    images = [p.read_bytes() for p in photos]
    models = args.models.split(",")
    precisions = [p for p in args.precisions.split(",") if p] or [""]
    env = dict(e.split("=", 1) for e in args.env)
    print(describe())
    print(
        f"{len(images)} photos from {args.images}; {args.rounds} rounds; models {', '.join(models)}; "
        f"precisions {', '.join(p or 'configured' for p in precisions)}; env {env or 'none'}; concurrency 1"
    )

    results = {(m, p): Summary() for p in precisions for m in models}
    servers, started, ready, rest, worked, idle = {}, {}, {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="cutout-models-") as tmp:
        try:
            for precision in precisions:
                overrides = {**env, **({"CUTOUT_PRECISION": precision} if precision else {})}
                t0 = time.perf_counter()
                servers[precision] = start_ours(
                    Path(tmp) / (precision or "server"), args.models_dir.resolve(), overrides, models[0]
                )
                started[precision] = time.perf_counter() - t0
                ready[precision] = servers[precision].rss_mb()
            for precision, server in servers.items():
                for model in models:  # warm-up: first requests pay for lazy allocations
                    drive(server, images[:2], 2, 1, model)
                rest[precision] = server.rss_mb()
            for r in range(args.rounds):
                order = models[r % len(models) :] + models[: r % len(models)]
                for model in order:
                    turn = precisions[r % len(precisions) :] + precisions[: r % len(precisions)]
                    for precision in turn:
                        results[(model, precision)].runs.append(
                            drive(servers[precision], images, len(images), 1, model)
                        )
            for precision, server in servers.items():
                worked[precision] = server.rss_mb()
            # INT8's recheck network is released after recheck_idle_s without a recheck (app/inference/recheck.py).
            time.sleep(Settings().recheck_idle_s + 2.0)
            for precision, server in servers.items():
                idle[precision] = server.rss_mb()
        finally:
            for server in servers.values():
                server.stop()

    missed = []
    for precision in precisions:
        label = precision or "configured"
        print(
            f"\n{label}: ready {started[precision]:.1f} s after launch; RSS at rest {ready[precision]:.0f} MiB when ready, "
            f"{rest[precision]:.0f} MiB after the warm-up requests (every model), {worked[precision]:.0f} MiB after "
            f"the rounds, {idle[precision]:.0f} MiB after {Settings().recheck_idle_s + 2.0:.0f} s idle"
        )
    print(
        "\n| model | precision | p50 ms | p95 ms | p50 vs "
        + models[0]
        + " |"
        + (f" p50 {precisions[-1]} / {precisions[0]} |" if len(precisions) > 1 else "")
    )
    print("|---|---|---|---|---|" + ("---|" if len(precisions) > 1 else ""))
    for model in models:
        for precision in precisions:
            summary = results[(model, precision)]
            p50 = summary.latency_ms(50)
            base = results[(models[0], precision)].latency_ms(50)
            row = f"| `{model}` | {precision or 'configured'} | {p50:.0f} | {summary.latency_ms(95):.0f} | {p50 / base:.2f}x |"
            if len(precisions) > 1:
                first = results[(model, precisions[0])].latency_ms(50)
                row += f" {p50 / first:.2f}x |" if precision == precisions[-1] else " |"
            print(row)
    if models[0] == "ghost" and "falcon" in models:
        for precision in precisions:
            ratio = results[("falcon", precision)].latency_ms(50) / results[("ghost", precision)].latency_ms(50)
            ok = ratio <= FALCON_P50_TARGET
            print(
                f"target: falcon p50 <= {FALCON_P50_TARGET}x ghost's ({precision or 'configured'}): {ratio:.2f}x {'met' if ok else 'MISSED'}"
            )
            missed += [] if ok else ["falcon vs ghost"]
    if precisions == ["native", "int8"]:
        import openvino as ov

        from app.inference.ov_graph import has_native_bf16  # the service's own rule (ONEDNN_MAX_CPU_ISA too)

        bf16 = has_native_bf16(ov.Core()) and env.get("CUTOUT_MIXED_PRECISION", "true") != "false"
        target = INT8_P50_TARGET if bf16 else INT8_P50_TARGET_NO_BF16
        for model in models:
            if model.split("@")[0] in ("falcon", "aurora"):
                ratio = results[(model, "int8")].latency_ms(50) / results[(model, "native")].latency_ms(50)
                ok = ratio <= target
                print(
                    f"target: {model} int8 p50 <= {target}x native's ({'bf16' if bf16 else 'f32'} native): {ratio:.2f}x {'met' if ok else 'MISSED'}"
                )
                missed += [] if ok else [model]
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
