"""Round trip of a trivial command: runbook's open connection vs OpenSSH.

Against one loopback sshd (fish login shell), in one run: the median of N `true`
commands on an open runbook Connection, on OpenSSH with ControlMaster (the mux a user
would otherwise set up), and with a fresh `ssh` per command. Needs root (the rig creates
its users). The last line is `ratio_runbook_vs_openssh_mux=<float>`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runbook.core.models import Host
from runbook.transport.remote import Connection
from tests.sshd_rig import FISH_USER, start_sshd, stop_sshd

N = 200
N_FRESH = 30  # a fresh ssh costs ~200 ms; 30 gives a stable median


def timed(fn: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def main() -> None:
    s = start_sshd()
    try:
        tmp = Path(tempfile.mkdtemp())
        host = Host(
            name="bench",
            address="127.0.0.1",
            user=FISH_USER,
            port=s.port,
            identity=s.user_key,
            known_hosts=tmp / "known_hosts",
        )
        base = [
            "ssh",
            "-p",
            str(s.port),
            "-i",
            str(s.user_key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={tmp}/kh",
        ]
        mux = [
            *base,
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={tmp}/mux-%C",
            "-o",
            "ControlPersist=60",
        ]
        target = f"{FISH_USER}@127.0.0.1"
        with Connection(host) as conn:
            conn.run("true")
            runbook_ms = timed(lambda: conn.run("true"), N)
            sudo_ms = timed(lambda: conn.sudo("true"), N // 4)
        subprocess.run([*mux, target, "true"], check=True)
        mux_ms = timed(lambda: subprocess.run([*mux, target, "true"], check=True), N)
        subprocess.run([*mux, "-O", "exit", target], check=False, capture_output=True)
        fresh_ms = timed(lambda: subprocess.run([*base, target, "true"], check=True), N_FRESH)
    finally:
        stop_sshd(s)
    print(f"runbook Connection.run (open connection, bash -s): median {runbook_ms:.2f} ms")
    print(f"runbook Connection.sudo (sudo -n bash -s):           median {sudo_ms:.2f} ms")
    print(f"OpenSSH ControlMaster mux:                           median {mux_ms:.2f} ms")
    print(f"OpenSSH fresh connection per command:                median {fresh_ms:.2f} ms")
    print(f"ratio_runbook_vs_openssh_mux={runbook_ms / mux_ms:.3f}")


if __name__ == "__main__":
    main()
