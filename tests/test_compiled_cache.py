"""The cache folder of OpenVINO networks (app/inference/ov_cache.py, used by ov_engine.py): the prepared float graph of
each weights file, shared by the sides compiled from it; OpenVINO's compiled-model cache where a
weights file runs at one side; the mapped weights leaving the resident set once compiled.

Real OpenVINO on U2-Netp (small: each test compiles in well under a second on a quiet box).
The start-up of the whole service against a cache (a second start imports): tests/test_startup.py.
"""

from __future__ import annotations

import logging
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from app.inference.memory import drop_mapped_pages
from app.inference.ov_cache import COMPILED_CACHE_DIR, prepared_folder
from app.inference.ov_engine import OpenVinoEngine
from app.inference.ov_graph import has_native_bf16, prepare_float_network, widen_f16
from app.settings import Settings
from harness import MODELS_DIR, ROOT

# One replica's start, as far as the cache folder goes: both kinds of entry (a shared prepared
# graph for two sides, a compiled network for one), then the output for a fixed input.
REPLICA = """
import sys
from pathlib import Path
import numpy as np
from app.inference.engine import create_engines
from app.settings import Settings
settings = Settings(models_dir=Path(sys.argv[1]))
shared = create_engines(settings, "u2netp", [320, 256])
alone = create_engines(settings, "u2netp", [288])
x = np.random.default_rng(0).normal(size=(1, 3, 320, 320)).astype(np.float32)
np.save(sys.argv[2], shared[320].run(x))
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models"
    models.mkdir()
    (models / "u2netp.onnx").symlink_to(MODELS_DIR / "u2netp.onnx")
    return Settings(models_dir=models)


def _batch(side: int) -> np.ndarray:
    return np.random.default_rng(side).normal(size=(1, 3, side, side)).astype(np.float32)


def test_sides_of_one_weights_file_share_one_prepared_graph_and_match_their_own_compiles(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "cutout.inference"):
        both = OpenVinoEngine.create_sides(settings, "u2netp", [320, 256])
    assert caplog.text.count("weights shared by 2 sides") == 2
    cache = settings.models_dir / COMPILED_CACHE_DIR
    folder = prepared_folder(settings, "u2netp", cache)
    assert (folder / "network.xml").is_file() and (folder / "network.bin").is_file()
    # Shared sides go around OpenVINO's compiled-model cache (an import brings its own weights).
    assert not list(cache.glob("*.blob"))
    alone = {
        side: OpenVinoEngine.create(settings.model_copy(update={"compiled_cache": False}), "u2netp", side)
        for side in (320, 256)
    }
    for side in (320, 256):
        np.testing.assert_array_equal(both[side].run(_batch(side)), alone[side].run(_batch(side)))


def test_one_side_goes_through_the_compiled_model_cache(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "cutout.inference"):
        first = OpenVinoEngine.create(settings, "u2netp", 320).run(_batch(320))
        assert "saved to the compiled-model cache" in caplog.text
        caplog.clear()
        again = OpenVinoEngine.create(settings, "u2netp", 320).run(_batch(320))
        assert "imported from the compiled-model cache" in caplog.text
    np.testing.assert_array_equal(first, again)
    assert len(list((settings.models_dir / COMPILED_CACHE_DIR).glob("*.blob"))) == 1


def test_a_prepared_graph_that_cannot_be_read_is_made_again(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    expected = OpenVinoEngine.create(settings, "u2netp", 320).run(_batch(320))
    folder = prepared_folder(settings, "u2netp", settings.models_dir / COMPILED_CACHE_DIR)
    (folder / "network.xml").write_text("<net cut short")
    for blob in folder.parent.glob("*.blob"):
        blob.unlink()
    with caplog.at_level(logging.WARNING, "cutout.inference"):
        engine = OpenVinoEngine.create(settings, "u2netp", 320)
    assert "preparing it again" in caplog.text
    np.testing.assert_array_equal(engine.run(_batch(320)), expected)


def test_widening_isnet_keeps_its_outputs_to_the_bit() -> None:
    """IS-Net is exported in f16; the CPU plugin widens it to f32 inside each compile. Done once in
    the graph instead (so that sides can share the f32 weights), the outputs are the same."""
    core = ov.Core()
    exported = prepare_float_network(core, MODELS_DIR / "isnet.onnx", 256)
    assert any(op.get_output_element_type(0) == ov.Type.f16 for op in exported.get_ordered_ops())
    widened = exported.clone()
    assert widen_f16(widened) > 0
    assert not any(op.get_output_element_type(0) == ov.Type.f16 for op in widened.get_ordered_ops())
    x = _batch(256)
    for hint in ("f32", "bf16") if has_native_bf16(core) else ("f32",):
        a, b = (core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": hint}) for m in (exported, widened))
        np.testing.assert_array_equal(a({0: x})[0], b({0: x})[0])


def test_read_only_mappings_under_the_folder_leave_the_resident_set_and_read_back_the_same(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    inside, outside = tmp_path / "cache" / "weights.bin", tmp_path / "other.bin"
    inside.parent.mkdir()
    inside.write_bytes(data)
    outside.write_bytes(data)
    with inside.open("rb") as f, outside.open("rb") as g:
        mine = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        other = mmap.mmap(g.fileno(), 0, access=mmap.ACCESS_READ)
        assert mine[:] == data and other[:] == data  # both resident now
        assert drop_mapped_pages(inside.parent) >= len(data)
        assert mine[:] == data  # read back from the file
        mine.close()
        other.close()


@pytest.mark.slow  # starts processes
def test_replicas_starting_together_on_an_empty_folder_share_it(settings: Settings, tmp_path: Path) -> None:
    """Before the lock around compiling through OpenVINO's cache, one replica in a few such starts
    died (SIGBUS: the entry it had mapped was rewritten under it) or failed on the file."""
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", REPLICA, str(settings.models_dir), str(tmp_path / f"out{n}.npy")],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for replica in replicas:
        _, err = replica.communicate(timeout=300)
        assert replica.returncode == 0, err
    cache = settings.models_dir / COMPILED_CACHE_DIR
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [prepared_folder(settings, "u2netp", cache).name]
    assert not [p for p in cache.iterdir() if p.is_dir() and p.name.startswith(".")], "a staging folder was left"
    outputs = [np.load(tmp_path / f"out{n}.npy") for n in range(4)]
    for other in outputs[1:]:
        np.testing.assert_array_equal(outputs[0], other)
