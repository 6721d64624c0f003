"""`pgcast queue work`: run a command once per message, ack on exit 0, nack otherwise.

Leases belong to the SSE stream that delivered them: the server returns every unsettled
message when that stream closes. So the stream stays open until the last running command
has been settled, also while stopping; messages that arrive meanwhile are simply not
started and go back to the queue when the stream closes. Commands run in their own
session, so the Ctrl-C meant for the worker does not kill the work it is draining.

Every task lives in a task group: a handler's failure ends the worker instead of
vanishing, and nothing is left running or unawaited when it exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import httpx
import orjson
import typer
from anyio.abc import ByteReceiveStream, ByteSendStream, Process, TaskGroup
from httpx_sse import aconnect_sse

from backend.core.concurrency import unwrap_single_error
from backend.interface.cli.client import (
    DEFAULT_URL,
    STREAM_TIMEOUT,
    Api,
    ApiError,
    Token,
    Url,
    connect_problem,
    error_of,
    guarded,
    json_body,
    name_segment,
    notice,
    segment,
)
from backend.interface.cli.reconnect import Reconnects

STDERR_KEPT = 2048
STDERR_GRACE_SECONDS = 1.0
CANNOT_RUN_STATUS = 2


class Worker:
    """One consumer stream feeding at most `concurrency` commands at a time."""

    def __init__(
        self,
        api: Api,
        queue: str,
        command: list[str],
        concurrency: int,
        prefetch: int,
        lease: float,
    ) -> None:
        self.api = api
        self.queue = queue
        self.path = f"/queues/{name_segment(queue, 'queue')}/messages"
        self.command = command
        self.prefetch = prefetch
        self.lease = lease
        self.slots = anyio.Semaphore(concurrency)
        self.stopping = anyio.Event()
        self.drained = anyio.Event()
        """Set once stopping and no message is held any more: the stream may close."""
        self.running = 0
        self.children: set[Process] = set()
        self.signals = 0
        self.client = api.async_client(STREAM_TIMEOUT)
        self.stderr = anyio.wrap_file(sys.stderr.buffer)

    async def run(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                with unwrap_single_error():
                    async with self.client, anyio.create_task_group() as control:
                        control.start_soon(self.watch_signals, signals)
                        async with anyio.create_task_group() as jobs:
                            await self.consume(jobs)
                        control.cancel_scope.cancel()
            finally:
                self.terminate_children()

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            self.on_signal()

    def on_signal(self) -> None:
        """First signal: drain. Second: terminate the running commands too."""
        self.signals += 1
        if self.signals == 1:
            self.stopping.set()
            self.check_drained()
            if self.children:
                notice(
                    f"stopping: waiting for {len(self.children)} running command(s); "
                    "signal again to terminate them"
                )
        else:
            self.terminate_children()

    def check_drained(self) -> None:
        if self.stopping.is_set() and self.running == 0:
            self.drained.set()

    def terminate_children(self) -> None:
        for child in self.children:
            if child.returncode is None:
                child.terminate()

    async def consume(self, jobs: TaskGroup) -> None:
        """The consumer stream until stopped and drained (or it fails for good)."""
        async with anyio.create_task_group() as stream:

            async def close_when_drained() -> None:
                await self.drained.wait()
                stream.cancel_scope.cancel()

            stream.start_soon(close_when_drained)
            await self.reconnecting(jobs)
            stream.cancel_scope.cancel()

    async def reconnecting(self, jobs: TaskGroup) -> None:
        """The consumer stream, reconnected with backoff until the worker stops."""
        params = {"prefetch": str(self.prefetch), "lease": str(self.lease)}
        reconnects = Reconnects(self.api.base)
        while not self.stopping.is_set():
            with reconnects.attempt():
                async with aconnect_sse(self.client, "GET", self.path, params=params) as sse:
                    if sse.response.is_error:
                        await sse.response.aread()
                        raise error_of(sse.response)
                    reconnects.opened()
                    async for message in sse.aiter_sse():
                        if message.event == "message" and message.data:
                            self.start(jobs, message.data)
            if self.stopping.is_set():
                return
            with anyio.move_on_after(reconnects.delay()):
                await self.stopping.wait()

    def start(self, jobs: TaskGroup, raw: str) -> None:
        if self.stopping.is_set():
            return  # not started: back to the queue when the stream closes
        self.running += 1
        jobs.start_soon(self.handle, raw, orjson.loads(raw))

    async def handle(self, raw: str, message: dict[str, Any]) -> None:
        try:
            async with self.slots:
                if self.stopping.is_set():
                    return
                async with anyio.create_task_group() as lease:
                    lease.start_soon(self.keep_leased, message)
                    ok, error = await self.execute(raw, message)
                    lease.cancel_scope.cancel()
            await self.settle(message, ok, error)
        finally:
            self.running -= 1
            self.check_drained()

    async def keep_leased(self, message: dict[str, Any]) -> None:
        """Extend the lease every half lease for as long as the message is held."""
        path = f"{self.path}/{segment(str(message['id']))}/extend"
        while True:
            await anyio.sleep(self.lease / 2)
            try:
                await self.post(path, {"lease": message["lease"], "seconds": self.lease})
            except ApiError as exc:
                notice(f"message {message['id']}: cannot extend its lease: {exc.message}")
                return
            except httpx.TransportError:
                continue  # try again at the next interval

    async def execute(self, raw: str, message: dict[str, Any]) -> tuple[bool, str]:
        """Run the command with the message on stdin; (exit 0?, why not)."""
        env = {
            **os.environ,
            "PGCAST_QUEUE": self.queue,
            "PGCAST_MESSAGE_ID": str(message["id"]),
            "PGCAST_ATTEMPT": str(message.get("attempt", "")),
        }
        label = f"message {message['id']} (attempt {message.get('attempt')})"
        try:
            child = await anyio.open_process(
                self.command,
                stdin=subprocess.PIPE,
                stdout=None,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            reason = cannot_run(self.command[0], exc)
            notice(f"{label}: {reason}")
            return False, reason
        self.children.add(child)
        kept = bytearray()
        try:
            async with child, anyio.create_task_group() as output:
                collected = anyio.Event()
                output.start_soon(self.collect, child.stderr, kept, collected)
                await _feed(child.stdin, raw.encode())
                status = await child.wait()
                with anyio.move_on_after(STDERR_GRACE_SECONDS):
                    await collected.wait()
                output.cancel_scope.cancel()
        finally:
            self.children.discard(child)
        if status == 0:
            return True, ""
        reason = f"exited with status {status}" if status > 0 else f"killed by signal {-status}"
        notice(f"{label}: command {reason}")
        return False, kept.decode(errors="replace")[-STDERR_KEPT:] or f"command {reason}"

    async def collect(
        self, stream: ByteReceiveStream | None, kept: bytearray, done: anyio.Event
    ) -> None:
        """Pass the command's stderr through (off the event loop) and keep its last bytes."""
        if stream is not None:
            async for chunk in stream:
                await self.stderr.write(chunk)
                await self.stderr.flush()
                kept += chunk
                del kept[:-STDERR_KEPT]
        done.set()

    async def settle(self, message: dict[str, Any], ok: bool, error: str) -> None:
        verb = "ack" if ok else "nack"
        body: dict[str, Any] = {"lease": message["lease"]}
        if not ok:
            body["error"] = error
        try:
            await self.post(f"{self.path}/{segment(str(message['id']))}/{verb}", body)
        except ApiError as exc:
            notice(f"message {message['id']}: {verb} failed: {exc.message}")
        except httpx.TransportError as exc:
            notice(f"message {message['id']}: {verb} failed: {connect_problem(self.api.base, exc)}")

    async def post(self, path: str, body: dict[str, Any]) -> None:
        response = await self.client.post(path, **json_body(body))
        if response.is_error:
            raise error_of(response)


