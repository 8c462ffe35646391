"""A console that answers: a persistent bash on a pty behind a TCP port on 127.0.0.1.

It plays UTM's TCP-server serial port (reference/utm-makefile-keys.md §3): one socat holds
bash on a pty (`PTY` <-> `EXEC:...,pty`), a second accepts TCP clients on loopback and opens that
pty for each (`fork`, `-t 0` so a closed client never swallows the next answer). Optionally the
shell runs in its own network namespace with one veth address, so a test can "discover" it.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ConsoleRig:
    port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(check, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise RuntimeError(f"console rig: {what} did not appear")


def start_console(tmp: Path, netns_address: str | None = None) -> ConsoleRig:
    """Start the rig; with `netns_address` (e.g. "10.77.0.5/24") bash runs in a new netns."""
    assert shutil.which("socat"), "socat is required"
    script = tmp / "console.sh"
    lines = ["set -e"]
    if netns_address:  # already inside `unshare --net`: a namespace of our own
        lines += [
            "ip link add v0 type veth peer name v1",
            f"ip addr add {shlex.quote(netns_address)} dev v0",
            "ip link set v0 up",
        ]
    script.write_text("\n".join([*lines, "exec bash --norc --noprofile -i", ""]))
    command = f"unshare --net bash {script}" if netns_address else f"bash {script}"
    link = tmp / "console-pty"
    port = _free_port()
    rig = ConsoleRig(port)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "dumb", "PS1": "vm# ", "HOME": "/root"}
    rig.procs.append(
        subprocess.Popen(
            ["socat", f"PTY,link={link},rawer", f"EXEC:{command},pty,setsid,ctty,stderr,sane"],
            env=env,
        )
    )
    _wait_for(link.exists, "the pty link")
    rig.procs.append(
        subprocess.Popen(
            [
                "socat",
                "-t",
                "0",
                f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                f"OPEN:{link},rawer",
            ]
        )
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    _wait_for(listening, "the TCP listener")
    return rig


REPO = Path(__file__).resolve().parents[1]


def install_standins(tmp: Path) -> dict[str, str]:
    """Wrappers for the lab's utmctl/osascript/hs stand-ins in tmp/bin; the env to use them."""
    import sys

    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for program, module in (("utmctl", "utmctl"), ("osascript", "osascript"), ("hs", "hs")):
        wrapper = bin_dir / program
        wrapper.write_text(
            f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} "
            f'-m runbook.lab.standins.{module} "$@"\n'
        )
        wrapper.chmod(0o755)
    import os

    return {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "RUNBOOK_MACOS_STANDINS": "1",
        "RUNBOOK_UTM_STATE": str(tmp / "utm.json"),
    }
