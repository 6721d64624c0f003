"""Getting the peers: a virtualenv in `.tools/peers/` and nginx with the Nchan module.

The virtualenv is created by the bench itself with pip (the peers are not pgcast
dependencies), once per `requirements.txt`: a stamp file holds the requirements it was
built from. nginx and Nchan come from Debian; when missing they are installed only when
running as root with apt-get, otherwise Nchan is skipped with a note.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from dataclasses import dataclass
from pathlib import Path

from bench.machine import ROOT, apt_install

PEERS_DIR = Path(__file__).resolve().parent
REQUIREMENTS = PEERS_DIR / "requirements.txt"
VENV = ROOT / ".tools" / "peers"
NGINX = Path("/usr/sbin/nginx")
NCHAN_MODULES = (
    Path("/usr/lib/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/share/nginx/modules/ngx_nchan_module.so"),
)
DEBIAN_PACKAGES = ("nginx-light", "libnginx-mod-nchan")


class PeersUnavailable(RuntimeError):
    """The peers' virtualenv could not be created (no network, no pip)."""


def peer_python() -> Path:
    """The peers' interpreter, installing them first when needed."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements"
    wanted = REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"[bench] installing the peers into {VENV} (pip) ...", flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PeersUnavailable(f"cannot create {VENV}: {exc}") from exc
    done = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PeersUnavailable("pip could not install the peers: " + " | ".join(tail))
    stamp.write_text(wanted)
    return python


@dataclass(frozen=True)
class Nchan:
    """Where nginx and the Nchan module are, or why they are not used."""

    nginx: Path | None
    module: Path | None
    note: str = ""

    @property
    def available(self) -> bool:
        return self.nginx is not None and self.module is not None


def _found() -> Nchan:
    module = next((path for path in NCHAN_MODULES if path.exists()), None)
    nginx = NGINX if NGINX.exists() else None
    return Nchan(nginx, module)


def find_nchan() -> Nchan:
    """nginx + Nchan from Debian; installed with apt-get only when running as root."""
    found = _found()
    if found.available:
        return found
    why = apt_install(DEBIAN_PACKAGES)
    if why is not None:
        return Nchan(
            None,
            None,
            f"Nchan skipped: nginx or libnginx-mod-nchan is not installed and {why} (install "
            "them with `apt-get install nginx-light libnginx-mod-nchan`)",
        )
    found = _found()
    if not found.available:
        return Nchan(None, None, "Nchan skipped: apt-get did not provide the module")
    return found
