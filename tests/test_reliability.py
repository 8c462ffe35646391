"""Faults of issue 13 on the real thing: a frozen sshd, stalled transfers, a changed host key,
SIGTERM, a closed output pipe, a full records disk and two runs at once.

A frozen host is an sshd session stopped with SIGSTOP: the kernel still ACKs its TCP, so
nothing but an unanswered keepalive can tell it is gone (the same as a cut link).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import CommandStalledError, ConnectionLostError, HostKeyChangedError
from runbook.models import Deadlines, Host
from runbook.params import load
from runbook.remote import Connection
from runbook.secrets import SecretStore
from runbook.steps import Context, Mode, Step, StepFailed
from tests.conftest import FISH_USER, Sshd
from tests.run_rig import REPO

FAST: Deadlines = Deadlines(connect=5, command=60, stall=1.0, keepalive=0.5, keepalive_count=3)
SLACK = 2.0  # seconds past a bound a test accepts (thread wake-ups, a loaded machine)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


@contextlib.contextmanager
def frozen_sessions(sshd: Sshd, after: float) -> Iterator[list[int]]:
    """After `after` seconds, SIGSTOP every session the test's sshd forked (not the
    listener); at the end, SIGCONT and SIGKILL them."""
    assert sshd.proc is not None
    stopped: list[int] = []

    def freeze() -> None:
        time.sleep(after)
        for pid in _descendants(sshd.proc.pid):  # type: ignore[union-attr]
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)

    t = threading.Thread(target=freeze)
    t.start()
    try:
        yield stopped
    finally:
        t.join()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


def _host(sshd: Sshd, tmp_path: Path, deadlines: Deadlines = FAST) -> Host:
    return Host(
        name="fishvm",
        address="127.0.0.1",
        user=FISH_USER,
        port=sshd.port,
        identity=sshd.user_key,
        known_hosts=tmp_path / "known_hosts",
        deadlines=deadlines,
    )


# -- 1. a dead link ends every remote command within its bound ----------------------------


@pytest.mark.parametrize("deadlines", [FAST, Deadlines()], ids=["fast", "defaults"])
def test_a_frozen_host_ends_the_command_within_the_keepalive_bound(
    sshd: Sshd, tmp_path: Path, deadlines: Deadlines
) -> None:
    host = _host(sshd, tmp_path, deadlines)
    with Connection(host) as c:
        c.run("true")
        t0 = time.monotonic()
        with (
            frozen_sessions(sshd, after=0.5) as stopped,
            pytest.raises(ConnectionLostError) as info,
        ):
            c.run("echo started; sleep 300; echo never")
        took = time.monotonic() - t0
    assert stopped, "no sshd session was frozen"
    print(
        f"frozen host, keepalive {deadlines.keepalive:g} s x {deadlines.keepalive_count}: {took:.1f} s"
    )
    assert took < 0.5 + deadlines.dead_after + SLACK
    text = str(info.value)
    assert text.startswith(f"connection to {host.label} lost during `echo started")
    assert f"no reply to {deadlines.keepalive_count} keepalives" in text
    assert "exit None" not in text


def test_a_host_frozen_during_a_put_ends_within_the_bound(sshd: Sshd, tmp_path: Path) -> None:
    """A send blocked on a full TCP window ends too: the watcher closes the transport."""
    target = tmp_path / "big"  # 0700 tmp dir: the put (as root through sudo) still writes it
    with Connection(_host(sshd, tmp_path)) as c:
        c.run("true")
        t0 = time.monotonic()
        with frozen_sessions(sshd, after=0.3), pytest.raises(ConnectionLostError) as info:
            c.put(str(target), os.urandom(64 * 1024 * 1024), mode=0o600)
        took = time.monotonic() - t0
    print(f"frozen host during a 64 MiB put: {took:.1f} s")
    assert took < 0.3 + FAST.dead_after + SLACK
    assert "lost during `put " in str(info.value) and "keepalives" in str(info.value)


def test_a_transfer_is_judged_by_progress_not_wall_time(sshd: Sshd, tmp_path: Path) -> None:
    with Connection(_host(sshd, tmp_path, Deadlines(stall=1.0, command=1.0))) as c:
        # moving a byte every 0.3 s for 3 s: longer than `command`, never stalled
        r = c.run("for i in $(seq 10); do echo $i; sleep 0.3; done", transfer=True)
        assert r.stdout.split()[-1] == "10"
        t0 = time.monotonic()
        with pytest.raises(CommandStalledError, match=r"stalled: no byte sent or received for 1 s"):
            c.run("echo one; sleep 30", transfer=True)
        took = time.monotonic() - t0
        print(f"stalled transfer (stall 1 s): {took:.1f} s")
        assert took < 1.0 + SLACK
        assert c.run("echo usable").stdout == "usable\n"


def _params(tmp_path: Path, sshd: Sshd, timeouts: str) -> Path:
    config = tmp_path / "nixos-config"
    config.mkdir()
    (config / "flake.nix").touch()
    path = tmp_path / "rel.yaml"
    path.write_text(
        f"""deployment: rel
