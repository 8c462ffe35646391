"""Helpers for the runner tests: temp params/secret stores, a socket guard, record scans."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.engine.steps import Context

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params"

# Loaded into every Python process of a run (the runner and its kernel) through PYTHONPATH.
SOCKET_GUARD = """
import os, socket, sys
_LOG = os.environ["RUNBOOK_TEST_SOCKET_LOG"]
_LOCAL = {None, "", "localhost", "127.0.0.1", "::1"}

def _note(what):
    with open(_LOG, "a") as fh:
        fh.write(f"{os.getpid()} {' '.join(sys.argv[:3])}: {what}\\n")

_connect, _connect_ex, _gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

def _allowed(sock, addr):
    return sock.family == socket.AF_UNIX or (isinstance(addr, tuple) and addr[0] in _LOCAL)

def connect(self, addr):
    if not _allowed(self, addr):
        _note(f"connect {addr!r}")
        raise OSError("socket guard: no network traffic allowed here")
    return _connect(self, addr)

def connect_ex(self, addr):
    if not _allowed(self, addr):
        _note(f"connect_ex {addr!r}")
        return 101
    return _connect_ex(self, addr)

def getaddrinfo(host, *args, **kwargs):
    if (host.decode() if isinstance(host, bytes) else host) not in _LOCAL:
        _note(f"getaddrinfo {host!r}")
        raise socket.gaierror("socket guard: no name lookups allowed here")
    return _gai(host, *args, **kwargs)

socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
with open(os.environ["RUNBOOK_TEST_PY_LOG"], "a") as fh:
    fh.write(f"{sys.executable} {' '.join(sys.argv[:3])}\\n")
"""


def guard_env(tmp: Path) -> dict[str, str]:
    guard = tmp / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(guard), str(REPO)) if p)
    env["RUNBOOK_TEST_SOCKET_LOG"] = str(tmp / "sockets.log")
    env["RUNBOOK_TEST_PY_LOG"] = str(tmp / "pythons.log")
    return env


def runbook(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from runbook.cli import main; main()", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def scan(record: Path, values: list[str]) -> list[str]:
    """Every (file, value) pair where a secret value appears in any file of the record."""
    hits = []
    for path in sorted(record.rglob("*")):
        if path.is_file():
            text = path.read_bytes().decode(errors="replace")
            hits += [f"{path.name}: {v[:6]}..." for v in values if v in text]
    return hits


def write_params(
    tmp: Path, *, address: str = "127.0.0.1", port: int = 9, nixos_config: Path | None = None
) -> Path:
    """A params file for one cache VM at `address:port` with local paths that exist."""
    config = nixos_config or tmp / "nixos-config"
    config.mkdir(exist_ok=True)
    (config / "flake.nix").touch()
    key = tmp / "id_ed25519"
    key.touch()
    path = tmp / "test.yaml"
    path.write_text(
        f"""deployment: test
nixos_config: {config}
identity: {key}
known_hosts: {tmp / "known_hosts"}
vms:
  - name: vm-test-cache
    role: cache
    address: {address}
    port: {port}
cache:
  vm: vm-test-cache
  host: {address}
"""
    )
    return path


def build_notebooks(folder: Path) -> Path:
    """The runbook's notebooks built from the outline into `folder`, as `runbook deploy` does."""
    from runbook.notebook import build
    from runbook.sections import outline

    build.write(outline.sources(), folder)
    return folder


def inject_connection(ctx: Context, key: tuple[str, bool, str], host: object) -> None:
    """A fake host as the connection `ctx` hands out for `key` (VM name, installed, password
    name): its connection pool gives it as if connected."""
    ctx.pool._connections[key] = host  # type: ignore[assignment]
    ctx.pool._connecting[key] = threading.Lock()
