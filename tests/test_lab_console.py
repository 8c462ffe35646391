"""Lab consoles and the console notebooks (01, 02, 90) against a small lab of their own.

The lab (one live-ISO host, one installed host) has its own state dir, subnet and bridge, so it
runs beside test_lab.py's and lab/lab.yaml's. Its consoles are real root shells on a pty in
each host, served on 127.0.0.1 ports; UTM is played by the lab's stand-ins (utmctl, osascript,
hs), which the params lab up writes name as a Mac's params name UTM's programs. Lesson 3 is broken for real (host keys deleted under a running sshd) and recovered by
notebook 90 through papermill; lesson 8's address comes from the console call-back; the typed
password never reaches the record.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import need

STATE = Path("/var/lib/runbook-lab-console-test")
LAB: dict[str, Any] = {
    "state_dir": str(STATE),
    "subnet": "10.231.12.0/24",
    "bridge": "rblabc",
    # no root password: the live ISO has none until notebook 02 sets it on the console
    "passwords": {"jqwang": "jqwang-console-lab"},
    # each plays the VM named its nixname: the live one's is made by 01, the installed one's
    # is there already (made and installed before, as on a Mac that ran 01-04)
    "hosts": [
        {"name": "rbc-live", "nixname": "rbc-live", "phase": "live"},
        {"name": "rbc-inst", "nixname": "vm-rbc-worker"},
    ],
}
LIVE, INST = "10.231.12.11", "10.231.12.12"
PASSWORD = "Typed-On-Console-42!"  # what notebook 02 types; must never reach the record
REPO = Path(__file__).resolve().parents[1]


def _lab_file(tmp: Path) -> dict[str, Any]:
    """The lab file: the deployment without what lab up makes, and the lab."""
    return {
        "deployment": "console-lab",
        "user": "jqwang",
        "known_hosts": str(tmp / "known_hosts"),  # this "Mac's" own: learned on first use
        "vms": [
            # a stale address: only the console call-back can find it (lesson 8)
            {"name": "rbc-live", "role": "cache", "address": "10.231.12.99"},
            # another name than its lab host (UTM's name is the VM's)
            {"name": "vm-rbc-worker", "role": "worker", "address": INST},
        ],
        "cache": {"vm": "rbc-live", "host": LIVE},
        "console": {"backend": "utm-input"},
        "lab": LAB,
    }


def _leftovers() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(STATE) in cmd:
            found.append(f"process {pid}: {cmd[:80]}")
    found += [f"link {n}" for n in os.listdir("/sys/class/net") if n.startswith("rblabc")]
    found += [
        f"netns {n}" for n in ("rbc-live", "rbc-inst") if Path("/run/netns", f"rblab-{n}").exists()
    ]
    return found + ([f"state dir {STATE}"] if STATE.exists() else [])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("console-lab")
    (tmp / "lab.yaml").write_text(yaml.safe_dump(_lab_file(tmp)))
    return tmp


@pytest.fixture(scope="module")
def lab(work: Path) -> Iterator[list[Any]]:
    need(os.geteuid() == 0, "the lab needs root (network and mount namespaces)")
    for tool in ("sshd", "fish", "sudo", "nsenter", "setsid", "ip", "ssh"):
        need(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(), f"needs {tool}")
    from runbook.lab import lifecycle

    # the deployment's params: an ordinary file naming the stand-ins (work/params.yaml)
    hosts = lifecycle.up(work / "lab.yaml", secrets_dir=work / "secrets", out=work / "params.yaml")
    _AFTER_UP.extend(_neighbours("rblabc"))
    try:
        yield hosts
    finally:
        lifecycle.down(LAB)
        assert _leftovers() == []


_AFTER_UP: list[str] = []  # the bridge's ARP entries right after lab up


def _neighbours(dev: str) -> list[str]:
    """This machine's (the Mac side's) ARP entries on `dev` that know a MAC."""
    out = subprocess.run(
        ["ip", "neigh", "show", "dev", dev], capture_output=True, text=True, check=False
    ).stdout
    return [line for line in out.splitlines() if "lladdr" in line]


def _lab_params() -> Any:
    from runbook.lab.config import from_mapping

    return from_mapping(LAB)


def _in_host(name: str, script: str) -> subprocess.CompletedProcess[str]:
    from runbook.lab import host

    pid = host.init_pid(name)
    assert pid is not None
    argv = [*host.enter_argv(pid), "sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _openssh(addr: str, known_hosts: Path, strict: str = "no") -> subprocess.CompletedProcess[str]:
    argv = [
        "ssh", "-o", f"UserKnownHostsFile={known_hosts}", "-o", f"StrictHostKeyChecking={strict}",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-i", str(STATE / "id_ed25519"),
        f"jqwang@{addr}", "echo fresh-login-ok",
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _runbook(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        RUNBOOK_ROOT_PASSWORD=PASSWORD,
        RUNBOOK_SECRETS=str(work / "secrets"),
        PYTHONPATH=str(REPO),
    )
    argv = [sys.executable, "-m", "runbook", *args, "--records", str(work / "records")]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=REPO
    )


def _newest_record(work: Path) -> Path:
    return max((work / "records").iterdir(), key=lambda p: p.stat().st_mtime)


def _scan_for(root: Path, secret: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and secret.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


# --- one client at a time, as QEMU's serial chardev (no lab needed) ---------------------------


class _LocalConsole:
    """runbook.lab.console.ConsoleDaemon with a local bash on its pty instead of a lab host's
    root shell, served by a thread on 127.0.0.1 (no namespaces, no root)."""

    def __init__(self, tmp: Path) -> None:
        import pty
        import threading

        from runbook.lab.console import ConsoleDaemon

        class Daemon(ConsoleDaemon):
            def spawn(self) -> bool:
                master, slave = pty.openpty()
                rc = tmp / "bashrc"
                rc.write_text(
                    "PS1='vm# '\n"
                    # passwd as shadow prompts (02 waits for each prompt), sudo a no-op
                    "passwd() { read -rsp 'New password: ' a; echo; "
                    "read -rsp 'Retype new password: ' b; echo; "
                    '[ "$a" = "$b" ] && echo \'passwd: password updated successfully\'; }\n'
                    "sudo() { :; }\n"
                )
                self.shell = subprocess.Popen(
                    ["bash", "--noprofile", "--rcfile", str(rc), "-i"],
                    stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                    env={"PATH": "/usr/bin:/bin", "TERM": "dumb", "HOME": str(tmp)},
                )  # fmt: skip
                os.close(slave)
                os.set_blocking(master, False)
                self.master = master
                self.sel.register(master, selectors.EVENT_READ, "pty")
                return True

        self.daemon = Daemon("local", tmp)
        self.port = int(self.daemon.listener.getsockname()[1])
        self.keyboard = int(self.daemon.keyboard.getsockname()[1])
        self.thread = threading.Thread(target=self.daemon.loop, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.daemon.running = False
        self.thread.join(10)


@pytest.fixture
def local_console(tmp_path: Path) -> Iterator[_LocalConsole]:
    rig = _LocalConsole(tmp_path)
    yield rig
    rig.stop()


def test_a_second_client_waits_unserved_until_the_first_leaves(
    local_console: _LocalConsole,
) -> None:
    from runbook.core.errors import CommandError
    from runbook.mac.console.backends import SerialConsole

    first = SerialConsole("127.0.0.1", local_console.port)
    first.send("echo first-$((1+1))\n")
    first.read_until(r"first-2\s", 10)
    # the kernel completes the second connection (backlog), but nobody reads or writes it
    second = SerialConsole("127.0.0.1", local_console.port)
    second.send("echo second-$((2+2))\n")
    with pytest.raises(CommandError, match="no match within 2 s"):
        second.read_until(r"second-4\s", 2)
    first.drain(0.3)
    assert "second" not in first.transcript  # its keys never reached the console
    first.close()
    # the first one left: the second is served now, what it sent is read at last
    second.send("\n")
    assert second.read_until(r"second-4\s", 10)
    second.close()


def test_the_old_two_connection_pattern_times_out(local_console: _LocalConsole) -> None:
    """Notebook 02's old watcher + typist: a reader connection, then the backend's own."""
    from runbook.core.errors import CommandError
    from runbook.mac.console.backends import SerialBackend

    watcher = SerialBackend(port=local_console.port).session()
    watcher.drain(0.3)
    typist = SerialBackend(port=local_console.port)
    typist.type_text("vm", "echo typed-$((6*7))\n")
    with pytest.raises(CommandError, match="no match within 3 s"):
        watcher.read_until(r"typed-42\s", 3)
    watcher.close()
    typist.close()


def test_02_types_the_password_over_one_shared_connection(
    local_console: _LocalConsole, tmp_path: Path
) -> None:
    """The product's path: typing, the prompt waits and a command's answer all go through
    the serial backend's one connection, so a one-client console serves all of them."""
    from runbook.core.params import VM, Role, load
    from runbook.core.secrets import Secret, SecretStore
    from runbook.engine.steps import Context, Mode
    from runbook.mac.console.backends import SerialBackend
    from runbook.sections.s02_console import type_password
    from runbook.sections.vm_console import VmConsole, marked, run_marked
    from tests.run_rig import PARAMS

    ctx = Context("x", load(PARAMS / "cache.yaml"), Mode.DEPLOY, False, SecretStore(tmp_path))
    serial = SerialBackend(port=local_console.port)
    vm = VM(name="vm", role=Role.CACHE, address="vm.local")
    con = VmConsole(vm, serial, serial)
    type_password(ctx, con, Secret("Shared-Conn-Pw-5"))
    assert "password updated successfully" in serial.last_transcript
    line = marked(ctx, vm, "echo answer-$((6*7))", "T")
    marked_out = run_marked(con, serial.session(), line, "T")
    assert marked_out is not None and "answer-42" in marked_out
    con.close()
    # it left the console: a new client is served at once
    assert "back" in SerialBackend(port=local_console.port).run("vm", "echo ba''ck", r"back\s", 5)


