"""`pgcast queue work`: run a command once per message, ack on exit 0, nack otherwise.

Leases belong to the SSE stream that delivered them: the server returns every unsettled
message when that stream closes. So the stream stays open until the last running command
has been settled, also while stopping; messages that arrive meanwhile are simply not
started and go back to the queue when the stream closes. Commands run in their own
session, so the Ctrl-C meant for the worker does not kill the work it is draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Annotated, Any

import httpx
import orjson
import typer
from httpx_sse import SSEError, aconnect_sse

from backend.interface.cli.client import (
    DEFAULT_URL,
    STREAM_TIMEOUT,
    Api,
    ApiError,
    Backoff,
    Token,
    Url,
    connect_problem,
    error_of,
    fail,
    guarded,
    notice,
    retryable,
    segment,
)

STDERR_KEPT = 2048
STDERR_GRACE_SECONDS = 1.0


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
        self.path = f"/queues/{segment(queue)}/messages"
        self.command = command
        self.prefetch = prefetch
        self.lease = lease
        self.slots = asyncio.Semaphore(concurrency)
        self.stopping = asyncio.Event()
        self.running: set[asyncio.Task[None]] = set()
        self.children: set[asyncio.subprocess.Process] = set()
        self.signals = 0
        self.client = api.async_client(STREAM_TIMEOUT)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal)
        async with self.client:
            stream = asyncio.create_task(self.consume())
            stopped = asyncio.create_task(self.stopping.wait())
            try:
                await asyncio.wait({stream, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if stream.done():
                    stream.result()  # the reason it could not go on
                while self.running:
                    await asyncio.wait(set(self.running))
            finally:
                stopped.cancel()
                stream.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream
                self.terminate_children()

    def on_signal(self) -> None:
        """First signal: drain. Second: terminate the running commands too."""
        self.signals += 1
        if self.signals == 1:
            self.stopping.set()
            if self.children:
                notice(
                    f"stopping: waiting for {len(self.children)} running command(s); "
                    "signal again to terminate them"
                )
        else:
            self.terminate_children()

    def terminate_children(self) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()

    async def consume(self) -> None:
        """The consumer stream, reconnected with backoff until the worker stops."""
        params = {"prefetch": str(self.prefetch), "lease": str(self.lease)}
        backoff = Backoff()
        connected = lost = False
        while not self.stopping.is_set():
            try:
                async with aconnect_sse(self.client, "GET", self.path, params=params) as sse:
                    if sse.response.is_error:
                        await sse.response.aread()
                        raise error_of(sse.response)
                    connected = True
                    backoff.reset()
                    if lost:
                        notice("reconnected")
                        lost = False
                    async for message in sse.aiter_sse():
                        if message.event == "message" and message.data:
                            self.start(message.data)
            except (httpx.TransportError, ApiError) as exc:
                if not (connected and retryable(exc)):
                    if isinstance(exc, ApiError):
                        raise
                    fail(connect_problem(self.api.base, exc))
            except SSEError as exc:
                fail(f"{self.api.base} did not answer with an event stream: {exc}")
            if not self.stopping.is_set() and not lost:
                notice("connection lost; reconnecting...")
                lost = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff.next())

    def start(self, raw: str) -> None:
        if self.stopping.is_set():
            return  # not started: back to the queue when the stream closes
        task = asyncio.create_task(self.handle(raw, orjson.loads(raw)))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def handle(self, raw: str, message: dict[str, Any]) -> None:
        keeper = asyncio.create_task(self.keep_leased(message))
        try:
            async with self.slots:
                if self.stopping.is_set():
                    return
                ok, error = await self.execute(raw, message)
        finally:
            keeper.cancel()
        await self.settle(message, ok, error)

    async def keep_leased(self, message: dict[str, Any]) -> None:
        """Extend the lease every half lease for as long as the message is held."""
        path = f"{self.path}/{segment(str(message['id']))}/extend"
        while True:
            await asyncio.sleep(self.lease / 2)
            try:
                await self.post(path, {"lease": message["lease"], "seconds": self.lease})
            except ApiError as exc:
                notice(f"message {message['id']}: cannot extend its lease: {exc.message}")
                return
            except httpx.TransportError:
                continue  # try again at the next interval

    async def execute(self, raw: str, message: dict[str, Any]) -> tuple[bool, str]:
        """Run the command with the message on stdin; (exit 0?, the tail of its stderr)."""
        env = {
            **os.environ,
            "PGCAST_QUEUE": self.queue,
            "PGCAST_MESSAGE_ID": str(message["id"]),
            "PGCAST_ATTEMPT": str(message.get("attempt", "")),
        }
        try:
            child = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return False, f"cannot run {self.command[0]}: {exc.strerror or exc}"
        self.children.add(child)
        try:
            reader = asyncio.create_task(_collect(child.stderr))
            await _feed(child.stdin, raw.encode())
            status = await child.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), STDERR_GRACE_SECONDS)
            reader.cancel()
            kept = bytes(reader.result()) if reader.done() and not reader.cancelled() else b""
        finally:
            self.children.discard(child)
        if status == 0:
            return True, ""
        reason = f"exited with status {status}" if status > 0 else f"killed by signal {-status}"
        notice(f"message {message['id']} (attempt {message.get('attempt')}): command {reason}")
        return False, kept.decode(errors="replace")[-STDERR_KEPT:] or f"command {reason}"

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
        response = await self.client.post(
            path, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
        if response.is_error:
            raise error_of(response)


async def _feed(stdin: asyncio.StreamWriter | None, payload: bytes) -> None:
    """The message on the command's stdin; a command that ignores stdin is fine."""
    if stdin is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(payload)
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


async def _collect(stream: asyncio.StreamReader | None) -> bytearray:
    """Pass the command's stderr through and keep its last bytes for the nack."""
    kept = bytearray()
    if stream is None:
        return kept
    while chunk := await stream.read(4096):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        kept += chunk
        del kept[:-STDERR_KEPT]
    return kept


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

    CMD gets the whole message as JSON on stdin, and PGCAST_MESSAGE_ID,
    PGCAST_ATTEMPT and PGCAST_QUEUE in its environment. A failure nacks with
    the last 2 KB of CMD's stderr as the error; the server then retries
    with backoff and dead-letters after the message's max attempts. Leases
    are extended while CMD runs. SIGTERM or Ctrl-C stops taking messages,
    lets running commands finish, settles them and exits 0 (a second
    signal terminates the commands).

    Example:

      pgcast queue work emails --concurrency 4 -- python send_email.py
    """
    api = Api(url, token)
    worker = Worker(api, queue, command, concurrency, prefetch or min(concurrency, 100), lease)
    with guarded(interrupt_status=0):
        asyncio.run(worker.run())
