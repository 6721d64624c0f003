"""Settings come from the environment; a bad value names the variable."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from backend.core.errors import ConfigError
from backend.core.settings import load_settings, worker_count


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "HOST", "PORT", "LOG_LEVEL", "LOG_FORMAT", "RETENTION"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.host, settings.port, settings.log_format) == ("127.0.0.1", 8000, "text")
    assert settings.database_url is None
    assert settings.retention == timedelta(days=7)
    assert settings.max_event_bytes == 1024 * 1024


def test_values_are_read_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    monkeypatch.setenv("RETENTION", "P1D")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    settings = load_settings()
    assert (settings.port, settings.log_level, settings.log_format) == (9001, "DEBUG", "json")
    assert settings.retention == timedelta(days=1)
    assert settings.database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "postgresql://127.0.0.1:99999/x"),
        ("DATABASE_URL", "postgresql://[bad"),
        ("MAX_EVENT_BYTES", "0"),
        ("AUTH_SECRET", "too-short"),
        ("PUBLISH_RATE", "-1"),
        ("WORKERS", "0"),
        ("WORKERS", "many"),
        ("WORKERS", "257"),
        ("RETENTION", "0"),
        ("RETENTION", "-P1D"),
        ("IDEMPOTENCY_TTL", "PT0S"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.message.startswith(f"{name}: ")
    assert "\n" not in info.value.message


def test_workers_default_to_one_and_auto_means_one_per_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().workers == 1
    monkeypatch.setenv("WORKERS", "auto")
    assert load_settings().workers == (os.cpu_count() or 1)
    monkeypatch.setenv("WORKERS", "3")
    assert load_settings().workers == 3
    assert worker_count(" AUTO ") == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="'auto'"):
        worker_count("-2")
    assert worker_count("256") == 256
    with pytest.raises(ValueError, match="from 1 to 256"):
        worker_count("257")  # `serve --workers` follows the same rule as WORKERS
