"""One lab host seen from the root namespace: its tree, its init process, its health."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runbook.core.errors import RunbookError
from runbook.lab import system
from runbook.lab.config import SSH_PORT, HostSpec, LabParams, Phase
from runbook.lab.net import NETNS_DIR, netns
from runbook.transport.local import run

logger: Final = logging.getLogger(__name__)

LAB_BIN: Final = Path(__file__).resolve().parent / "bin"
BOOT_TIMEOUT: Final = 20.0
LEASE_FILE: Final = "lease.json"  # in the host's dir, beside its tree: the DHCP server's answers


@dataclass(frozen=True)
class HostRef:
    name: str
    index: int
    address: str


def tree(params: LabParams, name: str) -> Path:
    return params.host_dir(name) / "root"


def initial_config(params: LabParams, spec: HostSpec, client_pubkey: str) -> system.SystemConfig:
    """The live ISO, or what machines/vm-shared.nix + users/<user>/nixos.nix give."""
    root_pw = params.passwords.get("root")
    if spec.phase is Phase.LIVE:
        # The live ISO: sshd allows root, and root has no password ("!": nobody logs in) until
        # the handbook's `sudo su; passwd` on the console, a real root shell whose real passwd
        # writes the host's /etc/shadow, which sshd (UsePAM no) reads at each login: whatever
        # was typed there is root's password. A lab file's `passwords.root` is one set there
        # already, as if passwd had run; it is never put in the secret store.
        return system.SystemConfig(
            hostname=spec.name,
            phase=Phase.LIVE.value,
            permit_root_login="yes",
            root_hashed_password=system.hash_password(root_pw) if root_pw else None,
        )
    user_pw = params.passwords.get(params.user)
    user = system.User(
        name=params.user,
        shell=params.shell,
        groups=(system.WHEEL_GROUP,),
        hashed_password=system.hash_password(user_pw) if user_pw else None,
        authorized_keys=(client_pubkey,),
    )
    # vm-shared.nix: PermitRootLogin "no", PasswordAuthentication true, mutableUsers false
    return system.SystemConfig(
        hostname=spec.name, phase=Phase.INSTALLED.value, permit_root_login="no", users=(user,)
    )


def lease_file(params: LabParams, name: str) -> Path:
    return params.host_dir(name) / LEASE_FILE


def write_leases(params: LabParams, spec: HostSpec) -> None:
    """What the lab's DHCP server gives this host's NIC, by the system that asks: the phase it
    comes up in keeps the first address, the other phase gets the next free one (see
    hostinit.renew_lease for why a reinstalled system is a new client)."""
    index = params.hosts.index(spec)
    other = Phase.INSTALLED if spec.phase is Phase.LIVE else Phase.LIVE
    data = {
        "interface": "eth0",
        "prefix": params.subnet.prefixlen,
        "leases": {
            spec.phase.value: params.address(index),
            other.value: params.lease_address(index),
        },
    }
    lease_file(params, spec.name).write_text(json.dumps(data, indent=1) + "\n")


def current_address(name: str) -> str | None:
    """The host's IPv4 address now (`ip -n NS -4 -o addr show dev eth0`), None when it has
    none; asked inside the host's namespace, so no packet is sent (no ARP entry appears)."""
    result = run(["ip", "-n", netns(name), "-4", "-o", "addr", "show", "dev", "eth0"], check=False)
    found = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", result.stdout)
    return found[1] if found else None


def prepare(params: LabParams, spec: HostSpec, peers: dict[str, str], client_pubkey: str) -> None:
    """A fresh tree for the host: directories, accounts, sshd, nix.conf, new host keys."""
    root = tree(params, spec.name)
    if params.host_dir(spec.name).exists():
        shutil.rmtree(params.host_dir(spec.name))
    for rel in system.TREE_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel in system.OPAQUE_DIRS:  # the machine's /etc/ssh etc. must not show through
        os.setxattr(root / rel, "trusted.overlay.opaque", b"y")
    (params.host_dir(spec.name) / "etc-work").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o711)  # traversable: the project Python may live under /root
    system.write_names(root, spec.name, peers, mdns=spec.phase is not Phase.LIVE)
    system.apply(root, initial_config(params, spec, client_pubkey))
    system.new_host_keys(root)
    write_leases(params, spec)


def start(params: LabParams, spec: HostSpec) -> None:
    """Launch the host's init, detached, in its network namespace and new namespaces."""
    log = params.host_dir(spec.name) / "init.log"
    argv = [
        "ip",
        "netns",
        "exec",
        netns(spec.name),
        "unshare",
        "--mount",
        "--uts",
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-m",
        "runbook.lab.hostinit",
        spec.name,
        str(tree(params, spec.name)),
        str(LAB_BIN),
    ]
    env = {"PYTHONPATH": str(LAB_BIN.parents[2])}
    # setsid -f: the init is nobody's child here, so it never lingers as our zombie
    run(
        [
            "sh",
            "-c",
            'log=$1; shift; setsid -f "$@" >>"$log" 2>&1 </dev/null',
            "sh",
            str(log),
            *argv,
        ],
        env=env,
    )


def wait_booted(params: LabParams, spec: HostSpec, deadline: float) -> None:
    boot = tree(params, spec.name) / "var/lib/runbook-lab/boot"
    while time.monotonic() < deadline:
        try:
            text = boot.read_text().strip()
        except OSError:
            text = ""
        if text == "ok":
            return
        if text.startswith("failed"):
            raise RunbookError(f"lab host {spec.name}: boot {text}")
        time.sleep(0.005)
    log = params.host_dir(spec.name) / "init.log"
    tail = log.read_text()[-400:] if log.exists() else ""
    raise RunbookError(f"lab host {spec.name}: not booted after {BOOT_TIMEOUT:g} s; {tail!r}")


def pids_in_netns(name: str) -> list[int]:
    """Every process in the host's network namespace (what `ip netns pids` lists)."""
    try:
        target = os.stat(NETNS_DIR / netns(name))
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def enter_argv(pid: int, wd: str = "/") -> list[str]:
    """nsenter into lab host `pid`: its namespaces AND its root directory. Entering a mount
    namespace resets the caller's root to that namespace's root mount (setns(2)), which is not
    the host's root when the lab runs under a chroot: `--root` takes the target's own."""
    return ["nsenter", "-t", str(pid), "-a", "--root", f"--wd={wd}", "--"]


def init_pid(name: str) -> int | None:
    """The host's PID 1, as the root namespace numbers it."""
    for pid in pids_in_netns(name):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if (
                line.startswith("NSpid:")
                and line.split()[1:]
                and line.split()[-1] == "1"
                and len(line.split()) > 2
            ):
                return pid
    return None


def reachable(address: str, timeout: float = 0.5) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((address, SSH_PORT)) == 0


def stop(name: str) -> None:
    """Kill every process of the host (its pid namespace dies with its init)."""
    for _ in range(100):
        pids = pids_in_netns(name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    raise RunbookError(f"lab host {name}: processes {pids_in_netns(name)} survive SIGKILL")
