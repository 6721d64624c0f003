"""One embedded PostgreSQL per test run, shared by the xdist workers, started on first use.

The controlling pytest process only makes a state folder and names it in an environment
variable that the workers inherit. The first test that needs a database (in whichever
process) starts the server under a file lock, migrates a template database and writes the
server's URL into the folder; everyone else reads it from there and clones the template
into databases of their own (CREATE DATABASE ... TEMPLATE is a file copy, milliseconds).
So `--collect-only` and a run of unit tests start no Postgres at all.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import anyio

from backend.connectors.embedded import EmbeddedPostgres
from backend.connectors.migrations import upgrade
from backend.connectors.scratch import create_database, drop_database, with_database

SERVER_ENV = "PGCAST_TEST_SERVER_URL"
"""Set by hand to test against a running server: nothing is started then."""
STATE_ENV = "PGCAST_TEST_STATE_DIR"
TEMPLATE = "pgcast_template"


def make_state_dir() -> Path:
    """The folder that will hold the lazily started server; cheap, starts nothing."""
    state = Path(tempfile.mkdtemp(prefix="pgcast-test-"))
    os.environ[STATE_ENV] = str(state)
    return state


def _start_in(state: Path) -> str:
    server = EmbeddedPostgres(state / "pg", durable=False)
    admin_url = server.start()
    template_url = anyio.run(create_database, admin_url, TEMPLATE)
    upgrade(template_url)
    return admin_url


def shared_server_url() -> str:
    """The admin URL of the run's server, starting it if no process has yet."""
    url = os.environ.get(SERVER_ENV)
    if url:
        return url
    folder = os.environ.get(STATE_ENV)
    if not folder:
        raise RuntimeError(f"{STATE_ENV} is not set: backend/conftest.py did not run")
    state = Path(folder)
    with (state / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        url_file = state / "url"
        if url_file.exists():
            url = url_file.read_text()
        else:
            url = _start_in(state)
            url_file.write_text(url)
    os.environ[SERVER_ENV] = url
    return url


def remove_state_dir(state: Path) -> None:
    """Stop the server if one was started, and delete the folder."""
    if (state / "pg").exists():
        EmbeddedPostgres(state / "pg").destroy()
    shutil.rmtree(state, ignore_errors=True)


async def clone_template(prefix: str = "t") -> str:
    """A new migrated database; returns its URL."""
    # The first call may start the server, which blocks: off the event loop, then.
    started = os.environ.get(SERVER_ENV)
    admin_url = started if started else await anyio.to_thread.run_sync(shared_server_url)
    name = f"{prefix}_{secrets.token_hex(6)}"
    return await create_database(admin_url, name, template=TEMPLATE)


async def drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    await drop_database(with_database(url, "postgres"), name)
