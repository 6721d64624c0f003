"""Which allocator `serve` runs under, and the environment it re-executes itself with."""

from __future__ import annotations

import ctypes.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from backend.core import allocator
from backend.core.allocator import CHOSEN, JEMALLOC_CONF, environment
from backend.core.errors import ConfigError
from backend.testing.server import free_port, stop_process, wait_healthy

LIBRARY = "libjemalloc.so.2"


def test_auto_preloads_jemalloc_and_routes_python_objects_to_it() -> None:
    env = environment("auto", {"PATH": "/bin"}, LIBRARY)
    assert env == {
        "PATH": "/bin",
        CHOSEN: "jemalloc",
        "LD_PRELOAD": LIBRARY,
        "PYTHONMALLOC": "malloc",
        "MALLOC_CONF": JEMALLOC_CONF,
    }


def test_an_operators_preload_and_jemalloc_settings_are_kept() -> None:
    env = environment("jemalloc", {"LD_PRELOAD": "libx.so", "MALLOC_CONF": "narenas:2"}, LIBRARY)
    assert env is not None
    assert (env["LD_PRELOAD"], env["MALLOC_CONF"]) == (f"libx.so {LIBRARY}", "narenas:2")


def test_without_jemalloc_auto_keeps_pymalloc_and_says_so_once() -> None:
    assert environment("auto", {"PATH": "/bin"}, None) == {"PATH": "/bin", CHOSEN: "pymalloc"}
    assert environment("pymalloc", {}, LIBRARY) == {CHOSEN: "pymalloc"}


def test_asking_for_jemalloc_where_there_is_none_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="apt-get install libjemalloc2"):
        environment("jemalloc", {}, None)


def test_a_process_that_was_started_under_its_choice_keeps_it() -> None:
    assert environment("auto", {CHOSEN: "pymalloc"}, LIBRARY) is None
    assert environment("jemalloc", {CHOSEN: "jemalloc"}, None) is None


def test_freed_memory_can_be_released_under_glibc() -> None:
    if platform.libc_ver()[0] == "glibc":
        assert allocator.RELEASE is not None
    else:
        assert allocator.RELEASE is allocator.JEMALLOC_PURGE


@pytest.mark.external
def test_serve_runs_itself_again_under_jemalloc_where_the_machine_has_it(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    chosen = ("ALLOCATOR", "PGCAST_ALLOCATOR", "LD_PRELOAD", "PYTHONMALLOC", "MALLOC_CONF")
    env = {k: v for k, v in os.environ.items() if k not in chosen}
    env.update(DATABASE_URL=database_url, PORT=str(port), HOST="127.0.0.1")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve"], env=env, stdout=out, stderr=out
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        maps = Path(f"/proc/{process.pid}/maps").read_text()  # the same process, re-executed
        expected = "jemalloc" if ctypes.util.find_library("jemalloc") else "pymalloc"
        assert ("libjemalloc" in maps) == (expected == "jemalloc")
        assert f"memory allocator: {expected}" in log.read_text()
    finally:
        stop_process(process)
