"""Give hash tables that a crowd grew back their right size once it has left.

A Python set or dict never shrinks its table as entries go: the sets that held 19,000
open streams (our sweep's, the hub's, uvicorn's connections and tasks, asyncio's task
registry, the event loop's async generators) kept tables sized for 19,000 after all of them
closed, 10 MiB in all that the allocator cannot return while the table lives. `compact`
gives such a table one sized for what it holds now, in place, so every holder of a
reference keeps it. A set is rebuilt in one call that runs no Python code
(`intersection_update` with itself copies it right-sized and swaps the copy in), so no
other task or thread sees it half done. A dict is cleared and refilled, which another
thread could interleave with: dicts shared by every thread (anyio's task states) are
compacted only while this is the process's one thread. A coroutine suspended inside a
plain `for` over a table would lose its place: the tables given here are only iterated
over copies or without awaiting, and a weak container being iterated is left alone.
Only exact sets, dicts and the three weak containers are touched: a subclass's own
`update` may mean something else (a Counter's counts).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any, TypeAlias

Weak: TypeAlias = (
    "weakref.WeakSet[Any] | weakref.WeakKeyDictionary[Any, Any] | "
    "weakref.WeakValueDictionary[Any, Any]"
)
Table: TypeAlias = "set[Any] | dict[Any, Any] | Weak"

SLACK_BYTES = 64 * 1024
"""A table within this much of its contents' size is left as it is."""
BYTES_PER_ENTRY = 128
"""Above the most a right-sized set or dict takes per entry (a table grows by up to 4x
and is at most 60% (set) or two thirds (dict) full): a larger table is one that has
emptied."""
_WEAK = (weakref.WeakSet, weakref.WeakKeyDictionary, weakref.WeakValueDictionary)
_TABLES = (set, dict, *_WEAK)


def oversized(table: set[Any] | dict[Any, Any]) -> bool:
    return sys.getsizeof(table) > BYTES_PER_ENTRY * len(table) + SLACK_BYTES


def compact(table: Table) -> bool:
    """Re-size `table` to its contents if it has emptied; True if it was."""
    if type(table) not in _TABLES:
        return False
    held: set[Any] | dict[Any, Any]
    if isinstance(table, _WEAK):
        if getattr(table, "_iterating", None):  # a live iterator would lose its place
            return False
        held = table.data  # type: ignore[union-attr] # where each keeps its entries
    else:
        held = table
    if type(held) not in (set, dict) or not oversized(held):
        return False
    if isinstance(held, set):
        held.intersection_update(held)
    else:
        entries = held.copy()
        held.clear()
        held.update(entries)
    return True


def runtime_tables() -> Iterator[Table]:
    """The registries asyncio, anyio and the running event loop keep of every task, async
    generator and transport: each grows with a crowd like the server's own."""
    for name in ("_all_tasks", "_scheduled_tasks"):  # Python 3.11; 3.12 and later
        registry = getattr(asyncio.tasks, name, None)
        if type(registry) is weakref.WeakSet:
            yield registry
    anyio_backend = sys.modules.get("anyio._backends._asyncio")
    task_states = getattr(anyio_backend, "_task_states", None)
    if type(task_states) is weakref.WeakKeyDictionary and threading.active_count() == 1:
        yield task_states
    yield from loop_tables(asyncio.get_running_loop())


def loop_tables(loop: asyncio.AbstractEventLoop) -> Iterator[Table]:
    """The sets and dicts the loop holds: asyncio's in its attributes, uvloop's in C fields
    that only the garbage collector's view of the loop reaches."""
    own: dict[str, object] = getattr(loop, "__dict__", {})
    for each in (*own.values(), *gc.get_referents(loop)):
        if each is not own and type(each) in _TABLES:
            yield each
