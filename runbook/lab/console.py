"""Lab consoles: each host's console is a real root login shell on a pty inside the host,
served on a loopback TCP port of this machine, as UTM serves a VM's TCP serial port.

UTM's "TCP Server Connection" serial port listens on 127.0.0.1 and is "a raw TCP socket: `nc
127.0.0.1 4444`" (reference/utm-makefile-keys.md §3 "Serial, TCP server mode"). A lab console
behaves the same way: one daemon per host (`python -m runbook.lab.console serve NAME HOSTDIR`,
in this machine's root namespaces) holds a pty whose other end is `bash -l` run as root through
`nsenter` into the host's namespaces, and serves it on 127.0.0.1 to ONE client at a time, as
QEMU's `-chardev socket,server=on` does (qemu/qemu `chardev/char-socket.c`): the listener is
opened with a backlog of 1 (`qio_net_listener_open_sync(..., 1, ...)`), `tcp_chr_new_client`
clears its accept callback while a client is connected and `tcp_chr_disconnect_locked` sets it
again when that client leaves. So a second client's connection completes in the kernel's
backlog but is neither read nor written until the first one leaves, and what the console prints
while nobody is connected is lost (`tcp_chr_write` fails with EIO when not connected). Like a
getty, a shell that exits (`exit`, the host's reboot) is started again; the daemon ends when the
host's init is gone.

The serial port listens where the VM's UTM configuration says (its TCP serial port, which 01
sets to params `console.serial_port` + the VM's index): `ensure(lab, name, port)` starts the
daemon on that port (`console-port` in the host's dir), as QEMU opens the port the
configuration names when the VM starts.

The typing stand-ins (osascript `input scan code`, hs key events) play UTM's SPICE keyboard,
which is not the serial port: they write to a second loopback port of the daemon (`keyboard`
in console.json), whose bytes go to the same pty and which gets nothing back. (A lab
simplification: on a real VM the display's tty and the serial port's are different terminals.)

The Mac side of the lab (what UTM, osascript and Hammerspoon are on the user's Mac) lives in
`<state_dir>/mac/`: `bin/{utmctl,osascript,hs}` wrappers for the stand-ins in
runbook/lab/standins/ (each names the lab's UTM state itself, so the product only needs their
paths: params `utm.utmctl`, `utm.osascript`, `console.hs`), and `utm.json`, UTM's state: the
VMs it has, and `hosts`, the lab host that plays the VM of each name (its "hardware": a VM of
that name, made by 01 or by lab up, runs on that host, with that host's MAC).
"""

from __future__ import annotations

import json
import logging
import os
import pty
import selectors
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from runbook.lab import host
from runbook.lab.config import HostSpec, LabParams, Phase
from runbook.lab.net import netns
from runbook.transport.local import run

logger: Final = logging.getLogger(__name__)

