"""Settings from environment variables (12-factor).

A bad value stops start-up with one line naming the variable; `load_settings` raises
`ConfigError` with that line and the CLI exits with status 2.
"""

from __future__ import annotations

import os
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.core.errors import ConfigError

MIN_SECRET_LENGTH = 32
# Off PostgreSQL's own 5432 so a local PostgreSQL and pgcast's embedded one can coexist.
EMBEDDED_PG_PORT = 54329


MAX_WORKERS = 256


def worker_count(text: str) -> int:
    """`auto` (one per core, at most MAX_WORKERS) or a number of server processes from 1
    to MAX_WORKERS; the same rule for WORKERS and `serve --workers`."""
    if text.strip().lower() == "auto":
        return min(os.cpu_count() or 1, MAX_WORKERS)
    problem = f"must be a number from 1 to {MAX_WORKERS} or 'auto', got {text!r}"
    try:
        count = int(text)
    except ValueError:
        raise ValueError(problem) from None
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(problem)
    return count


class Settings(BaseSettings):
    """Everything pgcast reads from its environment. Documented in docs/operations.md."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str | None = Field(default=None)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    data_dir: Path = Path(".data")
    embedded_pg_port: int = Field(default=EMBEDDED_PG_PORT, ge=1, le=65535)

    max_event_bytes: int = Field(default=1024 * 1024, ge=1)
    retention: timedelta = timedelta(days=7)
    retention_interval_seconds: float = Field(default=60.0, gt=0)
    poll_interval_seconds: float = Field(default=2.0, gt=0)
    probe_interval_seconds: float = Field(default=5.0, gt=0)
    probe_timeout_seconds: float = Field(default=2.0, gt=0)
    subscriber_buffer: int = Field(default=1000, ge=1)
    read_batch: int = Field(default=1000, ge=1, le=10000)
    pool_size: int = Field(default=10, ge=1)
    pool_acquire_timeout_seconds: float = Field(default=10.0, gt=0)

    heartbeat_seconds: float = Field(default=15.0, gt=0)
    send_timeout: float = Field(default=30.0, gt=0)
    headers_timeout_seconds: float = Field(default=10.0, gt=0)
    sse_retry_ms: int = Field(default=2000, ge=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    ws_max_frame_bytes: int = Field(default=1024 * 1024 + 4096, ge=1024)
    ws_ping_interval_seconds: float = Field(default=20.0, gt=0)
    ws_compression: bool = False
    group_commit_wait_ms: float = Field(default=2.0, gt=0)
    group_commit_max_requests: int = Field(default=256, ge=1)
    sequencer_max_spacing_ms: float = Field(default=5.0, ge=2.0)
    allocator: Literal["auto", "jemalloc", "pymalloc"] = "auto"
    idempotency_ttl: timedelta = timedelta(hours=24)
    capture_tables: str = ""

    queue_backoff_base_seconds: float = Field(default=1.0, gt=0)
    queue_backoff_cap_seconds: float = Field(default=300.0, gt=0)
    queue_reap_interval_seconds: float = Field(default=1.0, gt=0)

    auth_secret: SecretStr | None = None
    auth_public_key_file: Path | None = None
    insecure: bool = False
    cors_origins: str = ""
    allowed_origins: str = ""
    max_connections: int = Field(default=10000, ge=1)
    max_subscriptions: int = Field(default=100, ge=1)
    max_patterns: int = Field(default=100, ge=1)
    publish_rate: float = Field(default=0.0, ge=0)
    publish_burst: int = Field(default=0, ge=0)

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: object) -> object:
        """`auto` is one worker per core."""
        return worker_count(value) if isinstance(value, str) else value

    @field_validator("retention", "idempotency_ttl")
    @classmethod
    def _positive_duration(cls, value: timedelta) -> timedelta:
        """A zero or negative span would prune every event, or forget every key, at once."""
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("auth_secret", mode="before")
    @classmethod
    def _strong_secret(cls, value: object) -> object:
        """HS256 is only as strong as its key: refuse short, guessable secrets."""
        if value is None or value == "":
            return None
        if isinstance(value, str) and len(value) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("auth_public_key_file", mode="before")
    @classmethod
    def _optional_path(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def auth_enabled(self) -> bool:
        return self.auth_secret is not None or self.auth_public_key_file is not None

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgres://", "postgresql://", "postgresql+asyncpg://")):
            raise ValueError("must be a postgresql:// URL")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
            parts.hostname  # noqa: B018 - raises for a malformed IPv6 address
        except ValueError as exc:
            raise ValueError(f"must be a valid postgresql:// URL: {exc}") from None
        return value


def load_settings() -> Settings:
    """Read the environment now; raise `ConfigError` naming the first bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigError(f"{name}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
