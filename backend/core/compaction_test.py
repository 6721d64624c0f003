"""Emptied tables get their right size back, in place, with every entry and weak callback
intact; a table in use by an iterator, or already small, is left alone."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections import Counter
from collections.abc import Generator
from typing import Any, cast

import pytest

from backend.core.compaction import compact, loop_tables, runtime_tables


class Item:
    """Hashable and weakly referable, as streams and tasks are."""


def test_an_emptied_set_shrinks_in_place_and_keeps_its_members() -> None:
    table = set(range(20_000))
    grown = sys.getsizeof(table)
    for n in range(3, 20_000):
        table.discard(n)
    assert sys.getsizeof(table) == grown  # a set never shrinks by itself
    assert compact(table)
    assert table == {0, 1, 2}
    assert sys.getsizeof(table) < grown / 100


def test_an_emptied_dict_shrinks_in_place_and_keeps_its_order() -> None:
    table = {n: str(n) for n in range(20_000)}
    grown = sys.getsizeof(table)
    for n in range(1, 19_999):
        del table[n]
    assert compact(table)
    assert list(table.items()) == [(0, "0"), (19_999, "19999")]
    assert sys.getsizeof(table) < grown / 100


@pytest.mark.parametrize("kind", ["set", "keys", "values"])
def test_weak_containers_shrink_and_still_drop_what_dies(kind: str) -> None:
    items = [Item() for _ in range(20_000)]
    table: Any
    if kind == "set":
        table = weakref.WeakSet(items)
    elif kind == "keys":
        table = weakref.WeakKeyDictionary((item, n) for n, item in enumerate(items))
    else:
        table = weakref.WeakValueDictionary(enumerate(items))
    grown = sys.getsizeof(table.data)
    kept = items[:2]
    del items
    gc.collect()
    assert len(table) == 2
    assert compact(table)
    assert sys.getsizeof(table.data) < grown / 100
    kept.pop()
    gc.collect()
    assert len(table) == 1  # the weak callbacks act on the re-sized table


def test_a_weak_container_being_iterated_is_left_alone() -> None:
    items = [Item() for _ in range(20_000)]
    table = weakref.WeakSet(items)
    if not hasattr(table, "_iterating"):
        pytest.skip("this Python's WeakSet iterates over a copy: nothing to guard")
    del items[2:]
    gc.collect()
    walking = cast(Generator[Item, None, None], iter(table))
    next(walking)
    assert not compact(table)
    walking.close()
    assert compact(table)


def test_small_or_full_tables_are_left_alone() -> None:
    assert not compact(set(range(100)))
    assert not compact(set(range(50_000)))
    assert not compact({n: n for n in range(50_000)})


@pytest.mark.anyio
async def test_the_task_registry_is_found_and_shrinks_without_losing_a_live_task() -> None:
    found = list(runtime_tables())
    registry = getattr(asyncio.tasks, "_all_tasks", None)
    if registry is None:
        registry = asyncio.tasks._scheduled_tasks  # type: ignore[attr-defined]
    assert any(table is registry for table in found)
    loop = asyncio.get_running_loop()
    assert any(table is getattr(loop, "_asyncgens", None) for table in loop_tables(loop))

    crowd = [asyncio.ensure_future(asyncio.sleep(0)) for _ in range(20_000)]
    await asyncio.gather(*crowd)
    del crowd
    await asyncio.sleep(0)  # the gathering future lets go of them at the next step
    gc.collect()
    grown = sys.getsizeof(registry.data)
    assert compact(registry)
    assert sys.getsizeof(registry.data) < grown / 10
    assert asyncio.current_task() in asyncio.all_tasks()


def test_subclasses_are_left_alone() -> None:
    counts = Counter(range(20_000))
    for n in range(1, 20_000):
        del counts[n]
    assert not compact(counts)
    assert counts == Counter({0: 1})


def test_uvloops_registries_are_reached_through_the_collector() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def tables() -> list[str]:
        return sorted({type(t).__name__ for t in loop_tables(asyncio.get_running_loop())})

    assert {"WeakSet", "WeakValueDictionary"} <= set(uvloop.run(tables()))
