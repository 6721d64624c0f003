"""Which allocator `serve` runs under, and the environment it re-executes itself with."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from backend.core import allocator
from backend.core.allocator import BEFORE, CHOSEN, JEMALLOC_CONF, environment, for_other_programs
from backend.core.errors import ConfigError

LIBRARY = "libjemalloc.so.2"


def test_auto_preloads_jemalloc_and_routes_python_objects_to_it() -> None:
    env = environment("auto", {"PATH": "/bin"}, LIBRARY)
    assert env is not None
    assert {k: v for k, v in env.items() if k != BEFORE} == {
        "PATH": "/bin",
        CHOSEN: "jemalloc",
        "LD_PRELOAD": LIBRARY,
        "PYTHONMALLOC": "malloc",
        "MALLOC_CONF": JEMALLOC_CONF,
    }
    assert for_other_programs(env) == {"PATH": "/bin"}


def test_other_programs_get_back_what_the_operator_had() -> None:
    before = {"LD_PRELOAD": "libx.so", "MALLOC_CONF": "narenas:2", "PYTHONMALLOC": "debug"}
    env = environment("auto", before, LIBRARY)
    assert env is not None
    assert for_other_programs(env) == before
    assert for_other_programs({CHOSEN: "pymalloc", "PATH": "/bin"}) == {
        CHOSEN: "pymalloc",
        "PATH": "/bin",
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


def test_jemalloc_is_purged_exactly_where_it_is_loaded_and_glibc_trimmed_otherwise() -> None:
    loaded = "libjemalloc" in Path("/proc/self/maps").read_text()
    assert (allocator.JEMALLOC_PURGE is not None) == loaded
    if not loaded:
        assert (allocator.RELEASE is not None) == (platform.libc_ver()[0] == "glibc")


RELEASE_SCRIPT = """
import gc
from backend.core.allocator import RELEASE, in_use

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

held = [[str(n)] for n in range(400_000)]
keep = held[::4096]  # a few survivors, as a crowd leaves
del held
gc.collect()
before = rss()
RELEASE()
print(in_use(), before, rss())
"""


def test_release_gives_a_freed_crowd_back_under_jemalloc() -> None:
    library = allocator.jemalloc_library()
    if library is None:
        pytest.skip("no jemalloc on this machine")
    env = {
        **os.environ,
        "LD_PRELOAD": library,
        "PYTHONMALLOC": "malloc",
        "MALLOC_CONF": "background_thread:false,dirty_decay_ms:-1,muzzy_decay_ms:-1",
    }
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_SCRIPT],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    name, before, after = done.stdout.split()
    assert name == "jemalloc"
    assert int(before) - int(after) > 20 * 1024  # KiB: most of the freed crowd went back
