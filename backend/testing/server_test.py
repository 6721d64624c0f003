"""The check that a started server, not some other process, holds its port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from backend.testing.server import _listens_on


def test_a_port_this_process_listens_on_is_recognised() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert _listens_on(os.getpid(), port)
    assert not _listens_on(os.getpid(), port)  # closed


def test_a_port_another_process_listens_on_is_not_ours() -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
            " print(s.getsockname()[1], flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            port = int(holder.stdout.readline())
            assert _listens_on(holder.pid, port)
            assert not _listens_on(os.getpid(), port)
        finally:
            holder.kill()


def test_a_port_listened_on_every_address_is_recognised() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        assert _listens_on(os.getpid(), sock.getsockname()[1])
