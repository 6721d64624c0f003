"""The server's memory allocator: jemalloc when the machine has it, so a crowd's memory
goes back to the OS after it leaves.

CPython's own allocator (pymalloc) keeps each 1 MiB arena while any object in it lives, and
a few long-lived objects made during a crowd are enough to keep most of them: after 5,000
WebSockets closed, RSS stayed at 1.44-1.49x the start. glibc's malloc gives the memory back
but costs 8-15% throughput; jemalloc gave it back (1.10-1.13x) at pymalloc's throughput
(docs/performance.md). An allocator is chosen before the interpreter starts, so `serve`
re-executes itself once with `LD_PRELOAD` and `PYTHONMALLOC=malloc` in its environment.
`ALLOCATOR=pymalloc` keeps CPython's own; `ALLOCATOR=jemalloc` refuses to start without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
import platform
import sys
from collections.abc import Callable, Mapping
from typing import Literal

from backend.core.errors import ConfigError

logger = logging.getLogger(__name__)

Choice = Literal["auto", "jemalloc", "pymalloc"]
CHOSEN = "PGCAST_ALLOCATOR"
"""Set in the environment once the choice is made: the re-executed process (and the worker
processes it starts) keep it instead of choosing again."""
BEFORE = "PGCAST_ALLOCATOR_BEFORE"
"""The variables jemalloc's environment changed, as they were (JSON; null: unset)."""
JEMALLOC_CONF = "background_thread:true"
"""Freed pages are returned by a background thread, not only on the next allocation."""
ARENAS_ALL = 4096
"""jemalloc's `MALLCTL_ARENAS_ALL`: `arena.4096.purge` purges every arena."""


@functools.cache
def jemalloc_library() -> str | None:
    """The jemalloc library the dynamic linker would load, or None."""
    return ctypes.util.find_library("jemalloc")


def environment(
    choice: Choice, env: Mapping[str, str], jemalloc: str | None
) -> dict[str, str] | None:
    """The environment to run the server under, given the jemalloc library the machine
    has (None: none), or None to keep the current one."""
    if CHOSEN in env:
        return None
    library = jemalloc if choice != "pymalloc" else None
    if library is None:
        if choice == "jemalloc":
            raise ConfigError(
                "ALLOCATOR=jemalloc, but no jemalloc library was found"
                " (Debian and Ubuntu: apt-get install libjemalloc2)"
            )
        return {**env, CHOSEN: "pymalloc"}
    added = {
        "LD_PRELOAD": " ".join(filter(None, [env.get("LD_PRELOAD", ""), library])),
        "PYTHONMALLOC": "malloc",
        "MALLOC_CONF": env.get("MALLOC_CONF", JEMALLOC_CONF),
    }
    before = {name: env.get(name) for name in added}
    return {**env, **added, CHOSEN: "jemalloc", BEFORE: json.dumps(before)}


def for_other_programs(env: Mapping[str, str]) -> dict[str, str]:
    """`env` as it was before `environment` chose jemalloc: other programs started from the
    server (the embedded PostgreSQL) run under their own allocator."""
    if BEFORE not in env:
        return dict(env)
    restored = {k: v for k, v in env.items() if k not in (CHOSEN, BEFORE)}
    for name, value in json.loads(env[BEFORE]).items():
        if value is None:
            restored.pop(name, None)
        else:
            restored[name] = value
    return restored


def run_under(choice: Choice) -> None:
    """Re-execute this command under the chosen allocator if it is not running under it yet;
    otherwise return (and log which allocator this process has)."""
    found = None if CHOSEN in os.environ else jemalloc_library()
    env = environment(choice, os.environ, found)
    if env is not None and env.get(CHOSEN) == "jemalloc":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # noqa: S606 - this command again
    if env is not None:
        os.environ[CHOSEN] = env[CHOSEN]
    logger.info("memory allocator: %s", in_use(), extra={"action": "allocator"})


def _jemalloc_purge() -> Callable[[], object] | None:
    """jemalloc's flush of this thread's cache (regions cached there keep their pages)
    and purge of every arena, or None when jemalloc is not loaded."""
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return None
    mallctl.argtypes = [
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    mallctl.restype = ctypes.c_int
    flush = b"thread.tcache.flush"
    purge = f"arena.{ARENAS_ALL}.purge".encode()

    def release() -> None:
        mallctl(flush, None, None, None, 0)
        mallctl(purge, None, None, None, 0)

    return release


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


JEMALLOC_PURGE = _jemalloc_purge()
RELEASE = JEMALLOC_PURGE or _malloc_trim()
"""Hands freed heap pages back to the OS now, or None where neither allocator is known."""


def in_use() -> str:
    """Which allocator serves this process's Python objects."""
    if os.environ.get("PYTHONMALLOC") != "malloc" or sys.flags.ignore_environment:
        return "pymalloc"
    return "jemalloc" if JEMALLOC_PURGE is not None else "malloc"
