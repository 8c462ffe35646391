"""Lab consoles and the console notebooks (01, 02, 90) against a small lab of their own.

The lab (one live-ISO host, one installed host) has its own state dir, subnet and bridge, so it
runs beside test_lab.py's and params/lab.yaml's. Its consoles are real root shells on a pty in
each host, served on 127.0.0.1 ports; UTM is played by the lab's stand-ins (utmctl, osascript,
hs). Lesson 3 is broken for real (host keys deleted under a running sshd) and recovered by
notebook 90 through papermill; lesson 8's address comes from the console call-back; the typed
password never reaches the record.
"""

from __future__ import annotations

import os
import shutil
import signal
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
    "hosts": [{"name": "rbc-live", "phase": "live"}, {"name": "rbc-inst"}],
}
LIVE, INST = "10.231.12.11", "10.231.12.12"
PASSWORD = "Typed-On-Console-42!"  # what notebook 02 types; must never reach the record
REPO = Path(__file__).resolve().parents[1]


def _deployment(tmp: Path) -> dict[str, Any]:
    return {
        "deployment": "console-lab",
        "nixos_config": str(STATE / "nixos-config"),
        "user": "jqwang",
        "identity": str(STATE / "id_ed25519"),
        "known_hosts": str(tmp / "known_hosts"),
        "vms": [
            # a stale address: only the console call-back can find it (lesson 8)
            {"name": "rbc-live", "role": "cache", "address": "10.231.12.99"},
            # another name than its lab host: notebook 01 creates it in UTM
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
def lab() -> Iterator[list[Any]]:
    need(os.geteuid() == 0, "the lab needs root (network and mount namespaces)")
    for tool in ("sshd", "fish", "sudo", "nsenter", "setsid", "ip", "ssh"):
        need(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(), f"needs {tool}")
    from runbook.lab import lifecycle

    hosts = lifecycle.up(LAB)
    try:
        yield hosts
    finally:
        lifecycle.down(LAB)
        assert _leftovers() == []


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("console-lab")
    (tmp / "params.yaml").write_text(yaml.safe_dump(_deployment(tmp)))
    return tmp


def _lab_params() -> Any:
    from runbook.lab.config import from_mapping

    return from_mapping(LAB)


def _in_host(name: str, script: str) -> subprocess.CompletedProcess[str]:
    from runbook.lab import host

    pid = host.init_pid(name)
    assert pid is not None
    argv = ["nsenter", "-t", str(pid), "-a", "--", "sh", "-c", script]
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
    env.pop("RUNBOOK_MACOS_STANDINS", None)  # the lab deployment turns them on by itself
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


# --- the consoles -------------------------------------------------------------------------------


def test_console_is_a_root_shell_inside_the_host(lab: list[Any]) -> None:
    from runbook.console.backends import SerialBackend, clean_console_text
    from runbook.lab import lifecycle

    ports = {h.name: h.console_port for h in lifecycle.status(LAB)}
    assert all(ports.values()), ports
    out = SerialBackend(port=ports["rbc-live"]).run(
        "rbc-live", "echo $((6*7))-ok; hostname; id -u; ip -4 -o addr show dev eth0", r"/\d+ ", 10
    )
    text = clean_console_text(out)
    assert "42-ok" in text and "rbc-live\n0\n" in text and f"inet {LIVE}/" in text


def test_utm_standins_see_every_lab_host(lab: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook import utm
    from runbook.errors import CommandError
    from runbook.lab import console

    params = _lab_params()
    for key, value in console.mac_env(params).items():
        monkeypatch.setenv(key, value)
    utmctl = str(console.mac_dir(params) / "bin" / "utmctl")
    listed = {vm.name: vm.status for vm in utm.list_vms(utmctl=utmctl)}
    assert listed["rbc-live"] is utm.VmStatus.STARTED and "rbc-inst" in listed
    end = utm.attach("rbc-inst", utmctl=utmctl)
    assert (end.kind, end.host, end.port) == ("tcp", "127.0.0.1", console.port(params, "rbc-inst"))
    with pytest.raises(CommandError, match="guest agent"):  # neither ISO nor config runs one
        utm.ip_addresses("rbc-live", utmctl=utmctl)
    assert utm.mac_address("rbc-inst") == console.nic_mac("rbc-inst")


@pytest.mark.parametrize("backend", ["utm-input", "hammerspoon", "serial"])
def test_every_backend_types_into_the_lab_console(
    lab: list[Any], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runbook.console.backends import SerialBackend, make_backend
    from runbook.lab import console

    params = _lab_params()
    for key, value in console.mac_env(params).items():
        monkeypatch.setenv(key, value)
    port = console.port(params, "rbc-inst")
    typer = make_backend(backend, serial_port=port)
    marker = f"/tmp/typed-{backend}"
    typer.type_text("rbc-inst", f"echo 'Shift: A-Z_(1+1)!' > {marker}\n")
    out = SerialBackend(port=port).run("rbc-inst", f"cat {marker}", r"\(1\+1\)!\s", 10)
    assert "Shift: A-Z_(1+1)!" in out


# --- the notebooks ------------------------------------------------------------------------------


def test_01_02_create_set_password_and_find_the_address(lab: list[Any], work: Path) -> None:
    from runbook.models import Host
    from runbook.remote import Connection
    from runbook.secrets import Secret

    first = _runbook(work, "deploy", str(work / "params.yaml"), "--only", "01,02")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    record = _newest_record(work)
    log = (record / "run.log").read_text()
    assert "created vm-rbc-worker" in log
    assert "10.231.12.11 (params say 10.231.12.99), found by console" in log  # lesson 8
    assert "with the password works" in log
    screen = record / "console" / "rbc-live-02-root-password.txt"
    assert screen.stat().st_mode & 0o777 == 0o600
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
    from runbook.lab import console
    from runbook.sections import s90_recover
    from runbook.steps import Outcome, open_context

    # the section puts the lab's stand-ins on PATH in this process: restored after the test
    for key, value in console.mac_env(_lab_params()).items():
        monkeypatch.setenv(key, value)
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


def test_console_comes_back_after_the_host_reboots(lab: list[Any]) -> None:
    from runbook.console.backends import SerialBackend
    from runbook.lab import console, host

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
