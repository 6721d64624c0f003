"""Load generators and subscribers as separate processes, driven over a pipe.

The parent starts a `Child` with a top-level coroutine function; the child runs it on its
own event loop (uvloop when installed) and talks to the parent with small
`(kind, payload)` messages through a `Control`. Every wait on either side has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

Payload = dict[str, Any]
Target = Callable[..., Awaitable[None]]

_CONTEXT = mp.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["bench.wire", "bench.loadgen", "bench.fleet", "bench.ceiling"])


class ChildError(RuntimeError):
    """A child process failed or broke the message protocol."""


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _install_uvloop() -> None:
    """The clients' loop: uvloop when installed (uvicorn[standard] brings it), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


async def _enter(target: Target, conn: Connection, kwargs: Payload) -> None:
    await target(Control(conn), **kwargs)


def _child_main(target: Target, conn: Connection, kwargs: Payload) -> None:
    raise_nofile()
    _install_uvloop()
    try:
        asyncio.run(_enter(target, conn, kwargs))
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises)
        conn.send(("error", {"trace": traceback.format_exc()}))
    finally:
        conn.close()


class Child:
    """One child process running `target(control, **kwargs)`."""

    def __init__(self, target: Target, name: str, **kwargs: Any) -> None:
        self.name = name
        self._conn, child_conn = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(
            target=_child_main, args=(target, child_conn, kwargs), name=name, daemon=True
        )
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def send(self, message: str, /, **payload: Any) -> None:
        self._conn.send((message, payload))

    def expect(self, kind: str, timeout: float) -> Payload:
        """The next message, which must be of `kind`; raises on errors and time-outs."""
        if not self._conn.poll(timeout):
            raise ChildError(f"{self.name}: no {kind!r} within {timeout:.0f} s")
        try:
            got, payload = self._conn.recv()
        except EOFError:
            raise ChildError(f"{self.name}: exited before sending {kind!r}") from None
        if got == "error":
            raise ChildError(f"{self.name} failed:\n{payload['trace']}")
        if got != kind:
            raise ChildError(f"{self.name}: expected {kind!r}, got {got!r}")
        return dict(payload)

    def stop(self, timeout: float = 10) -> None:
        """Ask the child to finish, then make sure it is gone."""
        if self.process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self.send("stop")
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()


def expect_all(children: list[Child], kind: str, timeout: float) -> list[Payload]:
    return [child.expect(kind, timeout) for child in children]


def stop_all(children: list[Child]) -> None:
    for child in children:
        child.stop()


class Control:
    """The child's end of the pipe, readable from its event loop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._inbox: asyncio.Queue[tuple[str, Payload]] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self._conn.poll():
                self._inbox.put_nowait(self._conn.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self._conn.fileno())
            self._inbox.put_nowait(("stop", {}))

    def send(self, message: str, /, **payload: Any) -> None:
        """Send one message, blocking until the parent has room for it (the event loop
        made the pipe non-blocking, which would fail large results half-way)."""
        fd = self._conn.fileno()
        os.set_blocking(fd, True)
        try:
            self._conn.send((message, payload))
        finally:
            os.set_blocking(fd, False)

    async def recv(self, within: float) -> tuple[str, Payload]:
        """The next message from the parent; ("stop", {}) once the parent is gone."""
        async with asyncio.timeout(within):
            return await self._inbox.get()

    async def linger(self, within: float = 60) -> None:
        """Keep resources (database connections) open until the parent says `stop`, so
        that it can still read their CPU time after the result."""
        with contextlib.suppress(TimeoutError):
            while (await self.recv(within))[0] != "stop":
                pass

    async def expect(self, kind: str, within: float) -> Payload:
        got, payload = await self.recv(within)
        if got != kind:
            raise ChildError(f"expected {kind!r} from the parent, got {got!r}")
        return payload