def cannot_run(program: str, exc: OSError) -> str:
    return f"cannot run {program}: {exc.strerror or exc}"


def check_runnable(command: list[str]) -> None:
    """Refuse at once a command that cannot start, before taking any message for it."""
    program = command[0]
    if shutil.which(program) is not None:
        return
    if os.sep in program and os.path.isdir(program):
        reason = "Is a directory"
    elif os.sep in program and os.path.isfile(program):
        reason = "Permission denied"
    elif os.sep in program:
        reason = "No such file or directory"
    else:
        reason = "not found on PATH"
    notice(f"cannot run {program}: {reason}")
    raise typer.Exit(CANNOT_RUN_STATUS)


async def _feed(stdin: ByteSendStream | None, payload: bytes) -> None:
    """The message on the command's stdin, then end of file; a command may ignore it."""
    if stdin is None:
        return
    try:
        await stdin.send(payload)
        await stdin.aclose()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, BrokenPipeError):
        return


def work(
    queue: Annotated[str, typer.Argument(metavar="QUEUE", help="The queue to consume.")],
    command: Annotated[
        list[str], typer.Argument(metavar="CMD", help="After --: the command and its arguments.")
    ],
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Commands running at once.")
    ] = 1,
    prefetch: Annotated[
        int | None,
        typer.Option(
            "--prefetch", min=1, max=100, help="Messages held at once (default: the concurrency)."
        ),
    ] = None,
    lease: Annotated[
        float, typer.Option("--lease", min=0.1, help="Lease seconds, extended while running.")
    ] = 30.0,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Run CMD once per message of QUEUE: exit 0 acks, anything else nacks.

    CMD gets the whole message as JSON on stdin (one object, the message
    as the server sends it: id, queue, data, key, attempt, max_attempts,
    enqueued_at, available_at, lease, lease_until, last_error if set; no
    trailing newline; then end of file), and PGCAST_MESSAGE_ID,
    PGCAST_ATTEMPT and PGCAST_QUEUE in its environment. A failure nacks with
    the last 2 KB of CMD's stderr as the error; the server then retries
    with backoff and dead-letters after the message's max attempts. Leases
    are extended while CMD runs. SIGTERM or Ctrl-C stops taking messages,
    lets running commands finish, settles them and exits 0 (a second
    signal terminates the commands).

    CMD that cannot be started (not found, not executable) is refused at
    once with exit status 2, before any message is taken; if it stops being
    runnable later, each message says why on stderr and in its nack.

    Example:

      pgcast queue work emails --concurrency 4 -- examples/send-email.sh
    """
    check_runnable(command)
    api = Api(url, token)
    worker = Worker(api, queue, command, concurrency, prefetch or min(concurrency, 100), lease)
    with guarded(interrupt_status=0):
        anyio.run(worker.run)
