"""Hand freed heap pages back to the OS once many connections have closed.

When thousands of streams close, Python frees their objects but glibc's allocator keeps
the pages, so the process's RSS stays near its peak (5.9x the start after 19,000 SSE
clients left). `malloc_trim(0)` returns free pages from every arena. It walks the whole
heap, so the sweeps call it only after the number of open connections has fallen by at
least TRIM_MIN_CLOSED and by half since its last high point (and once more a round
later). Only memory glibc holds comes back: pymalloc's arenas (Python objects up to 512
bytes) are returned only when wholly empty, so a server run with PYTHONMALLOC=malloc gets
much more back (docs/performance.md). Other C libraries: no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Callable

logger = logging.getLogger(__name__)

TRIM_MIN_CLOSED = 1000


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


MALLOC_TRIM = _malloc_trim()


class Trimmer:
    """Watches one count of open connections (noted once per sweep round) and trims
    after a large drop, and once more at the next round: a crowd that is still closing
    when the drop is seen frees most of its memory after that first trim."""

    __slots__ = ("again", "high", "trims")

    def __init__(self) -> None:
        self.high = 0
        self.trims = 0
        self.again = False

    def note(self, open_now: int) -> None:
        """Record the current count; trim when it has fallen enough since the high point."""
        if open_now > self.high:
            self.high = open_now
        elif self.high - open_now >= max(TRIM_MIN_CLOSED, self.high // 2):
            self.high = open_now
            self.again = True
            self._trim()
        elif self.again:
            self.again = False
            self._trim()

    def _trim(self) -> None:
        self.trims += 1
        if MALLOC_TRIM is not None:
            MALLOC_TRIM()
            logger.debug("returned freed memory to the OS", extra={"action": "malloc_trim"})
