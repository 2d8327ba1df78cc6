"""The memory of a process that serves for weeks: the C allocator's settings, Python's
collector, and what they hold.

glibc's malloc raises its mmap threshold each time a mapped block is freed (up to 32 MiB),
so after the first large output goes, outputs of 64 KiB and more come from the heap. Held
first-in first-out in the output cache between smaller, longer-lived blocks, they leave
holes the heap cannot give back: the server's RSS grew in steps of a few MiB, ~3 MiB per
100,000 jobs of the soak (`python -m benchmarks --only soak`). A fixed threshold keeps such
buffers mapped (each returned to the system when freed), and two arenas keep the server's
few threads from spreading the heap over one arena each. Measured side by side, with these
the soak's slope was ~0.1 MiB per 100,000 jobs (README, "A long-running server").

An operator who sets the allocator (``MALLOC_*`` or ``GLIBC_TUNABLES`` in the environment)
keeps their settings: nothing here is applied then. Not glibc (musl, macOS): nothing.

Python's cyclic collector is the other allocator a long-running process feels: a full
collection walks every tracked object, and a server that imported torch holds ~200,000 of
them (~70-100 ms of its event loop here, each time, for nothing: they live as long as the
process). ``settle()``, once start-up is over, leaves those out of later collections, which
then walk only what jobs keep (``python -m benchmarks --only collector``: ~8 ms, not ~100).
Under steady load Python hardly collects at all (a job frees what it allocates), so its free
lists and any cyclic garbage stay until a full collection: ``IdleCollector`` runs one once
the server has been quiet for a second after jobs, while nobody waits, and counts Python's
blocks right after it, the leak signal without the free lists' thousands of blocks of noise.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("para_attn_server.allocator")

MMAP_THRESHOLD = 64 << 10  # bytes: blocks this large or larger are mapped, never heap
ARENAS = 2
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # mallopt's parameters (malloc.h)
SETTINGS = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_ARENA_MAX, ARENAS))


_MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


@dataclass(frozen=True)
class Heap:
    """What the process's allocators hold now, in bytes (and Python's block count)."""

    in_use: int  # malloc'd and not freed, heap and mapped blocks
    free: int  # freed inside the heap, not given back
    mapped: int  # of in_use, in blocks mapped on their own
    python_blocks: int  # Python's small-object allocator: blocks in use (objects, mostly)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2  # glibc >= 2.33; AttributeError elsewhere
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def operator_chose() -> bool:
    """Whether the environment already sets the allocator."""
    return "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ)


def tune() -> bool:
    """Apply the settings above to this process, at its start (before its threads); whether
    they were applied."""
    if _LIBC is None or operator_chose():
        return False
    applied = all(int(_LIBC.mallopt(option, value)) == 1 for option, value in SETTINGS)
    if not applied:
        log.warning("could not set the allocator's mmap threshold and arenas (mallopt refused)")
    return applied


def settle() -> None:
    """At the end of start-up (imports done, predictor or app built): collect its garbage,
    then keep what is left out of every later collection (``gc.freeze``)."""
    gc.collect()
    gc.freeze()
    # Quick now (the frozen are not walked), and it resets the count a full collection
    # waits on, a quarter of what the last one kept, from the ~200,000 before the freeze.
    gc.collect()


class IdleCollector:
    """A full collection when the server has been quiet (``quiet()`` gave the same count of
    jobs twice in a row, a second apart) and jobs came since the last one."""

    def __init__(self, quiet: Callable[[], int | None], every: float = 1.0) -> None:
        self.quiet = quiet  # jobs submitted so far while nothing runs, waits or is written; else None
        self.every = every
        self.collections = 0
        self.python_blocks = 0  # right after the last one
        self.seconds = 0.0  # the last one took (the event loop waited that long)
        self._jobs = 0  # submitted when it last ran
        self._seen: int | None = None  # what quiet() gave at the last poll

    def poll(self) -> bool:
        """One look (``run`` makes one every ``every`` seconds); whether it collected."""
        jobs, seen = self.quiet(), self._seen
        self._seen = jobs
        if jobs is None or jobs != seen or jobs == self._jobs:
            return False
        start = time.perf_counter()
        gc.collect()
        self.seconds = time.perf_counter() - start
        self.python_blocks, self._jobs = sys.getallocatedblocks(), jobs
        self.collections += 1
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.poll()


def heap() -> Heap | None:
    """The figures now; None where the C library does not say (not glibc 2.33+)."""
    if _LIBC is None:
        return None
    info = _LIBC.mallinfo2()
    return Heap(
        in_use=info.uordblks + info.hblkhd,
        free=info.fordblks,
        mapped=info.hblkhd,
        python_blocks=sys.getallocatedblocks(),
    )
