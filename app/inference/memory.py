"""Give big freed buffers back to the OS at once, so RSS returns to its baseline after a large image."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

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
