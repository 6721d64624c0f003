"""Protected mode, origin checks and log redaction, without a server."""

from __future__ import annotations

import logging

import pytest

from backend.core.errors import ConfigError
from backend.interface.security.guard import OriginPolicy
from backend.interface.security.protection import (
    RedactTokens,
    check_bind,
    host_of,
    is_loopback,
    redact,
)


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.9.8.7", "::1", "[::1]", "::ffff:127.0.0.1"]
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "example.com", "", None, "127.0.0.1.nip.io"]
)
def test_other_hosts(host: str | None) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("localhost", "localhost"),
        ("::1", "::1"),
    ],
)
def test_host_header_parsing(header: str, host: str) -> None:
    assert host_of(header) == host


def test_open_servers_only_bind_loopback_unless_insecure(caplog: pytest.LogCaptureFixture) -> None:
    check_bind("0.0.0.0", auth_enabled=True, insecure=False)
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without"):
        check_bind("0.0.0.0", auth_enabled=False, insecure=False)
    with caplog.at_level(logging.WARNING):
        check_bind("0.0.0.0", auth_enabled=False, insecure=True)
        check_bind("127.0.0.1", auth_enabled=False, insecure=False)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "INSECURE" in caplog.records[0].getMessage()
    assert "authentication is off" in caplog.records[1].getMessage()


def test_tokens_are_redacted_from_log_records() -> None:
    assert redact("GET /events?topic=a&token=abc.def.ghi&after=1") == (
        "GET /events?topic=a&token=[redacted]&after=1"
    )
    assert redact("/ws?token=x") == "/ws?token=[redacted]"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s"',
        ("1.2.3.4", "GET", "/x?token=s"),
        None,
    )
    RedactTokens().filter(record)
    assert record.getMessage() == '1.2.3.4 - "GET /x?token=[redacted]"'


@pytest.mark.parametrize(
    "name", ["token", "%74oken", "t%6Fken", "%74%6F%6B%65%6E", "TOKEN", "%54oken", "tok%65n"]
)
def test_tokens_are_redacted_under_every_spelling_of_the_parameter(name: str) -> None:
    line = f"GET /events?topic=a&{name}=abc.def.ghi&after=1 HTTP/1.1"
    assert redact(line) == f"GET /events?topic=a&{name}=[redacted]&after=1 HTTP/1.1"
    assert redact(f"/ws?{name}=abc.def.ghi") == f"/ws?{name}=[redacted]"


def test_other_parameters_are_left_alone() -> None:
    line = "GET /events?topic=tokens&tokenx=1&x%74oken=2&after=token HTTP/1.1"
    assert redact(line) == line


def test_origins() -> None:
    listed = OriginPolicy(frozenset({"https://app.example.com"}), loopback=False)
    assert listed.allows(None, "pgcast.example.com")  # not a browser
    assert listed.allows("https://pgcast.example.com", "pgcast.example.com")  # same origin
    assert listed.allows("https://app.example.com/", "pgcast.example.com")
    assert not listed.allows("https://evil.example", "pgcast.example.com")
    assert not listed.allows("http://localhost:3000", "pgcast.example.com")
    assert not listed.allows("null", "pgcast.example.com")
    open_mode = OriginPolicy(frozenset(), loopback=True)
    assert open_mode.allows("http://localhost:3000", "127.0.0.1:8000")
    assert open_mode.allows("http://127.0.0.1:5173", "127.0.0.1:8000")
    assert not open_mode.allows("https://evil.example", "127.0.0.1:8000")
    assert OriginPolicy(frozenset({"*"}), loopback=False).allows("https://any.where", "h")
