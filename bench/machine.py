"""What the benchmark ran on, and per-process CPU and memory read from /proc."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from backend.core import allocator
from backend.core.errors import ConfigError
from backend.testing.server import under_allocator

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PACKAGES = ("uvicorn", "starlette", "sse-starlette", "asyncpg", "uvloop", "httptools", "websockets")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _git(*args: str) -> str:
    """Read-only git queries (the commit, whether the tree has changes)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def fsync_ms(folder: Path, rounds: int = 50) -> float:
    """Median time of an 8 KiB write + fdatasync in `folder` (what a commit waits for)."""
    path = folder / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(fd, b"\0" * 8192)
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return round(sorted(times)[len(times) // 2] * 1000, 3)


def machine_info(postgres_version: str, data_folder: Path) -> dict[str, Any]:
    """CPU, cores, memory, versions and the pgcast commit (with a dirty-tree flag)."""
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": postgres_version,
        "fsync_ms_median": fsync_ms(data_folder),
        "pgcast_commit": commit + ("-dirty" if dirty else ""),
        "packages": {name: _version(name) for name in PACKAGES},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "nofile_limit": _nofile(),
        "allocator": server_allocator(),
    }


def apt_install(packages: Sequence[str]) -> str | None:
    """Install Debian packages when this is root with apt-get; None once installed, else
    why not."""
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        return "this is not root with apt-get"
    print(f"[bench] installing {' '.join(packages)} (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", *packages]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed"
    return None


def install_jemalloc() -> None:
    """Before a measuring run starts any server: jemalloc from Debian where it is missing
    and this is root with apt-get. The servers run under it as `serve` does, and the
    memory a crowd leaves behind depends on it (docs/performance.md, "jemalloc")."""
    if allocator.jemalloc_library() is not None:
        return
    why = apt_install(["libjemalloc2"])
    allocator.jemalloc_library.cache_clear()
    if allocator.jemalloc_library() is None:
        reason = why or "apt-get did not provide it"
        print(f"[bench] no jemalloc ({reason}): the servers run under pymalloc", flush=True)


def server_allocator() -> str:
    """The allocator the servers run under: read from the environment they are started
    with (`under_allocator`, the choice `serve` makes by `ALLOCATOR`)."""
    try:
        env = under_allocator(dict(os.environ))
    except ConfigError as exc:
        return f"none ({exc.message})"
    library = allocator.jemalloc_library()
    chosen = env.get(allocator.CHOSEN)
    if chosen is None:
        return f"none (`serve` refuses ALLOCATOR={env.get('ALLOCATOR')!r})"
    if chosen == "jemalloc":
        return f"jemalloc ({library})"
    choice = env.get("ALLOCATOR", "auto")
    return f"pymalloc (ALLOCATOR={choice}{'' if library else ', no jemalloc found'})"


def _nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (those still alive)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def children_of(parent: int) -> list[int]:
    """Direct children of a process (Postgres backends of the postmaster)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


@dataclass
class CpuMeter:
    """CPU share of the server and of Postgres over one measurement window.

    Postgres backends that exit inside the window are not counted, so its share is a
    lower bound.
    """

    server_pid: int | None
    postmaster_pid: int | None
    _start: float = 0.0
    _server: float = 0.0
    _server_processes: list[int] = field(default_factory=list)
    _postgres: dict[int, float] = field(default_factory=dict)

    def _pg_pids(self) -> list[int]:
        if self.postmaster_pid is None:
            return []
        return [self.postmaster_pid, *children_of(self.postmaster_pid)]

    def _server_pids(self) -> list[int]:
        """The server and its children (the workers of `serve --workers N`)."""
        if self.server_pid is None:
            return []
        return [self.server_pid, *children_of(self.server_pid)]

    def start(self) -> None:
        self._start = time.monotonic()
        self._server_processes = self._server_pids()
        self._server = cpu_seconds(self._server_processes)
        self._postgres = {pid: cpu_seconds([pid]) for pid in self._pg_pids()}

    def stop(self) -> dict[str, float]:
        """Percent of one core used by the server and by Postgres since `start`."""
        elapsed = max(time.monotonic() - self._start, 1e-6)
        server = cpu_seconds(self._server_processes) - self._server
        postgres = sum(cpu_seconds([pid]) - self._postgres.get(pid, 0.0) for pid in self._pg_pids())
        return {
            "server_cpu_pct": round(100 * server / elapsed, 1),
            "postgres_cpu_pct": round(100 * postgres / elapsed, 1),
            "server_cpu_s": round(server, 3),
            "window_s": round(elapsed, 3),
        }
