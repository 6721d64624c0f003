"""Small structured-concurrency helpers shared by the layers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from backend.core.streams import collapse_single


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Re-raise a lone exception out of a task group's ExceptionGroup as itself.

    Callers then catch the types they know (CursorExpired, AssertionError in a test) instead
    of an ExceptionGroup; groups of several real failures pass through unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        inner = collapse_single(group)
        if inner is group:
            raise
        raise inner from None