def test_keyboard_port_types_while_the_serial_port_has_its_client(
    local_console: _LocalConsole,
) -> None:
    """UTM's keyboard input is not the serial port: the typing stand-ins write to the
    console's keyboard port, whatever client holds the serial port."""
    from runbook.mac.console.backends import SerialBackend

    reader = SerialBackend(port=local_console.port)
    reader.session().drain(0.3)
    with socket.create_connection(("127.0.0.1", local_console.keyboard), timeout=5) as keys:
        keys.sendall(b"echo keys-$((3*3))\r")
    assert reader.session().read_until(r"keys-9\s", 10)
    reader.close()


# --- the consoles -------------------------------------------------------------------------------


def test_console_is_a_root_shell_inside_the_host(lab: list[Any]) -> None:
    from runbook.lab import lifecycle
    from runbook.mac.console.backends import SerialBackend, clean_console_text

    ports = {h.name: h.console_port for h in lifecycle.status(LAB)}
    assert all(ports.values()), ports
    live = ports["rbc-live"]
    assert live is not None
    console = SerialBackend(port=live)
    try:
        out = console.run(
            "rbc-live",
            "echo $((6*7))-ok; hostname; id -u; ip -4 -o addr show dev eth0",
            r"/\d+ ",
            10,
        )
    finally:
        console.close()
    text = clean_console_text(out)
    assert "42-ok" in text and "rbc-live\n0\n" in text and f"inet {LIVE}/" in text


