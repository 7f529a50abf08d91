"""glibc's malloc told to keep its mmap threshold where it is, so large buffers go back to
the OS when freed (issue 16: at most +64 MiB at a million revocations).

glibc serves an allocation of at least its mmap threshold (128 KiB at first) with a mapping
of its own, unmapped when freed. But it raises that threshold to the size of any mapped block
freed, up to 32 MiB: once a sidecar has freed a snapshot's ~30 MiB buffer (a new pod loading
the store's copy, store/redis_snapshot.py), every later allocation under ~30 MiB — the pieces
of the next snapshot written, a full read's pages — comes from the heap, and the heap gives
back only what is free at its top. Measured (bench/revocation_scale.py, 1M revocations on
Redis, a new pod from the store's copy): +69 MiB over an empty sidecar after the window, the
heap grown by the snapshot it writes a second after starting; with the threshold fixed at
1 MiB (glibc's `MALLOC_MMAP_THRESHOLD_`), +34, as a restart.

`mallopt(M_MMAP_THRESHOLD)` fixes the threshold and turns the raising off. 1 MiB: Python's
own small objects never reach it (its arenas are mapped apart from malloc), so only the rare
large buffer pays a map and an unmap. Not glibc (musl, macOS), or an operator who set
`MALLOC_MMAP_THRESHOLD_` themselves: nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]

MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # <malloc.h>
_OPERATOR_SETTING = "MALLOC_MMAP_THRESHOLD_"


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `nbytes` for this process; whether it was set."""
    if not sys.platform.startswith("linux") or _OPERATOR_SETTING in os.environ:
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False
