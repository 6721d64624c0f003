"""What every client command of the CLI shares: server URL, token, errors, exits.

The client commands talk to a running server over HTTP only, so that a shell on another
machine behaves exactly like one next to the database.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import orjson
import typer

from backend.core import exactjson
from backend.core.errors import InvalidName, PgcastError
from backend.core.names import validate_name

DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Streams carry heartbeat comments (every 15 s by default): silence beyond this is a dead link.
STREAM_TIMEOUT = httpx.Timeout(10.0, read=45.0)
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 2.0

Url = Annotated[
    str,
    typer.Option("--url", envvar="PGCAST_URL", help="Base URL of the pgcast server."),
]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="PGCAST_TOKEN", help="Sent as `Authorization: Bearer <token>`."),
]


class ApiError(PgcastError):
    """The server refused a request; `message` is the server's own explanation."""

    def __init__(self, message: str, *, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.code = str(self.body.get("error", "http_error"))


def command_group(name: str, help: str) -> typer.Typer:
    """A `pgcast` command or group of commands, all set up alike."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


def segment(name: str) -> str:
    """A topic, pattern or queue name as one path segment."""
    return quote(name, safe="")


def name_segment(name: str, kind: str) -> str:
    """A topic or queue name checked here first, as one path segment: a name the server
    could not route (empty, or with a `/`) is a usage error (status 2) naming the rule,
    not a bare `Not Found` from the server."""
    try:
        validate_name(name, kind)
    except InvalidName as exc:
        notice(exc.message)
        raise typer.Exit(2) from None
    return segment(name)


def notice(text: str) -> None:
    """One line for the human on stderr, never mixed into the data on stdout."""
    print(f"pgcast: {text}", file=sys.stderr, flush=True)


def fail(text: str) -> NoReturn:
    notice(text)
    raise typer.Exit(1)


def _refused(exc: BaseException) -> bool:
    """Anywhere in the chain: the async transports wrap the refusal in a generic OSError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def connect_problem(base: str, exc: httpx.HTTPError) -> str:
    """`cannot connect to URL: connection refused` rather than an errno soup."""
    detail = str(exc) or type(exc).__name__
    if _refused(exc):
        detail = "connection refused"
    elif detail.startswith("[Errno"):
        detail = detail.split("] ", 1)[-1]
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot connect to {base}: {detail}"
    return f"request to {base} failed: {detail}"


def error_of(response: httpx.Response) -> ApiError:
    """The server's JSON `message` when there is one, else the status line."""
    try:
        body = orjson.loads(response.read())
    except orjson.JSONDecodeError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str):
        message = f"the server answered {response.status_code} {response.reason_phrase}"
    return ApiError(message, status=response.status_code, body=body)


def retryable(exc: BaseException) -> bool:
    """Worth reconnecting for: the link broke or the server (or its database) is down."""
    if isinstance(exc, ApiError):
        return exc.status >= 500
    return isinstance(exc, httpx.TransportError)


def json_body(json: Any) -> dict[str, Any]:
    """An httpx request's `content` and `headers` for a JSON body (none for None), with
    numbers written digit for digit."""
    if json is None:
        return {}
    return {"content": exactjson.dumps(json), "headers": {"Content-Type": "application/json"}}


@dataclass(frozen=True)
class Api:
    """A server address plus credentials; opens clients and makes one-shot calls."""

    url: str
    token: str | None = None

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def client(self, timeout: httpx.Timeout = REQUEST_TIMEOUT) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=timeout)

    def async_client(self, timeout: httpx.Timeout = REQUEST_TIMEOUT) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, headers=self.headers, timeout=timeout)

    def call(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer, or `ApiError` / a one-line exit."""
        query = params if params is None or isinstance(params, Mapping) else tuple(params)
        try:
            response = client.request(method, path, params=query, **json_body(json))
        except httpx.TransportError as exc:
            fail(connect_problem(self.base, exc))
        return self.decode(response)

    def decode(self, response: httpx.Response) -> Any:
        if response.is_error:
            raise error_of(response)
        try:
            return exactjson.loads(response.content, "the answer", allow_nul=True)
        except PgcastError:
            fail(f"{self.base} answered with something other than JSON")


class Backoff:
    """Reconnection delays: 0.1 s doubling to a 2 s cap, reset after a success."""

    def __init__(self) -> None:
        self.delay = BACKOFF_FIRST_SECONDS

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, BACKOFF_CAP_SECONDS)
        return delay

    def sleep(self) -> None:
        time.sleep(self.next())

    def reset(self) -> None:
        self.delay = BACKOFF_FIRST_SECONDS


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so the exit-time flush of a closed pipe stays silent."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextlib.contextmanager
def guarded(interrupt_status: int = 130) -> Iterator[None]:
    """One line and status 1 for server errors; quiet exits for Ctrl-C and closed pipes."""
    try:
        yield
    except PgcastError as exc:
        fail(exc.message)
    except httpx.InvalidURL as exc:
        fail(f"invalid server URL: {exc}")
    except KeyboardInterrupt:
        raise typer.Exit(interrupt_status) from None
    except BrokenPipeError:
        silence_stdout()
        raise typer.Exit(0) from None


def write_line(text: str) -> None:
    """One line on stdout, flushed now so `| jq` sees it live."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
