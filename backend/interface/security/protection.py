"""Protected mode and keeping secrets out of logs.

Without AUTH_SECRET (or AUTH_PUBLIC_KEY_FILE) every request is allowed, which is only safe
where nobody else can connect: `pgcast serve` then refuses a non-loopback address unless
told `--insecure`, and the app answers only requests whose `Host` is a loopback name, so
a web page cannot reach it through DNS rebinding either.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send

from backend.core.errors import ConfigError

logger = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
# uvicorn logs request lines (with the query string) and WebSocket handshakes here.
SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error")
# One `name=value` pair of a query string; the name is compared after percent-decoding,
# exactly as the server reads it, so `%74oken=` or `t%6Fken=` is a token parameter too.
_QUERY_PAIR = re.compile(r"(?P<head>[?&](?P<name>[^&=\s\"'?]*)=)[^&\s\"']*")
TOKEN_NAME = "token"  # noqa: S105 - a parameter name, not a secret
_BEARER = re.compile(r"(bearer\s+)[^\s\"']+", re.IGNORECASE)
REDACTED = "[redacted]"


def is_loopback(host: str | None) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (also as an IPv4-mapped IPv6 address)."""
    if not host:
        return False
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def host_of(header: str) -> str:
    """The host part of a `Host` header value (`[::1]:8000` gives `::1`)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def check_bind(host: str, *, auth_enabled: bool, insecure: bool) -> None:
    """Refuse an open server on a reachable address; warn whenever auth is off."""
    if auth_enabled:
        return
    if is_loopback(host):
        logger.warning(
            "authentication is off (no AUTH_SECRET or AUTH_PUBLIC_KEY_FILE): every process"
            " on this machine that can connect to %s may read, publish and administer"
            " everything",
            host,
            extra={"action": "auth_off"},
        )
        return
    if not insecure:
        raise ConfigError(
            f"refusing to listen on {host} without authentication: anyone who can reach it"
            " could read, publish and administer everything. Set AUTH_SECRET (or"
            " AUTH_PUBLIC_KEY_FILE), bind a loopback address, or pass --insecure"
            " (INSECURE=true) to accept the risk"
        )
    logger.warning(
        "INSECURE: authentication is off and the server listens on %s: anyone who can reach"
        " this address may read, publish and administer everything",
        host,
        extra={"action": "insecure"},
    )


def _redact_pair(found: re.Match[str]) -> str:
    if unquote_plus(found["name"]).lower() == TOKEN_NAME:
        return found["head"] + REDACTED
    return found[0]


def redact(text: str) -> str:
    """Replace `token=...` query values (under any spelling) and `Bearer ...` credentials."""
    return _BEARER.sub(rf"\g<1>{REDACTED}", _QUERY_PAIR.sub(_redact_pair, text))


class RedactTokens(logging.Filter):
    """Scrubs tokens from a record's message and arguments before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_redaction() -> None:
    """Attach RedactTokens to the server's loggers (idempotent)."""
    for name in SERVER_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in target.filters):
            target.addFilter(RedactTokens())


class LoopbackHostOnly:
    """Pure ASGI middleware: refuse requests whose `Host` is not a loopback name.

    Only installed while auth is off and INSECURE is not set. A page on another site that
    rebinds its own DNS name to 127.0.0.1 sends its own name as `Host` and is refused.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._loopback(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": POLICY_VIOLATION})
            return
        body = (
            b'{"error":"forbidden","message":"authentication is off, so this server only'
            b' answers requests addressed to a loopback host (localhost, 127.0.0.1, [::1])"}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _loopback(scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"host":
                return _loopback_host(value)
        return True


@functools.lru_cache(maxsize=256)
def _loopback_host(header: bytes) -> bool:
    """A `Host` value's verdict, remembered: parsing an address on every request showed up
    in profiles, and a client sends the same few values again and again."""
    return is_loopback(host_of(header.decode("latin-1")))
