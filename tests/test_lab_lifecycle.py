"""`lab down` leaves nothing, checked from outside; a killed `lab up` is recovered by the next.

Uses its own small lab (state dir, subnet, bridge) beside the one of test_lab.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need

STATE = Path("/var/lib/runbook-lab-lifecycle")
PARAMS: dict[str, Any] = {
    "state_dir": str(STATE),
    "subnet": "10.231.8.0/24",
    "bridge": "rblabl",
    "hosts": [{"name": "rbl-a"}, {"name": "rbl-b", "phase": "live"}],
}
NAMES = ("rbl-a", "rbl-b")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def as_root() -> None:
    need(os.geteuid() == 0, "the lab needs root (network and mount namespaces)")
    need(shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists(), "needs sshd")


def leftovers() -> list[str]:
    """Everything of this lab the machine still has, seen from the root namespace."""
    found = []
    netns = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    found += [f"netns {n}" for n in NAMES if f"rblab-{n}" in netns]
    links = os.listdir("/sys/class/net")
    found += [f"link {link}" for link in links if link.startswith("rblabl")]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(STATE) in cmd:
            found.append(f"process {pid}: {cmd[:80]}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line}" for line in mounts.splitlines() if str(STATE) in line]
    found += (
        ["/run/netns entry"]
        if any(Path("/run/netns", f"rblab-{n}").exists() for n in NAMES)
        else []
    )
    if STATE.exists():
        found.append(f"state dir {STATE}")
    return found


def test_killed_up_is_recovered_and_down_leaves_nothing(as_root: None) -> None:
    from runbook import lab
    from runbook.lab.host import init_pid, reachable

    lab.down(PARAMS)
    # a `lab up` killed halfway: hosts half made, a stale init, a registry
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from runbook import lab; lab.up({PARAMS!r})"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        Path("/run/netns", f"rblab-{n}").exists() for n in NAMES
    ):
        time.sleep(0.005)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert leftovers(), "the killed run should have left something to recover"
    # and a host that crashed: its init killed outright
    hosts = lab.up(PARAMS)
    assert all(h.running for h in hosts)
    pid = init_pid("rbl-a")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    hosts = lab.up(PARAMS)
    assert all(reachable(h.address) for h in hosts)
    assert [h.phase for h in hosts] == ["installed", "live"]

    lab.down(PARAMS)
    assert leftovers() == []
    lab.down(PARAMS)  # idempotent too
    if not any(Path("/run/netns").glob("rblab-*")):  # no other lab running beside this one
        assert not Path("/nix-config").exists()
