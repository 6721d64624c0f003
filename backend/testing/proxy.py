"""nginx from Debian's package in front of test servers, with the shipped configuration.

The site file in deploy/nginx/pgcast.conf is used as shipped, except for the two lines a
test must change: the upstream servers (ports on this machine) and the listen port. nginx
runs with its own prefix and main file under a temporary directory, so the system's nginx
and its modules are left alone.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from backend.testing.programs import require_program
from backend.testing.server import free_port

NGINX = Path("/usr/sbin/nginx")
SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "pgcast.conf"


def render_site(upstreams: Sequence[str], port: int) -> str:
    """The shipped site file with these `host:port` upstreams, listening on `port`."""
    site = SITE.read_text()
    servers = "".join(
        f"    server {address} max_fails=1 fail_timeout=5s;\n" for address in upstreams
    )
    site, count = re.subn(r"(?m)^    server pgcast-\d+:8000 [^\n]*\n", "", site)
    assert count >= 2, "deploy/nginx/pgcast.conf no longer names its upstream servers"
    site = site.replace("upstream pgcast {\n", "upstream pgcast {\n" + servers, 1)
    site, count = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", site)
    assert count == 1
    return site


def _main_file(prefix: Path) -> str:
    temp = " ".join(
        f"{name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; {temp} include {prefix / 'pgcast.conf'}; }}\n"
    )


@contextlib.contextmanager
def nginx_in_front(upstreams: Sequence[str]) -> Iterator[str]:
    """nginx proxying to `upstreams` for the block; yields its base URL."""
    binary = require_program(NGINX, "apt-get install nginx")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pgcast-nginx-") as directory:
        prefix = Path(directory)
        (prefix / "pgcast.conf").write_text(render_site(upstreams, port))
        (prefix / "nginx.conf").write_text(_main_file(prefix))
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_listening(url, process, prefix / "error.log")
            yield url
        finally:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_listening(url: str, process: subprocess.Popen[bytes], errors: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = errors.read_text() if errors.exists() else ""
            raise RuntimeError(f"nginx exited with status {process.returncode}: {log}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}/healthz", timeout=1)
            return
        time.sleep(0.05)
    raise TimeoutError(f"nginx at {url} did not start listening")