def test_utm_standins_have_the_installed_vm(lab: list[Any], work: Path) -> None:
    """UTM (the params' utmctl and osascript) has the VM the installed host plays, with that
    host's console as its TCP serial port and its MAC; the live host's VM is 01's to make."""
    from runbook.core.errors import CommandError
    from runbook.core.params import load_params
    from runbook.lab import console
    from runbook.mac import utm

    params = _lab_params()
    dep = load_params(work / "params.yaml")
    utmctl, osascript = dep.utm.utmctl, dep.utm.osascript
    listed = {vm.name: vm.status for vm in utm.list_vms(utmctl=utmctl)}
    assert listed == {"vm-rbc-worker": utm.VmStatus.STARTED}, listed
    end = utm.attach("vm-rbc-worker", utmctl=utmctl)
    assert (end.kind, end.host, end.port) == ("tcp", "127.0.0.1", console.port(params, "rbc-inst"))
    assert dep.console.serial_port is not None
    assert end.port == dep.console.serial_port + 1  # VM i's serial port: serial_port + i
    with pytest.raises(CommandError, match="guest agent"):  # neither ISO nor config runs one
        utm.ip_addresses("vm-rbc-worker", utmctl=utmctl)
    assert utm.mac_address("vm-rbc-worker", osascript=osascript) == console.nic_mac("rbc-inst")


@pytest.mark.parametrize("backend", ["utm-input", "hammerspoon", "serial"])
def test_every_backend_types_into_the_lab_console(lab: list[Any], work: Path, backend: str) -> None:
    from runbook.core.params import load_params
    from runbook.lab import console
    from runbook.mac.console.backends import SerialBackend, make_backend

    dep = load_params(work / "params.yaml")
    port = console.port(_lab_params(), "rbc-inst")
    typer = make_backend(backend, serial_port=port, hs=dep.console.hs, osascript=dep.utm.osascript)
    # one client at a time on the serial port: the serial backend reads on its own connection
    assert port is not None
    reader = typer if isinstance(typer, SerialBackend) else SerialBackend(port=port)
    marker = f"/tmp/typed-{backend}"
    try:
        typer.type_text("vm-rbc-worker", f"echo 'Shift: A-Z_(1+1)!' > {marker}\n")
        out = reader.run("vm-rbc-worker", f"cat {marker}", r"\(1\+1\)!\s", 10)
    finally:
        reader.close()
    assert "Shift: A-Z_(1+1)!" in out


