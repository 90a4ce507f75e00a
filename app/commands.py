"""What the operator commands do (`python -m app serve | probe | models ... | docs | batch`; `keys ...`
in app/key_commands.py); their arguments and help texts are in app/cli.py."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path

from app.inference.weights import WeightsError, fetch, verify
from app.settings import Settings


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from app.http.logs import logging_config
    from app.http.server import server_options
    from app.http.shutdown import DrainingServer
    from app.inference.engine import missing_runtime
    from app.main import create_app

    if problem := missing_runtime(settings):
        sys.exit(problem)  # a plain install without [cpu]/[gpu]: one line, no traceback
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=logging_config(settings.log_level),
        log_level=settings.log_level,
        access_log=False,  # app.http.middleware writes the JSON access log, with request ids
        # After the drain deadline: a last second for responses being written, then cancel.
        timeout_graceful_shutdown=1,
        **server_options(settings),  # head limits, head deadline, keep-alive, connection cap (app/http/server.py)
    )
    server = DrainingServer(config, app.state.drain, settings.drain_delay_s, settings.shutdown_timeout_s)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as `uvicorn.run` does: a supervisor must see that it failed


def cmd_probe(args: argparse.Namespace, settings: Settings) -> None:
    """Exit 0 when the local server answers 200 on the path: the container HEALTHCHECK."""
    url = f"http://127.0.0.1:{args.port or settings.port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError as err:
        sys.exit(f"{url}: {err}")
    if status != 200:
        sys.exit(f"{url}: HTTP {status}")


def cmd_models_fetch(args: argparse.Namespace, settings: Settings) -> None:
    names = args.names or sorted({m.weights for m in settings.models.values()})
    failed = False
    for name in names:
        spec = settings.weights.get(name)
        if spec is None:
            sys.exit(f"unknown weights {name!r}; known: {', '.join(settings.weights)}")
        try:
            fetch(name, spec, settings.models_dir)
        except WeightsError as err:
            print(f"error: {err}", file=sys.stderr)
            failed = True
    if failed:
        sys.exit(1)
    _make_int8(settings, names, args.force_int8)


def _make_int8(settings: Settings, names: list[str], force: bool) -> None:
    """The INT8 networks of the fetched weights, at every side the models serve them (quantization.py)."""
    import importlib.util

    from app.inference import quantization

    wanted = [n for n in names if quantization.recipe_for(n) is not None and quantization.served_sides(settings, n)]
    for name in names:
        if name not in wanted and name in quantization.NO_RECIPE:
            print(f"{name}: stays in native precision: {quantization.NO_RECIPE[name]}")
    if not wanted:
        return
    if settings.precision == "native":
        print("precision is native: no INT8 networks made")
        return
    from app.inference.engine import choose_runtime

    if choose_runtime(settings) != "openvino":
        print("runtime onnxruntime: the INT8 networks are OpenVINO's, none made")
        return
    missing = [m for m in ("nncf", "skimage") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"INT8 networks not made: {', '.join(missing)} not installed (pip install 'cutout[quantize]'; "
            "scripts/setup does it); the service runs these weights in native precision"
        )
        return
    for name in wanted:
        for side in quantization.served_sides(settings, name):
            quantization.make_int8(settings, name, side, force=force)


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> None:
    for name, model in settings.models.items():
        path = settings.weights_path(model.weights)
        try:
            verify(path, settings.weights[model.weights])
            state = "ok"
        except WeightsError as err:
            state = str(err)
        about = f"  ({model.description})" if model.description else ""
        print(f"{name:8} weights={model.weights:24} cost={model.cost} mask_cost={model.mask_cost}  {state}{about}")


def cmd_docs(args: argparse.Namespace, settings: Settings) -> None:
    from app import docgen

    if args.check:
        stale = docgen.stale()
        if stale:
            sys.exit(f"stale generated sections in {', '.join(p.name for p in stale)}: run `python -m app docs`")
        return
    print("generated sections " + ("updated" if docgen.update() else "already current"))


def cmd_batch(args: argparse.Namespace, settings: Settings) -> None:
    import os

    from app.jobs.client import ClientError, run_batch

    key = args.key or os.environ.get("CUTOUT_API_KEY", "")
    if not key:
        sys.exit("give the API key with --key or CUTOUT_API_KEY")
    fields = {"model": args.model} if args.model else {}
    if args.mask:
        fields["output"] = "mask"
    try:
        failed = run_batch(Path(args.folder), Path(args.out), args.url.rstrip("/"), key, fields, args.chunk)
    except ClientError as err:
        sys.exit(f"error: {err}")
    if failed:
        sys.exit(f"{failed} photo(s) failed (listed above); the others are in {args.out}")
