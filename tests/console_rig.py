"""A console that answers: a persistent bash on a pty behind a TCP port on 127.0.0.1.

It plays UTM's TCP-server serial port (reference/utm-makefile-keys.md §3): a thread in the
test process holds bash on a pty and relays between it and every TCP client on loopback.
Optionally the shell runs in its own network namespace with one veth address, so a test can
"discover" it.
"""

from __future__ import annotations

import contextlib
import os
import pty
import selectors
import shlex
import signal
import socket
import threading
from pathlib import Path


class ConsoleRig:
    """A shell on a pty, served to any number of TCP clients on 127.0.0.1 (a thread).

    Like UTM's TCP-server serial port: what a client sends goes to the pty, what the pty
    prints goes to every client. The shell lives as long as the rig, whatever the clients do.
    """

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.pid, self.master = pty.fork()
        if self.pid == 0:  # the child: the console's shell
            os.execvpe(command[0], command, env)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.server, selectors.EVENT_READ, "accept")
        sel.register(self.master, selectors.EVENT_READ, "pty")
        clients: list[socket.socket] = []
        while not self._stop.is_set():
            for key, _ in sel.select(0.1):
                if key.data == "accept":
                    conn, _addr = self.server.accept()
                    clients.append(conn)
                    sel.register(conn, selectors.EVENT_READ, "client")
                elif key.data == "pty":
                    try:
                        data = os.read(self.master, 65536)
                    except OSError:  # the shell is gone
                        return
                    for c in list(clients):
                        try:
                            c.sendall(data)
                        except OSError:
                            clients.remove(c)
                            sel.unregister(c)
                else:
                    peer = key.fileobj
                    assert isinstance(peer, socket.socket)
                    conn = peer
                    try:
                        data = conn.recv(65536)
                    except OSError:  # a client that went away abruptly
                        data = b""
                    if data:
                        os.write(self.master, data)
                    else:
                        clients.remove(conn)
                        sel.unregister(conn)
                        conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.master)


def start_console(tmp: Path, netns_address: str | None = None) -> ConsoleRig:
    """Start the rig; with `netns_address` (e.g. "10.77.0.5/24") bash runs in a new netns."""
    script = tmp / "console.sh"
    lines = ["set -e"]
    if netns_address:  # already inside `unshare --net`: a namespace of our own
        lines += [
            "ip link add v0 type veth peer name v1",
            f"ip addr add {shlex.quote(netns_address)} dev v0",
            "ip link set v0 up",
        ]
    script.write_text("\n".join([*lines, "exec bash --norc --noprofile -i", ""]))
    command = ["unshare", "--net", "bash", str(script)] if netns_address else ["bash", str(script)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "dumb", "PS1": "vm# ", "HOME": "/root"}
    return ConsoleRig(command, env)


REPO = Path(__file__).resolve().parents[1]


def install_standins(tmp: Path) -> dict[str, str]:
    """Wrappers for the lab's utmctl/osascript/hs stand-ins in tmp/bin; the env to use them
    (PATH finds them as `utmctl`, `osascript`, `hs`, as a Mac's PATH finds the real ones)."""
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
        "RUNBOOK_UTM_STATE": str(tmp / "utm.json"),
    }