nixos_config: {config}
user: {FISH_USER}
identity: {sshd.user_key}
known_hosts: {tmp_path / "known_hosts"}
vms:
  - name: vm-rel-cache
    role: cache
    address: 127.0.0.1
    port: {sshd.port}
cache:
  vm: vm-rel-cache
  host: 127.0.0.1
timeouts:
{timeouts}
"""
    )
    return path


def test_a_step_on_a_frozen_host_fails_naming_step_host_and_what_stalled(
    sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The params' `timeouts:` reach every connection a step opens; the failure says
    `connection to HOST lost during ...`, never `exit None`."""
    params = _params(tmp_path, sshd, "  keepalive: 0.5\n  keepalive_count: 2\n")
    ctx = Context("06-cache", load(params), Mode.DEPLOY, False, SecretStore(tmp_path / "s"))
    vm = ctx.dep.cache_vm
    ctx.connection(vm).run("true")
    step = Step(
        "push the store",
        vm.name,
        ["attic push ..."],
        action=lambda: ctx.connection(vm).run("sleep 300").stdout,
    )
    t0 = time.monotonic()
    with frozen_sessions(sshd, after=0.3), pytest.raises(StepFailed) as info:
        ctx.run(step)
    took = time.monotonic() - t0
    ctx.close()
    assert took < 0.3 + 0.5 * 3 + SLACK
    record = ctx.records[-1]
    assert record["outcome"] == "failed" and record["step"] == "push the store"
    assert record["reason"].startswith(f"connection to {FISH_USER}@127.0.0.1:{sshd.port} lost")
    assert "no reply to 2 keepalives" in record["reason"] and "exit None" not in record["reason"]
    assert "step 'push the store'" in str(info.value)


def test_bad_timeouts_are_refused_in_one_line(sshd: Sshd, tmp_path: Path) -> None:
    from runbook.errors import InputError

    with pytest.raises(InputError) as info:
        load(_params(tmp_path, sshd, "  keepalive: 0\n"))
    assert "timeouts.keepalive" in str(info.value) and "\n" not in str(info.value)


# -- 7. the changed-host-key hint is a command that works --------------------------------


def test_the_changed_host_key_hint_is_a_command_that_works(sshd: Sshd, tmp_path: Path) -> None:
    host = _host(sshd, tmp_path)
    with Connection(host) as c:
        c.run("true")
    sshd.stop()
    sshd.new_host_key()
    sshd.start()
    with pytest.raises(HostKeyChangedError) as info, Connection(host) as c:
        c.run("true")
    found = re.search(r"`(runbook exec [^`]+)`", str(info.value))
    assert found, str(info.value)
    argv = found.group(1).split()
    assert "--replace-host-key" in argv and argv[-2:] == ["--", "true"]
    proc = subprocess.run(
        [sys.executable, "-c", "from runbook.cli import main; main()", *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with Connection(host) as c:  # the new key is the known one now
        assert c.run("echo ok").stdout == "ok\n"
