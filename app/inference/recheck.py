"""The native networks INT8's recheck runs (ModelSpec.int8_recheck_below), loaded when a photo
needs one and released when none has for `idle_s`: kept beside the INT8 networks, they held more
memory at rest than native precision alone (docs/performance.md, "The recheck loaded on demand").

At most one is loaded at a time (RecheckSlot): a photo needing another waits until the one loaded
has no run in flight, then swaps it. So the memory INT8 needs under load is its own networks and
the largest recheck network, about what native needs at rest, and the memory admission counts it
while it is loaded (`resident_bytes`, measured when it is loaded). Loading imports the network
from OpenVINO's compiled-model cache (a fraction of a run), which `warm` fills at start-up.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from app.inference.engine import Engine, Runtime
from app.inference.memory import resident_bytes

log = logging.getLogger("cutout.inference")

Loader = Callable[[], Engine]


class RecheckSlot:
    """Room for one loaded recheck network, shared by every OnDemandEngine of the process."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._cond = threading.Condition()
        self._key: str | None = None
        self._engine: Engine | None = None
        self._users = 0
        self._timer: threading.Timer | None = None
        self._bytes: dict[str, int] = {}  # key -> what it holds loaded (warm), then after its first run
        self.loads = 0  # how many times a network was loaded (the tests read it)

    @property
    def loaded(self) -> str | None:
        return self._key

    @property
    def resident_bytes(self) -> int:
        """What the loaded network holds (0 when none is): counted by the memory admission."""
        key = self._key
        return self._bytes.get(key, 0) if key is not None else 0

    @contextmanager
    def engine(self, key: str, load: Loader) -> Iterator[Engine]:
        before: int | None = None
        with self._cond:
            while self._key not in (None, key) and self._users > 0:
                self._cond.wait()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._key != key:
                self._release_locked()
                before = resident_bytes()
                self._engine = load()
                self._key = key
                self.loads += 1
            engine = self._engine
            self._users += 1
        assert engine is not None
        try:
            yield engine
        finally:
            with self._cond:
                if before is not None:
                    # Weights and activations (allocated by the first run). Other jobs' memory moves
                    # meanwhile too: the largest figure seen is kept.
                    self._bytes[key] = max(self._bytes.get(key, 0), resident_bytes() - before)
                self._users -= 1
                if self._users == 0:
                    self._timer = threading.Timer(self.idle_s, self._expire, (key,))
                    self._timer.daemon = True
                    self._timer.start()
                self._cond.notify_all()

    def warm(self, key: str, load: Loader) -> None:
        """At start-up, one at a time: load the network and release it. A first start compiles it
        into OpenVINO's cache, a later one imports it from there. Not run: on a CPU without bf16
        that would cost a start-up about a second per network; what it holds loaded is the first figure."""
        with self._cond:
            self._release_locked()
            before = resident_bytes()
            engine = load()
            self._bytes[key] = max(0, resident_bytes() - before)
            del engine
            gc.collect()

    def _expire(self, key: str) -> None:
        with self._cond:
            if self._key == key and self._users == 0:
                self._release_locked()

    def _release_locked(self) -> None:
        if self._engine is not None:
            log.info("recheck network %s released", self._key)
        self._engine = None
        self._key = None
        gc.collect()


class OnDemandEngine:
    """An Engine whose network is loaded into `slot` for each run that needs it (see the module)."""

    def __init__(self, key: str, load: Loader, slot: RecheckSlot, runtime: Runtime) -> None:
        self.key = key
        self._load = load
        self._slot = slot
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._slot.engine(self.key, self._load) as engine:
            return engine.run(batch)

    def warm(self) -> None:
        self._slot.warm(self.key, self._load)