# --- the notebooks ------------------------------------------------------------------------------


def test_01_02_create_set_password_and_find_the_address(lab: list[Any], work: Path) -> None:
    from runbook.core.models import Host
    from runbook.core.secrets import Secret
    from runbook.transport.remote import Connection

    first = _runbook(work, "deploy", str(work / "params.yaml"), "--only", "01,02")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    record = _newest_record(work)
    log = (record / "run.log").read_text()
    assert "created rbc-live" in log  # the installed host's VM was there already
    # lesson 8: the MAC from UTM's configuration, found in ARP after the sweep
    assert "10.231.12.11 (params say 10.231.12.99), found by arp" in log
    assert "MAC from UTM's configuration" in log and "swept 253 addresses of 10.231.12.0/24" in log
    assert "with the password works" in log
    screen = record / "console" / "rbc-live-02-root-password.txt"
    # private from the first byte; read-only too once the record is sealed (0400)
    assert screen.stat().st_mode & 0o777 in (0o600, 0o400)
    assert "password updated successfully" in screen.read_text()
    assert _scan_for(record, PASSWORD) == []
    host = Host("rbc-live", LIVE, "root", known_hosts=work / "known_hosts")
    with Connection(host, password=Secret(PASSWORD)) as conn:
        assert conn.run("id -u").stdout.strip() == "0"
    again = _runbook(work, "deploy", str(work / "params.yaml"), "--only", "01,02")
    assert again.returncode == 0, again.stdout[-3000:]
    log = (_newest_record(work) / "run.log").read_text()
    assert "[already done" in log and "[done: typed" not in log  # idempotent


def _break_host_keys(restart: bool) -> None:
    script = "rm -f /etc/ssh/ssh_host_*" + ("; systemctl restart sshd" if restart else "")
    _in_host("rbc-inst", script)


def test_90_recovers_host_keys_lost_under_a_running_sshd(lab: list[Any], work: Path) -> None:
    kh = work / "known_hosts"
    assert _openssh(INST, kh).returncode == 0  # known before the break
    _break_host_keys(restart=False)
    broken = _openssh(INST, kh)
    assert broken.returncode == 255 and "kex_exchange_identification" in broken.stderr
    assert (
        "no hostkeys available -- exiting" in _in_host("rbc-inst", "cat /var/log/sshd.log").stdout
    )
    result = _runbook(work, "deploy", str(work / "params.yaml"), "--only", "90")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    record = _newest_record(work)
    assert (
        "had no host keys; typed ssh-keygen -A, systemctl restart sshd"
        in (record / "run.log").read_text()
    )
    # the new keys were pinned from the console: strict checking with the deployment's file
    fresh = _openssh(INST, kh, strict="yes")
    assert fresh.returncode == 0 and "fresh-login-ok" in fresh.stdout, fresh.stderr
    assert _scan_for(record, PASSWORD) == []


