"""The cache folder of the OpenVINO networks (`models_dir/ov-cache`, compiled_cache_dir): the
prepared float graph of each weights file (prepared_network), which every side compiled from it
shares, and OpenVINO's own compiled-model cache (compile_cached), used where a weights file runs
at one side only (an imported network brings its own copy of the weights). The figures:
docs/performance.md, "Start-up and memory at rest".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openvino as ov

from app.inference.ov_graph import prepare_float_network, split_concat_convolutions, widen_f16
from app.settings import Settings

log = logging.getLogger("cutout.inference")

# Under models_dir: OpenVINO's compiled-model cache (compiled_cache_dir).
COMPILED_CACHE_DIR = "ov-cache"

# In the cache folder: held by the process compiling through OpenVINO's cache (compile_cached).
COMPILE_LOCK = ".compile.lock"

# Bumped whenever what prepared_network makes changes (prepare_float_network, widen_f16): the
# folders it saved before are then neither read nor overwritten, a new one is made beside them.
PREPARED_VERSION = 1


def prepared_folder(settings: Settings, weights_name: str, cache: Path) -> Path:
    """Where prepared_network keeps the graph of these weights: named by their checksum (verified at
    start), PREPARED_VERSION and OpenVINO's version, so another file, recipe or runtime never reads it."""
    spec = settings.weights[weights_name]
    identity = spec.sha256 or spec.md5
    if not identity:
        stat = settings.weights_path(weights_name).stat()
        identity = f"{stat.st_size}-{stat.st_mtime_ns}"
    key = hashlib.sha256(f"{identity} {PREPARED_VERSION} {ov.get_version()}".encode()).hexdigest()[:16]
    return cache / f"{Path(spec.file).stem}-f32-{key}"


def prepared_network(core: ov.Core, settings: Settings, weights_name: str) -> ov.Model:
    """The float graph every side of these weights is compiled from: prepare_float_network at the
    exported size, f32 (widen_f16). Read from the cache folder where a start before saved it (its
    weights mapped from the file: reading it takes milliseconds and copies nothing), else made from
    the weights file and saved there, then read back, so the first start holds it as later ones do.

    Safe for replicas sharing the folder: each saves into a folder of its own and renames it into
    place in one step; one that finds the name taken reads the one already there. A saved graph
    that cannot be read is made again in memory (a slower start, never a wrong one)."""
    cache = compiled_cache_dir(settings)
    folder = prepared_folder(settings, weights_name, cache) if cache is not None else None
    if folder is not None and (folder / "network.xml").is_file():
        try:
            return core.read_model(str(folder / "network.xml"))
        except RuntimeError as err:
            log.warning("%s: cannot read %s (%s); preparing it again", weights_name, folder, err)
            folder = None
    network = prepare_float_network(core, settings.weights_path(weights_name), split=False)
    widen_f16(network)
    split_concat_convolutions(network)
    if folder is None:
        return network
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would keep replicas running as another user out
        ov.save_model(network, str(staging / "network.xml"), compress_to_fp16=False)
        try:
            staging.rename(folder)
        except OSError:  # another replica saved it first: same graph, keep theirs
            for entry in staging.iterdir():
                entry.unlink()
            staging.rmdir()
        return core.read_model(str(folder / "network.xml"))
    except (OSError, RuntimeError) as err:
        log.warning("%s: cannot keep its prepared graph in %s (%s)", weights_name, folder.parent, err)
        return network


def compiled_cache_dir(settings: Settings) -> Path | None:
    """Where OpenVINO keeps compiled networks (CACHE_DIR) so that a later start imports them instead
    of compiling: `models_dir/ov-cache`, else `data_dir/ov-cache` where the models folder is read-only
    (the container image); None where the setting is off or neither is writable.

    Replicas may share it: OpenVINO names each entry by a hash of the network, the device and the
    compile settings, so replicas that compile the same thing write the same entry; they take turns
    to compile through it (compile_cached's lock: OpenVINO writes entries in place), and an entry it cannot
    import is compiled again instead: that start is only slower, never wrong. The prepared graphs
    are saved by rename (prepared_network). tests/test_compiled_cache.py starts replicas together."""
    if not settings.compiled_cache:
        return None
    for parent in (settings.models_dir, settings.data_dir):
        folder = parent / COMPILED_CACHE_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    log.warning("compiled-model cache off: neither %s nor %s is writable", settings.models_dir, settings.data_dir)
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing) between processes, held for the block; the
    block runs unlocked, with a warning, where the file or its filesystem cannot lock (some network
    filesystems): replicas that start together may then race as before the lock, never fail here."""
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(path.open("a"))
            fcntl.flock(handle, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        except OSError as err:
            log.warning("compiling through the cache without its lock (%s): %s", path, err)
        yield


def compile_cached(
    core: ov.Core, model: ov.Model | str, config: dict[str, object], cache: Path | None, what: str
) -> tuple[ov.CompiledModel, str]:
    """compile_model, through OpenVINO's compiled-model cache in `cache` (None: not). Replicas that
    write the same entry at once can make OpenVINO fail on the file itself (seen: "cannot set
    permissions: No such file or directory", tests/test_compiled_cache.py); that start then
    compiles without the cache: slower, never failed. A network that does not compile fails again.
    Returns the compiled network and how it was got, for the start-up log."""
    if cache is None:
        return core.compile_model(model, "CPU", config), "compiled"
    try:
        # One process at a time compiles through the cache: OpenVINO writes an entry in place, and a
        # replica importing (mapping) it meanwhile died of SIGBUS when it was cut short under it
        # (4 replicas started at once on an empty folder: 2 of 32 before the lock, none after).
        with _locked(cache / COMPILE_LOCK):
            compiled = core.compile_model(model, "CPU", {**config, "CACHE_DIR": str(cache)})
    except RuntimeError as err:
        log.warning("%s: compiled-model cache unusable this time, compiling without it: %s", what, str(err).strip())
        return core.compile_model(model, "CPU", config), "compiled without the compiled-model cache (see above)"
    if compiled.get_property("LOADED_FROM_CACHE"):
        return compiled, "imported from the compiled-model cache"
    return compiled, "compiled, saved to the compiled-model cache"
