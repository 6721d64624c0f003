"""Give hash tables that a crowd grew back their right size once it has left.

A Python set or dict never shrinks its table as entries go: the sets that held 19,000
open streams (our sweep's, the hub's, uvicorn's connections and tasks, asyncio's task
registry, the event loop's async generators) kept tables sized for 19,000 after all of them
closed, 10 MiB in all that the allocator cannot return while the table lives. `compact`
clears such a table and puts its entries back, which sizes it for what it holds now. It
works in place, so every holder of a reference keeps it, and synchronously, so no other
task can see it half done. A coroutine suspended inside a plain `for` over the table would
lose its place: the tables given here are only iterated over copies or without awaiting,
and a weak container that is being iterated is left alone.
"""

from __future__ import annotations

import asyncio
import gc
import sys
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
and is at most two thirds full): a larger table is one that has emptied."""
_WEAK = (weakref.WeakSet, weakref.WeakKeyDictionary, weakref.WeakValueDictionary)
_TABLES = (set, dict, *_WEAK)


def oversized(table: set[Any] | dict[Any, Any]) -> bool:
    return sys.getsizeof(table) > BYTES_PER_ENTRY * len(table) + SLACK_BYTES


def compact(table: Table) -> bool:
    """Re-size `table` to its contents if it has emptied; True if it was."""
    held: set[Any] | dict[Any, Any]
    if isinstance(table, _WEAK):
        if getattr(table, "_iterating", None):  # a live iterator would lose its place
            return False
        held = table.data  # type: ignore[union-attr] # where each keeps its entries
    else:
        held = table
    if not oversized(held):
        return False
    if isinstance(held, set):
        members = list(held)
        held.clear()
        held.update(members)
    else:
        entries = list(held.items())
        held.clear()
        held.update(entries)
    return True


def runtime_tables() -> Iterator[Table]:
    """The registries asyncio, anyio and the running event loop keep of every task, async
    generator and transport: each grows with a crowd like the server's own."""
    for name in ("_all_tasks", "_scheduled_tasks"):  # Python 3.11; 3.12 and later
        registry = getattr(asyncio.tasks, name, None)
        if isinstance(registry, weakref.WeakSet):
            yield registry
    anyio_backend = sys.modules.get("anyio._backends._asyncio")
    task_states = getattr(anyio_backend, "_task_states", None)
    if isinstance(task_states, weakref.WeakKeyDictionary):
        yield task_states
    yield from loop_tables(asyncio.get_running_loop())


def loop_tables(loop: asyncio.AbstractEventLoop) -> Iterator[Table]:
    """The sets and dicts the loop holds: asyncio's in its attributes, uvloop's in C fields
    that only the garbage collector's view of the loop reaches."""
    own: dict[str, object] = getattr(loop, "__dict__", {})
    for each in (*own.values(), *gc.get_referents(loop)):
        if each is not own and isinstance(each, _TABLES):
            yield each
