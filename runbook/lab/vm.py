"""The lab host behind a UTM VM: what the UTM stand-ins do to it when UTM would act on the VM.

A VM the lab's UTM has is played by one lab host (`hosts` in utm.json, written by lab up):
`utmctl stop` powers the host off (every process gone, as QEMU's exits; its tree, the VM's
"disk", stays), `utmctl start` boots it again from that tree, in whatever phase the tree is
in (the installed system once bootstrap0 ran), with its console on the VM's configured TCP
serial port; a VM made with a MAC other than the host's gives the host's NIC that MAC.
UTM's own behaviour these follow: utmapp/UTM Services/UTMQemuVirtualMachine.swift (`stop`
with `.force`/`.kill` ends QEMU, `.request` asks the guest to power down, ACPI) and
Scripting/UTMScriptingVirtualMachineImpl.swift (`start`, `stop` by method).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Final

from runbook.core.errors import RunbookError
from runbook.lab import console, host
from runbook.lab.config import LabParams, from_mapping
from runbook.lab.net import netns
from runbook.transport.local import run

POWER_OFF_TIMEOUT: Final = 10.0
REGISTRY: Final = "lab.json"  # lifecycle.REGISTRY: the lab's params, written by lab up


def lab_of(played: dict[str, Any]) -> LabParams:
    """The lab a host belongs to, from its registry (`<state_dir>/lab.json`)."""
    path = Path(played["state_dir"]) / REGISTRY
    try:
        data = json.loads(path.read_text())
        return from_mapping(data["params"], str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise RunbookError(f"the lab of {played['lab_host']} is not up ({path}: {exc})") from None


def running(played: dict[str, Any]) -> bool:
    return host.init_pid(str(played["lab_host"])) is not None


def power_off(played: dict[str, Any], *, force: bool) -> None:
    """The host's init powers off (SIGTERM: every process ends, then it exits) or, forced, every
    process is killed; its console goes with it. Returns once nothing of it runs."""
    name = str(played["lab_host"])
    lab = lab_of(played)
    pid = host.init_pid(name)
    if pid is not None and not force:
        try:
            os.kill(pid, signal.SIGTERM)  # hostinit: power off
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + POWER_OFF_TIMEOUT
        while host.pids_in_netns(name) and time.monotonic() < deadline:
            time.sleep(0.02)
    host.stop(name)  # whatever is left (or everything, forced)
    console.stop(lab, name)


def power_on(played: dict[str, Any], serial_port: int) -> None:
    """Boot the host from its tree (the VM's disk) unless it runs; its console on the VM's
    TCP serial port (0: any)."""
    name = str(played["lab_host"])
    lab = lab_of(played)
    spec = next((s for s in lab.hosts if s.name == name), None)
    if spec is None:
        raise RunbookError(f"lab host {name} is not in its lab's hosts")
    if host.init_pid(name) is None:
        host.start(lab, spec)
        host.wait_booted(lab, spec, time.monotonic() + host.BOOT_TIMEOUT)
    console.ensure(lab, name, serial_port)


def set_mac(played: dict[str, Any], mac: str) -> None:
    """The host's NIC gets `mac` (the VM was made with it): `ip link set dev eth0 address`."""
    name = str(played["lab_host"])
    result = run(
        ["ip", "-n", netns(name), "link", "set", "dev", "eth0", "address", mac.lower()],
        check=False,
    )
    if result.exit_code != 0:
        raise RunbookError(f"lab host {name}: cannot give eth0 the MAC {mac}: {result.stderr}")
    played["mac"] = mac.upper()
