"""PID 1 of a lab host: its mounts, hostname and services; reaps orphans; reboots on SIGHUP.

Started by `runbook.lab.host.start` as
`ip netns exec rblab-NAME unshare --mount --uts --pid --fork --mount-proc --propagation private
 -- python -m runbook.lab.hostinit NAME HOSTROOT LABBIN`, so everything below happens in the
host's own namespaces and nothing leaks to the machine's mount table. The mount namespace
lives as long as this process; every session sshd spawns inherits it.
Signals: SIGHUP = reboot (the `reboot` stand-in), SIGTERM/SIGINT = power off.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from runbook.lab import services, system

MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_REMOUNT: Final = 32
MS_BIND: Final = 4096
_libc = ctypes.CDLL(None, use_errno=True)
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BOOT_FILE: Final = Path("/var/lib/runbook-lab/boot")
# Where the stand-ins appear: first in sudo's secure_path and root's PATH (Debian), and the
# NixOS system profile path that sshd's SetEnv PATH puts first for every session.
SYSTEM_BIN: Final = Path("/run/current-system/sw/bin")
BIN_ALIASES: Final = ("/usr/local/sbin",)


def mount(
    source: str, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    rc = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def bind(source: str, target: str, readonly: bool = False) -> None:
    mount(source, target, None, MS_BIND)
    if readonly:
        mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _hidden_runtime() -> list[Path]:
    """The project's interpreter and code, where a per-host bind would cover them (a pyenv
    Python under /root, a checkout under /home...): they stay visible inside the host."""
    covered = [Path("/", rel) for rel in system.BIND_DIRS]
    wanted = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), REPO_ROOT}
    return sorted(p for p in wanted if any(p.is_relative_to(c) for c in covered))


def setup_mounts(hostroot: Path, labbin: Path) -> None:
    # O_PATH handles keep the host tree (and the interpreter) reachable once they are covered.
    fd = os.open(hostroot, os.O_PATH | os.O_DIRECTORY)
    keep = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in _hidden_runtime()]
    tree = f"/proc/self/fd/{fd}"
    work = f"{tree}/../etc-work"
    mount("overlay", "/etc", "overlay", 0, f"lowerdir=/etc,upperdir={tree}/etc,workdir={work}")
    for rel in system.BIND_DIRS:
        bind(f"{tree}/{rel}", f"/{rel}")
    os.close(fd)
    for path, handle in keep:
        path.mkdir(parents=True, exist_ok=True)  # in the host's own tree
        bind(f"/proc/self/fd/{handle}", str(path), readonly=True)
        os.close(handle)
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    # Symlinks, not a bind of LABBIN: a stand-in's Path(__file__).resolve() then leads back
    # to the checkout (the attic stand-ins find the `runbook` package that way).
    SYSTEM_BIN.mkdir(parents=True)
    # only the programs the installed system has (no `attic` without pkgs.attic-client)
    system.link_programs(SYSTEM_BIN, system.absent_programs(Path("/")), labbin)
    for alias in BIN_ALIASES:
        bind(str(SYSTEM_BIN), alias, readonly=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    lab = Path("/run/runbook-lab")
    lab.mkdir(exist_ok=True)
    # The stand-ins in LABBIN are shell wrappers that source this (see bin/README).
    (lab / "env").write_text(
        f"RUNBOOK_LAB_PYTHON='{sys.executable}'\nPYTHONPATH='{REPO_ROOT}'\nexport PYTHONPATH\n"
    )


def start_services() -> list[str]:
    """Start every enabled service; the failures as 'name: reason'."""
    failed = []
    for name, env_file in system.enabled_services(Path("/")).items():
        try:
            services.start(services.load_unit(name), env_file)
        except (services.StartError, services.UnitNotFoundError, OSError) as exc:
            failed.append(f"{name}: {exc}")
    return failed


def boot() -> None:
    hostname = Path("/etc/hostname").read_text().strip()
    socket.sethostname(hostname)
    failed = start_services()
    BOOT_FILE.parent.mkdir(parents=True, exist_ok=True)
    BOOT_FILE.write_text("ok\n" if not failed else "failed: " + "; ".join(failed) + "\n")


def kill_all(grace: float) -> None:
    """Every other process in this pid namespace: SIGTERM, then SIGKILL (kill(-1) spares pid 1)."""
    try:
        os.kill(-1, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap()
        if len(os.listdir("/proc")) and not _others():
            return
        time.sleep(0.01)
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    reap()


def _others() -> bool:
    return any(p.isdigit() and p != "1" for p in os.listdir("/proc"))


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def read_leases(hostroot: Path) -> dict[str, Any]:
    """The lab DHCP server's answers for this host (host.write_leases), read before the
    host's own /var/lib covers the lab's state dir; {} for a host made without them."""
    try:
        data: dict[str, Any] = json.loads((hostroot.parent / "lease.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def renew_lease(leases: dict[str, Any]) -> str | None:
    """At boot, the address DHCP gives the system that boots now; the new one, if it moved.

    Handbook lesson 8 (reference/handbook.zh.md §8): bridged, the VM's IP comes from DHCP and
    may change on every reboot. The live ISO keeps nothing between
    boots (its /var is not persistent: nixpkgs `nixos/modules/profiles/installation-device.nix`),
    so the installed system's DHCP client asks with an identity of its own and the server
    answers it as a new client: the lab moves the host to its other lease when the phase on
    its "disk" changed (live -> installed after bootstrap0's reboot) and keeps the address on
    any other reboot. Nothing is announced: the Mac's ARP table learns the new address only
    from traffic to it.
    """
    want = leases.get("leases", {}).get(system.read_phase(Path("/")))
    iface, prefix = str(leases.get("interface", "eth0")), int(leases.get("prefix", 24))
    ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "ip"
    shown = subprocess.run(
        [ip, "-4", "-o", "addr", "show", "dev", iface], capture_output=True, text=True, check=False
    ).stdout
    if not want or f" {want}/" in shown:
        return None
    subprocess.run([ip, "addr", "flush", "dev", iface], check=True)
    subprocess.run([ip, "addr", "add", f"{want}/{prefix}", "dev", iface], check=True)
    return str(want)


def reboot(leases: dict[str, Any]) -> None:
    kill_all(grace=1.0)
    for entry in Path("/run/lab-systemd").glob("*.pid"):
        entry.unlink(missing_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    moved = renew_lease(leases)
    if moved:
        print(f"reboot: new DHCP lease {moved}", flush=True)
    boot()


def main(argv: list[str]) -> int:
    _name, hostroot, labbin = argv
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    leases = read_leases(Path(hostroot))
    setup_mounts(Path(hostroot), Path(labbin))
    boot()
    while True:
        for signum in os.read(read_fd, 64):
            if signum == signal.SIGCHLD:
                reap()
            elif signum == signal.SIGHUP:
                reboot(leases)
            elif signum in (signal.SIGTERM, signal.SIGINT):
                kill_all(grace=1.0)
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
