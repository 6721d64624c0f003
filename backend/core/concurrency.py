"""Small structured-concurrency helpers shared by the layers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Re-raise a lone exception out of a task group's ExceptionGroup as itself.

    Callers then catch the types they know (CursorExpired, AssertionError in a test) instead
    of an ExceptionGroup; groups of several real failures pass through unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        inner = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if isinstance(inner, BaseExceptionGroup):
            raise
        raise inner from None
