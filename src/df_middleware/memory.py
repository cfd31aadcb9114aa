"""A long-lived worker's heap: glibc's moving mmap threshold, pinned (docs/benchmarks.md, "Soak").

glibc's malloc serves blocks of 128 KiB and more with `mmap`, returned whole when freed, until one
such block is freed: then it raises its threshold to that block's size (up to 32 MiB on 64-bit),
and later large blocks come from the main heap instead. asyncio reads every socket into a fresh
256 KiB buffer and shrinks it to what arrived, and asyncpg and httpx both read that way, so once
the threshold has moved, the worker's heap fills with holes glibc keeps: in the soak a never-killed
worker's RSS grew about 0.6 MB a minute while the memory it had in use stayed flat (the heap's
free space grew from 1 to 16 MB in 17 minutes; `malloc_trim` gave it back). Pinning the threshold
at glibc's own default (which also stops it moving) kept the heap flat.

Only on glibc (elsewhere `mallopt` is absent and nothing is done), and never over the operator's
own choice: glibc reads `MALLOC_MMAP_THRESHOLD_` from the environment at start.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's `M_MMAP_THRESHOLD` parameter of `mallopt` (malloc.h).
M_MMAP_THRESHOLD = -3
#: glibc's default threshold, kept fixed.
MMAP_THRESHOLD_BYTES = 128 * 1024
OPERATOR_SETTING = "MALLOC_MMAP_THRESHOLD_"


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `nbytes` for this process; whether it was done (False: not
    glibc, or the operator set `MALLOC_MMAP_THRESHOLD_`, which glibc has applied itself)."""
    if os.environ.get(OPERATOR_SETTING):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))
