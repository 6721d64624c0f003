"""`pgcast serve` and `pgcast migrate`: the commands that run the server or touch the schema."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from backend.core.settings import Settings

logger = logging.getLogger(__name__)


def settings_or_exit() -> Settings:
    """The settings, with logging set up from them. A bad variable raises ConfigError,
    which `main` prints as one line naming it, with exit status 2. Settings and logging
    load here, not at import: every `pgcast` command imports this module, and a client
    command such as `pgcast publish` needs neither."""
    from backend.core.logging import configure_logging
    from backend.core.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


@contextlib.contextmanager
def _database(settings: Settings, *, stable: bool) -> Iterator[str]:
    """DATABASE_URL when set; otherwise the embedded server, stopped on exit if we started it.

    `stable` puts the embedded server on EMBEDDED_PG_PORT, where users and `pgcast db`
    find it; otherwise (a migration run) any free port will do.
    """
    if settings.database_url:
        yield settings.database_url
        return
    from backend.connectors.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(
        settings.data_dir / "postgres", port=settings.embedded_pg_port if stable else None
    )
    already_running = server.running_port() is not None
    url = server.start()
    try:
        yield url
    finally:
        if not already_running:
            server.stop()


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (env HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (env PORT; 0: any free one).")
    ] = None,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    workers: Annotated[
        str | None,
        typer.Option(help="Server processes on the one port: a number or 'auto' (env WORKERS)."),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Allow a non-loopback address without AUTH_SECRET (env INSECURE): anyone"
            " who can reach it may read, publish and administer everything.",
        ),
    ] = False,
) -> None:
    """Migrate the database and serve HTTP, SSE and WebSocket.

    Without AUTH_SECRET (or AUTH_PUBLIC_KEY_FILE) it only binds a loopback address.

    Example: AUTH_SECRET=... pgcast serve --host 0.0.0.0 --port 8000
    """
    settings = settings_or_exit()
    if workers is not None:
        settings = _with_workers(settings, workers)
    if reload and settings.workers > 1:
        typer.echo("pgcast: --reload runs one process: drop --workers (or WORKERS)", err=True)
        raise typer.Exit(2)
    from backend.core.allocator import run_under

    run_under(settings.allocator)  # returns once running under it
    import anyio

    from backend.connectors.database import without_password
    from backend.connectors.schema_version import is_current
    from backend.interface.security.protection import check_bind
    from backend.interface.server.runner import run_server

    bind = host or settings.host
    insecure = insecure or settings.insecure
    check_bind(bind, auth_enabled=settings.auth_enabled, insecure=insecure)
    if insecure:
        os.environ["INSECURE"] = "true"  # for the app factory of --reload's worker
    with _database(settings, stable=True) as url:
        logger.info("database %s", without_password(url), extra={"action": "database"})
        os.environ["DATABASE_URL"] = url
        if not anyio.run(is_current, url):
            from backend.connectors.migrations import upgrade

            upgrade(url)
        run_server(
            settings.model_copy(update={"database_url": url, "insecure": insecure}),
            host=bind,
            port=settings.port if port is None else port,
            reload=reload,
        )


def _with_workers(settings: Settings, text: str) -> Settings:
    from backend.core.settings import worker_count

    try:
        count = worker_count(text)
    except ValueError as exc:
        typer.echo(f"pgcast: --workers {exc}", err=True)
        raise typer.Exit(2) from None
    return settings.model_copy(update={"workers": count})


def migrate(
    check: Annotated[
        bool, typer.Option("--check", help="Verify models and migrations agree, in a scratch DB.")
    ] = False,
) -> None:
    """Apply the database migrations (forward-only).

    Example: DATABASE_URL=postgresql://localhost/app pgcast migrate
    """
    settings = settings_or_exit()
    from backend.connectors import migrations

    with _database(settings, stable=False) as url:
        if not check:
            migrations.upgrade(url)
            typer.echo("pgcast: database is at the newest revision")
            return
        from backend.connectors.scratch import scratch_database

        with scratch_database(url) as scratch_url:
            migrations.upgrade(scratch_url)
            problem = migrations.check(scratch_url)
        if problem:
            typer.echo(f"pgcast: models and migrations differ: {problem}", err=True)
            raise typer.Exit(1)
        typer.echo("pgcast: models and migrations agree")
