"""A socket's acks and nacks, committed while the receive loop reads on.

The receive loop hands each `ack` and `nack` in here and reads the next frame at once. A
task, started only when there is something to settle and gone once all is settled,
commits everything handed in meanwhile together (in one commit shared with other
sockets' settlements, `Queues.settle`) and then answers each frame, in order, after the
commit that holds it. Every other frame waits until all settlements before it are
answered, so a client still gets its answers in the order of its frames. At most
SETTLING_LIMIT frames wait for their answer at a time (`room_to_settle`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio

from backend.connectors.store.queues import Moved
from backend.core import exactjson
from backend.interface.stream.ws.connection import REPORTED, Connection
from backend.interface.stream.ws.frames import Frame
from backend.services.consume import Delivery
from backend.services.settle import Settle

SETTLING_LIMIT = 1000


@dataclass(eq=False, slots=True)
class Pending:
    """One settling frame: the delivery and its settlement, or the error that refused it."""

    echo: Frame
    delivery: Delivery | None = None
    settle: Settle | None = None
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class Settling:
    """The frames of one socket waiting for their commit; exists only while there are any."""

    pending: list[Pending] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)


def hand_in(connection: Connection, pending: Pending) -> None:
    """Queue a settling frame; start the connection's settling task if none is running."""
    settling = connection.settling
    if settling is None:
        settling = connection.settling = Settling()
        if not connection.spawn(_settle, connection, settling):  # the server is stopping
            connection.settling = None
            settling.done.set()
            return
    settling.pending.append(pending)


async def room_to_settle(connection: Connection) -> None:
    """Past SETTLING_LIMIT frames handed in and not yet answered, wait until they are: the
    socket's frames are then read no further, so a client that sends acks (or frames that
    fail) without reading its answers meets TCP's backpressure, not a growing list."""
    settling = connection.settling
    if settling is not None and len(settling.pending) >= SETTLING_LIMIT:
        await settling.done.wait()


async def until_settled(connection: Connection) -> None:
    """Wait until every settling frame handed in so far is committed and answered."""
    settling = connection.settling
    if settling is not None:
        await settling.done.wait()


async def _settle(connection: Connection, settling: Settling) -> None:
    """Commit and answer what was handed in, round after round, until nothing is left."""
    try:
        while settling.pending:
            batch, settling.pending = settling.pending, []
            await _answer(connection, batch, await _commit(connection, batch))
    finally:
        connection.settling = None
        settling.done.set()


async def _commit(
    connection: Connection, batch: list[Pending]
) -> Iterator[Moved | BaseException | None]:
    """Each settlement's outcome, in order; a failed commit is every one's error."""
    settles = [p.settle for p in batch if p.settle is not None]
    if not settles:
        return iter(())
    try:
        return iter(await connection.state.engine.queues.settle(settles))
    except REPORTED as exc:
        return iter([exc] * len(settles))


async def _answer(
    connection: Connection, batch: list[Pending], outcomes: Iterator[Moved | BaseException | None]
) -> None:
    """`acked` / `nacked` frames written together; an error frame in its place in line."""
    answers: list[bytes] = []
    for pending in batch:
        problem = pending.error
        if pending.settle is not None:
            outcome = next(outcomes)
            if isinstance(outcome, BaseException):
                assert pending.delivery is not None
                pending.delivery.not_settled()
                problem = outcome
            else:
                answers.append(_settled_frame(pending.settle.message_id, outcome))
        if problem is not None:
            if answers:
                await connection.write(answers)
                answers = []
            await connection.send_error(pending.echo, problem)
    if answers:
        await connection.write(answers)


def _settled_frame(message_id: int, moved: Moved | None) -> bytes:
    if moved is None:
        return b'{"op":"acked","message":"%d"}' % message_id
    frame = {"op": "nacked", "message": str(message_id), "state": moved.state}
    return exactjson.dumps(frame)
