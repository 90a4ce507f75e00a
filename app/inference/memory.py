"""Memory: big freed buffers go back to the OS at once (RSS returns to its baseline after a large
image), jobs are admitted by their estimated peak within a budget (MemoryBudget), and the networks'
weights mapped from the compiled-model cache leave the resident set once compiled (drop_mapped_pages)."""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("cutout.inference")

# glibc's mallopt parameter number (malloc.h).
_M_MMAP_THRESHOLD = -3
# Every allocation from 1 MiB up (image-sized numpy arrays, PIL buffers) gets its own mapping,
# unmapped on free. A fixed value also turns off glibc's adaptive threshold, which after the
# first large free would serve big images from the heap and keep that memory after the request.
MMAP_THRESHOLD_BYTES = 1 << 20


def release_large_frees_to_os() -> bool:
    """Fix glibc's mmap threshold; False (and nothing changed) on a C library without mallopt."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.info("mallopt unavailable (not glibc): freed image buffers may stay in the heap")
    return ok


def resident_bytes() -> int:
    """This process's resident set size now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class MemoryBusy(Exception):
    """No room in the memory budget within the wait allowed."""


class MemoryBudget:
    """Admission by memory: jobs hold their estimated peak from admission until their thread ends;
    the sum stays within `capacity` bytes. Waiters are admitted first come, first served (a big job
    is not overtaken forever by small ones); one that waits longer than `wait_s` gets MemoryBusy.
    A job larger than the whole capacity is admitted alone, when nothing else holds any."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity = max(0, capacity)
        self.wait_s = wait_s
        self.held = 0
        # Memory held outside the jobs that counts against the budget too: answers written but not yet
        # read by their clients (app/http/unsent.py). The one-job-alone exception looks at jobs only.
        self.outside: Callable[[], int] = lambda: 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, need: int) -> bool:
        return self.held + self.outside() + need <= self.capacity or self.held == 0

    def wake(self) -> None:
        """Memory outside the jobs was freed: admit the waiters that fit now."""
        self._admit()

    async def acquire(self, need: int) -> int:
        """Wait for `need` bytes; returns what was taken (release exactly that)."""
        need = min(need, self.capacity) if self.capacity else need
        if not self._waiters and self._fits(need):
            self.held += need
            return need
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (need, admitted)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(admitted), self.wait_s)
        except TimeoutError:
            if admitted.done():
                return need  # admitted just as the wait ran out
            self._withdraw(entry)
            raise MemoryBusy() from None
        except asyncio.CancelledError:
            if admitted.done():
                self.release(need)
            else:
                self._withdraw(entry)
            raise
        return need

    def _withdraw(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        self._waiters.remove(entry)
        entry[1].cancel()
        self._admit()  # the head of the queue may have changed

    def release(self, taken: int) -> None:
        self.held -= taken
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            need, admitted = self._waiters.popleft()
            self.held += need
            admitted.set_result(None)


# madvise(2) advice: drop this process's pages of the range (file-backed ones are read again from the
# file if ever touched; the file's pages stay in the page cache, which the kernel reclaims at need).
_MADV_DONTNEED = 4


def drop_mapped_pages(folder: Path) -> int:
    """Take the pages of every read-only mapping of a file under `folder` out of this process's
    resident set; returns the bytes of the mappings advised (0 where /proc or madvise is unavailable).

    For the networks' weights mapped from the compiled-model cache (ov_cache.py): OpenVINO reads
    them once, at compile, to make its own packed copy, and never again (measured: RSS stays down
    through inferences, outputs unchanged; docs/performance.md). Only mappings without write
    permission are advised, so no private modification can be lost: a page touched again is read
    back from the file.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except (OSError, AttributeError):
        return 0
    root = str(folder.resolve()) + os.sep
    advised = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1] or not fields[5].rstrip("\n").startswith(root):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            advised += end - start
    return advised