REPO: Final = Path(__file__).resolve().parents[2]
ENDPOINT_FILE: Final = "console.json"  # in the host's dir: {"host", "port", "pid", "keyboard"}
PORT_FILE: Final = "console-port"  # in the host's dir: the serial port to listen on (0: any)
LOOPBACK: Final = "127.0.0.1"
START_TIMEOUT: Final = 10.0
# How long the daemon waits for a host's init before giving up (a host being rebuilt).
ORPHAN_GRACE: Final = 5.0
RESPAWN_DELAY: Final = 0.3
ROWS, COLS = 24, 80
# The environment of a console login (a NixOS console has TERM=linux); /etc/profile sets PATH.
SHELL_ENV: Final = {
    "TERM": "linux",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "LANG": "C.UTF-8",
    "PATH": "/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}
MAC_PROGRAMS: Final = ("utmctl", "osascript", "hs")
UTM_STATE_ENV: Final = "RUNBOOK_UTM_STATE"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int  # the serial port: one client at a time
    pid: int
    keyboard: int = 0  # the keyboard port of the typing stand-ins (0: none)


# --- seen from outside: start, stop, where --------------------------------------------------------


def endpoint_file(lab: LabParams, name: str) -> Path:
    return lab.host_dir(name) / ENDPOINT_FILE


def _daemon_argv(lab: LabParams, name: str) -> list[str]:
    return [sys.executable, "-m", "runbook.lab.console", "serve", name, str(lab.host_dir(name))]


def _is_daemon(pid: int, lab: LabParams, name: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return False
    want = [a.encode() for a in _daemon_argv(lab, name)[1:]]
    return argv[1:] == want


def endpoint(lab: LabParams, name: str) -> Endpoint | None:
    """The running console of host `name` (its daemon alive and listening), or None."""
    try:
        data = json.loads(endpoint_file(lab, name).read_text())
        found = Endpoint(
            str(data["host"]), int(data["port"]), int(data["pid"]), int(data.get("keyboard", 0))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _is_daemon(found.pid, lab, name):
        return None
    # asked on the keyboard port: a probe of the serial port would take its one client's place
    with socket.socket() as s:
        s.settimeout(1.0)
        return found if s.connect_ex((found.host, found.keyboard or found.port)) == 0 else None


def ensure(lab: LabParams, name: str, port: int = 0) -> Endpoint:
    """Start host `name`'s console unless it already runs (on `port`, when one is asked for:
    the VM's configured TCP serial port); its endpoint."""
    running = endpoint(lab, name)
    if running is not None and port in (0, running.port):
        return running
    stop(lab, name)
    lab.host_dir(name).mkdir(parents=True, exist_ok=True)
    (lab.host_dir(name) / PORT_FILE).write_text(f"{port}\n")
    log = lab.host_dir(name) / "console.log"
    env = {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/bin")}
    # setsid -f: the daemon is nobody's child, like the host's init (host.start)
    detach = 'log=$1; shift; setsid -f "$@" >>"$log" 2>&1 </dev/null'
    run(["sh", "-c", detach, "sh", str(log), *_daemon_argv(lab, name)], env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = endpoint(lab, name)
        if found is not None:
            logger.info("lab console of %s on %s:%d", name, found.host, found.port)
            return found
        time.sleep(0.02)
    tail = log.read_text()[-400:] if log.exists() else ""
    raise RuntimeError(f"lab console of {name} did not start within {START_TIMEOUT:g} s: {tail!r}")


def _daemon_pids(lab: LabParams, name: str) -> list[int]:
    """Every console daemon serving `name` for this lab (a crashed run may have left one)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _is_daemon(int(entry), lab, name):
            found.append(int(entry))
    return found


def stop(lab: LabParams, name: str) -> None:
    """Stop host `name`'s console daemon (its shell gets a hangup) and forget its endpoint."""
    pids = _daemon_pids(lab, name)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _is_daemon(p, lab, name)]
        time.sleep(0.01)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    endpoint_file(lab, name).unlink(missing_ok=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class Plays:
    """The deployment VM a lab host plays: its UTM name, and its serial port (0: none)."""

    vm: str
    serial_port: int = 0


def ensure_all(lab: LabParams, plays: dict[str, Plays]) -> dict[str, Endpoint]:
    """Every host's console running on its VM's serial port, and the Mac side written."""
    found = {spec.name: ensure(lab, spec.name, plays[spec.name].serial_port) for spec in lab.hosts}
    write_mac_side(lab, plays)
    return found


def port(lab: LabParams, name: str) -> int | None:
    """The console's TCP port on 127.0.0.1 (for `lab status --json`), or None."""
    found = endpoint(lab, name)
    return found.port if found is not None else None


# --- the Mac side: stand-in wrappers and UTM's VM list ---------------------------------------------


def mac_dir(lab: LabParams) -> Path:
    return lab.state_dir / "mac"


def utm_state_file(lab: LabParams) -> Path:
    return mac_dir(lab) / "utm.json"


def program(lab: LabParams, name: str) -> Path:
    """The Mac-side stand-in `name` (utmctl, osascript, hs): a params value of the lab's."""
    return mac_dir(lab) / "bin" / name


def iso_file(lab: LabParams) -> Path:
    """The lab's NixOS ISO (params `utm.iso`): a file UTM attaches; the live phase is the
    host's own, so its content is a note."""
    return mac_dir(lab) / "nixos-minimal.iso"


def nic_mac(name: str) -> str | None:
    """The MAC of the host's eth0 (UTM's `address` of the VM's network interface), upper case."""
    result = run(["ip", "-n", netns(name), "-o", "link", "show", "eth0"], check=False)
    words = result.stdout.split()
    if "link/ether" in words:
        return words[words.index("link/ether") + 1].upper()
    return None


def _wrapper(lab: LabParams, program: str) -> str:
    state = shlex.quote(str(utm_state_file(lab)))
    return (
        "#!/bin/sh\n"
        f"# The lab's stand-in for macOS `{program}` (runbook/lab/standins/); see runbook/lab/console.py\n"
        f"{UTM_STATE_ENV}={state} PYTHONPATH={shlex.quote(str(REPO))} "
        f'exec {shlex.quote(sys.executable)} -m runbook.lab.standins.{program} "$@"\n'
    )


def installed_vm(lab: LabParams, spec: HostSpec, plays: Plays) -> dict[str, Any]:
    """The VM an installed host plays, as 01 would have made it and 03 left it: a bridged NIC
    with the host's MAC, a display, the TCP serial port, the disk on VirtIO, no ISO (the
    configuration record's keys: utm_state.new_vm)."""
    from runbook.lab.standins import utm_state

    vm = utm_state.new_vm(plays.vm)
    mac = nic_mac(spec.name) or vm["mac"]
    ports = [{"interface": "tcp", "port": plays.serial_port}] if plays.serial_port else []
    vm.update(
        status="started",
        memory=4096,
        cpu_cores=4,
        mac=mac,
        nics=[{"mode": "bridged", "address": mac, "host_interface": lab.bridge}],
        displays=[{"hardware": "virtio-ramfb"}],
        serial_ports=ports,
        serial={"host": LOOPBACK, "port": plays.serial_port} if plays.serial_port else None,
        drives=[d for d in vm["drives"] if not d["removable"]],
        lab_host=spec.name,
    )
    return vm


def write_mac_side(lab: LabParams, plays: dict[str, Plays]) -> None:
    """The stand-in wrappers, the ISO and utm.json: `hosts` (which lab host plays the VM of
    each name), and the VMs of installed hosts (VMs already made, by 01 or an earlier up,
    are kept as they are: UTM's configuration is the user's)."""
    from runbook.lab.standins import utm_state

    bin_dir = mac_dir(lab) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in MAC_PROGRAMS:
        wrapper = bin_dir / name
        wrapper.write_text(_wrapper(lab, name))
        wrapper.chmod(0o755)
    if not iso_file(lab).exists():
        iso_file(lab).write_text("the runbook lab's NixOS ISO: its hosts boot the live phase\n")
    state_file = utm_state_file(lab)
    state: dict[str, Any] = (
        json.loads(state_file.read_text())
        if state_file.exists()
        else {"vms": [], "version": utm_state.DEFAULT_VERSION}
    )
    state["hosts"] = {
        plays[spec.name].vm: {
            "lab_host": spec.name,
            "state_dir": str(lab.state_dir),
            "mac": nic_mac(spec.name),
            "console": str(endpoint_file(lab, spec.name)),
        }
        for spec in lab.hosts
    }
    state.pop("keyboards", None)  # the keyboard port is read from the host's console.json
    names = {vm["name"] for vm in state["vms"]}
    for spec in lab.hosts:
        if spec.phase is Phase.INSTALLED and plays[spec.name].vm not in names:
            state["vms"].append(installed_vm(lab, spec, plays[spec.name]))
    tmp = state_file.with_name(state_file.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(state_file)


# --- the daemon ---------------------------------------------------------------------------------


class ConsoleDaemon:
    """One host's console: a pty with a root login shell in the host, served to one TCP client
    at a time (QEMU's serial chardev), plus the keyboard port the typing stand-ins write to."""

    def __init__(self, name: str, host_dir: Path) -> None:
        self.name = name
        self.host_dir = host_dir
        self.sel = selectors.DefaultSelector()
        self.listener = self._listen()
        self.keyboard = self._listen_keyboard()
        self.client: socket.socket | None = None  # the serial port's one client
        self.typists: list[socket.socket] = []  # keyboard connections: input only
        self.master: int | None = None
        self.shell: subprocess.Popen[bytes] | None = None
        self.next_spawn = 0.0
        self.orphan_since: float | None = None
        self.running = True

    def _listen(self) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self._wanted() or self._previous("port")))
        sock.listen(1)  # char-socket.c opens its listener with a backlog of 1
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, "listen")
        return sock

    def _listen_keyboard(self) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self._previous("keyboard")))
        sock.listen(16)
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, "keyboard")
        return sock

    def _wanted(self) -> int:
        """The VM's configured serial port (PORT_FILE), 0 for any."""
        try:
            return int((self.host_dir / PORT_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _previous(self, key: str) -> int:
        """The previous daemon's port (so UTM's VM list stays right), if it is free; else 0."""
        try:
            port = int(json.loads((self.host_dir / ENDPOINT_FILE).read_text())[key])
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((LOOPBACK, port))
            return port
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def publish(self) -> None:
        port = self.listener.getsockname()[1]
        data = {
            "host": LOOPBACK,
            "port": port,
            "pid": os.getpid(),
            "keyboard": self.keyboard.getsockname()[1],
        }
        target = self.host_dir / ENDPOINT_FILE
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(data) + "\n")
        tmp.replace(target)

    def spawn(self) -> bool:
        """Start the root login shell inside the host; False when the host has no init yet."""
        init = host.init_pid(self.name)
        if init is None:
            return False
        master, slave = pty.openpty()
        termios_size = struct.pack("HHHH", ROWS, COLS, 0, 0)
        import fcntl

        fcntl.ioctl(slave, termios.TIOCSWINSZ, termios_size)
        argv = [
            "setsid",
            "--ctty",
            *host.enter_argv(init, wd="/root"),
            "/bin/bash",
            "-l",
        ]
        self.shell = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=SHELL_ENV, cwd="/", close_fds=True
        )
        os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.sel.register(master, selectors.EVENT_READ, "pty")
        return True

    def hangup(self) -> None:
        """Close the pty (the shell gets SIGHUP, as on a serial line drop) and reap it."""
        if self.master is not None:
            self.sel.unregister(self.master)
            os.close(self.master)
            self.master = None
        if self.shell is not None:
            try:
                self.shell.wait(2)
            except subprocess.TimeoutExpired:
                self.shell.kill()
                self.shell.wait()
            self.shell = None

    def broadcast(self, data: bytes) -> None:
        """What the console prints goes to the connected client; with none it is lost."""
        if self.client is None:
            return
        try:
            self.client.sendall(data)
        except OSError:
            self.drop(self.client)

    def drop(self, client: socket.socket) -> None:
        if client is self.client:
            self.client = None
            self.sel.unregister(client)
            # tcp_chr_disconnect_locked: accept again, the next waiting connection is served
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        elif client in self.typists:
            self.typists.remove(client)
            self.sel.unregister(client)
        client.close()

    def accept(self) -> None:
        client, _ = self.listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setblocking(True)
        client.settimeout(5.0)
        self.client = client
        self.sel.register(client, selectors.EVENT_READ, "client")
        # tcp_chr_new_client: no accept while connected (the listener's callback is cleared)
        self.sel.unregister(self.listener)

    def on_ready(self, key: selectors.SelectorKey) -> None:
        if key.data == "listen":
            self.accept()
        elif key.data == "keyboard":
            typist, _ = self.keyboard.accept()
            typist.setblocking(True)
            typist.settimeout(5.0)
            self.typists.append(typist)
            self.sel.register(typist, selectors.EVENT_READ, "client")
        elif key.data == "pty":
            try:
                data = os.read(key.fd, 65536)
            except OSError:  # EIO: the shell and everything on the pty is gone
                data = b""
            if data:
                self.broadcast(data)
            else:
                self.hangup()
                self.next_spawn = time.monotonic() + RESPAWN_DELAY
        else:
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.drop(sock)
            elif self.master is not None:
                os.write(self.master, data)  # typed while no shell runs is lost, as on a VM

    def tick(self) -> None:
        """Respawn the shell when it is gone; leave when the host has been gone a while."""
        now = time.monotonic()
        if self.master is None and now >= self.next_spawn:
            if self.spawn():
                self.orphan_since = None
            else:
                self.orphan_since = self.orphan_since or now
                self.next_spawn = now + RESPAWN_DELAY
        if self.orphan_since is not None and now - self.orphan_since > ORPHAN_GRACE:
            logger.info("lab console of %s: the host is gone, leaving", self.name)
            self.running = False

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "running", False))
        self.publish()
        return self.loop()

    def loop(self) -> int:
        """Serve until `running` is cleared; then hang up and close everything."""
        while self.running:
            self.tick()
            for key, _ in self.sel.select(timeout=0.2):
                self.on_ready(key)
        self.hangup()
        for client in [*self.typists, *([self.client] if self.client else [])]:
            self.drop(client)
        self.listener.close()
        self.keyboard.close()
        return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "serve":
        print("usage: python -m runbook.lab.console serve NAME HOSTDIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return ConsoleDaemon(argv[1], Path(argv[2])).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