def test_90_steps_recover_a_dead_sshd_and_rerun_is_already_done(
    lab: list[Any], work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runbook.engine.steps import Outcome, open_context
    from runbook.sections import s90_recover

    path_before = os.environ.get("PATH")
    monkeypatch.setenv("RUNBOOK_ROOT_PASSWORD", PASSWORD)
    _break_host_keys(restart=True)  # sshd restarted without keys: it is not running at all
    assert "Connection refused" in _openssh(INST, work / "known_hosts").stderr
    ctx = open_context(
        s90_recover.NOTEBOOK, str(work / "params.yaml"), "deploy", secrets_dir=str(work / "s")
    )
    vm = ctx.dep.vm("vm-rbc-worker")
    assert ctx.run(s90_recover.recover(ctx, vm)) is Outcome.DONE
    assert ctx.run(s90_recover.recover(ctx, vm)) is Outcome.ALREADY
    ctx.close()
    assert _openssh(INST, work / "known_hosts", strict="yes").returncode == 0
    assert os.environ.get("PATH") == path_before  # the product changed no environment


def test_the_live_host_is_as_bare_as_the_iso(lab: list[Any]) -> None:
    """No ARP entry before traffic, no guest agent, no avahi (.local) inside the live host."""
    assert _AFTER_UP == []  # lab up sent nothing to the hosts: the Mac knows no MAC yet
    hosts_file = _in_host("rbc-live", "cat /etc/hosts").stdout
    assert "rbc-inst" in hosts_file and ".local" not in hosts_file
    assert "rbc-live.local" in _in_host("rbc-inst", "cat /etc/hosts").stdout


def test_a_serial_console_serves_one_client_at_a_time(lab: list[Any]) -> None:
    from runbook.core.errors import CommandError
    from runbook.lab import console
    from runbook.mac.console.backends import SerialConsole

    port = console.port(_lab_params(), "rbc-inst")
    assert port is not None
    first = SerialConsole("127.0.0.1", port)
    second = SerialConsole("127.0.0.1", port)  # the kernel's backlog takes it
    try:
        second.send("echo second-$((2+2))\n")
        with pytest.raises(CommandError, match="no match within 2 s"):
            second.read_until(r"second-4\s", 2)
        first.close()
        second.send("\n")
        assert second.read_until(r"second-4\s", 10)
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("backend", ["utm-input", "hammerspoon"])
def test_the_call_back_finds_the_vm_with_a_backend_that_cannot_read(
    lab: list[Any], work: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-shot listener on the Mac's bridged address (the lab bridge's 10.231.12.1): the
    typed command connects to it, and the connection's source is the VM's address."""
    from runbook.engine.steps import open_context
    from runbook.mac.console.backends import make_backend
    from runbook.sections import s02_console
    from runbook.sections.vm_console import VmConsole, mac_side, resolve

    ctx = open_context(
        s02_console.NOTEBOOK, str(work / "params.yaml"), "deploy", secrets_dir=str(work / "s")
    )
    try:
        vm = ctx.dep.vm("rbc-live")  # its params address is stale
        mac = mac_side(ctx)
        typer = make_backend(backend, hs=mac.hs, osascript=mac.osascript)
        con = VmConsole(vm, typer, None)  # nothing to read back
        found = resolve(mac, vm, con, methods=("callback",))
    finally:
        ctx.close()
    assert (found.address, found.method) == (LIVE, "callback"), found


def test_console_comes_back_after_the_host_reboots(lab: list[Any]) -> None:
    from runbook.lab import console, host
    from runbook.mac.console.backends import SerialBackend

    params = _lab_params()
    before = console.endpoint(params, "rbc-live")
    pid = host.init_pid("rbc-live")
    assert before is not None and pid is not None
    os.kill(pid, signal.SIGHUP)  # the lab's reboot: every process but init dies
    deadline = time.monotonic() + 15
    while True:
        try:
            out = SerialBackend(port=before.port).run(
                "rbc-live", "echo back-$((2+3))", r"back-5", 3
            )
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    assert "back-5" in out
    assert console.endpoint(params, "rbc-live") == before  # same daemon, same port


def test_the_installed_system_comes_back_at_a_new_lease(lab: list[Any]) -> None:
    """bootstrap0's reboot (live -> installed) gives the host another address; any other
    reboot keeps it; the Mac side learns the new one only from traffic (last: it moves
    rbc-live)."""
    from runbook.lab import host, lifecycle

    params = _lab_params()
    assert params.lease_address(0) == "10.231.12.13"
    # what nixos-install leaves on the "disk": the installed phase
    assert _in_host("rbc-live", "echo installed > /var/lib/runbook-lab/phase").returncode == 0
    pid = host.init_pid("rbc-live")
    assert pid is not None
    os.kill(pid, signal.SIGHUP)  # the reboot
    deadline = time.monotonic() + 20
    while host.current_address("rbc-live") != "10.231.12.13":
        assert time.monotonic() < deadline, host.current_address("rbc-live")
        time.sleep(0.2)
    assert {h.name: h.address for h in lifecycle.status(LAB)}["rbc-live"] == "10.231.12.13"
    assert not [n for n in _neighbours("rblabc") if n.startswith("10.231.12.13 ")]
    deadline = time.monotonic() + 20
    while not host.reachable("10.231.12.13"):  # sshd is back, at the new address only
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert [n for n in _neighbours("rblabc") if n.startswith("10.231.12.13 ")]
    os.kill(pid, signal.SIGHUP)  # another reboot, same system: same lease
    time.sleep(2)
    assert host.current_address("rbc-live") == "10.231.12.13"
