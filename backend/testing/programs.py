"""Finding the Debian programs that tests drive (browsers, nginx); nothing here downloads one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def require_program(path: Path, install: str, *, ci: bool | None = None) -> str:
    """The program's path; skip when it is missing, but fail under CI, which installs it."""
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    message = f"{path} is missing: install it with `{install}` (.ci/run does, as root)"
    if (os.environ.get("CI") == "true") if ci is None else ci:
        pytest.fail(message)
    pytest.skip(message)
