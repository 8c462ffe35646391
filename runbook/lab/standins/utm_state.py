"""Shared state of the lab's UTM stand-ins (`utmctl`, `osascript`, `hs`): the VMs UTM "has".

A JSON file (`$RUNBOOK_UTM_STATE`, default /run/runbook-lab/utm.json) holds `version` (UTM's,
DEFAULT_VERSION unless a test sets another) and `vms`, each
`{"uuid", "name", "status", "addresses": [...], "guest_agent": bool, "mac",
"serial": {"host", "port"} | null, "drives": [{"id", "removable", "source", "interface"}...]}`;
a VM the osascript stand-in created (`make new virtual machine`) also records what its
configuration record made: `memory`, `cpu_cores`, `nics` [{"mode", "address",
"host_interface"}], `displays` [{"hardware"}] and `serial_ports` [{"interface", "port"}]
(`mac` is the first NIC's address, `serial` the first TCP serial port's endpoint). The
runbook's `update configuration` that drops the removable drives edits `drives` only.
`hosts` (written by `runbook lab up`) maps a VM name to the lab host that plays a VM of that
name: `{"lab_host", "state_dir", "mac", "console"}`; a VM made with that name runs on that host
(`lab_host` in its record), so `utmctl start`/`stop` start and stop the host (runbook/lab/vm.py).
A VM's console is its TCP serial port: typing stand-ins decode key events *independently* of
runbook/mac/console/keymap.py (tables built here from the reference's text) and write the
characters there, so a lab console answers whichever backend typed.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

STATE_ENV: Final = "RUNBOOK_UTM_STATE"
DEFAULT_STATE: Final = Path("/run/runbook-lab/utm.json")
# The UTM the stand-ins play: utmapp/UTM e4a4c34 (= v5.0.3), whose Scripting/UTM.sdef they
# follow. >= 4.7.3, so the utm-input backend may run (runbook.mac.utm.INPUT_AUTOMATION_MIN).
DEFAULT_VERSION: Final = "5.0.3"

# Set-1 rows, indexed from their first make code (reference/utm-peers.md §3 "PC-XT").
_SCAN_ROWS: Final = {"1234567890-=": 0x02, "qwertyuiop[]": 0x10, "asdfghjkl;'`": 0x1E}
_SCAN_ROWS_2: Final = {"\\zxcvbnm,./": 0x2B}
# US shifted characters over their base keys (utm-makefile-keys.md §4).
_SHIFTED: Final = dict(zip('~!@#$%^&*()_+{}|:"<>?', "`1234567890-=[]\\;',./", strict=True))
_UNSHIFT_TO_SHIFT: Final = {base: top for top, base in _SHIFTED.items()}
# macOS kVK codes as the reference lists them (utm-makefile-keys.md §4).
_KVK_TEXT: Final = (
    "a=0 b=11 c=8 d=2 e=14 f=3 g=5 h=4 i=34 j=38 k=40 l=37 m=46 n=45 o=31 p=35 q=12 r=15 s=1 "
    "t=17 u=32 v=9 w=13 x=7 y=16 z=6 0=29 1=18 2=19 3=20 4=21 5=23 6=22 7=26 8=28 9=25 -=27 "
    "==24 [=33 ]=30 \\=42 ;=41 '=39 ,=43 .=47 /=44 `=50"
)


def _scan_table() -> dict[int, str]:
    table = {0x39: " ", 0x1C: "\n", 0x0F: "\t"}
    for rows in (_SCAN_ROWS, _SCAN_ROWS_2):
        for row, start in rows.items():
            for offset, ch in enumerate(row):
                table[start + offset] = ch
    return table


SCAN_TO_CHAR: Final = _scan_table()
KVK_TO_CHAR: Final = {int(code): ch for ch, code in (kv.rsplit("=", 1) for kv in _KVK_TEXT.split())}
KVK_TO_CHAR.update({49: " ", 36: "\n", 48: "\t"})
SC_SHIFTS: Final = (0x2A, 0x36)
KVK_SHIFTS: Final = (56, 60)


def shifted(ch: str) -> str:
    """The character a US keyboard gives for `ch`'s key with Shift held."""
    return ch.upper() if ch.isalpha() else _UNSHIFT_TO_SHIFT.get(ch, ch)


def decode_scan_codes(codes: list[int]) -> str:
    """Set-1 make/break codes -> text, as a guest with a US keymap reads them (§8)."""
    out, shift = [], False
    for code in codes:
        make, released = code & 0x7F, bool(code & 0x80)
        if code > 0xFF:  # extended 0xE0xx keys type nothing we need
            continue
        if make in SC_SHIFTS:
            shift = not released
        elif not released and make in SCAN_TO_CHAR:
            ch = SCAN_TO_CHAR[make]
            out.append(shifted(ch) if shift else ch)
    return "".join(out)


def state_path() -> Path:
    return Path(os.environ.get(STATE_ENV, str(DEFAULT_STATE)))


def load() -> dict[str, Any]:
    path = state_path()
    if not path.exists():
        return {"vms": [], "version": DEFAULT_VERSION}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@contextmanager
def serialized() -> Iterator[None]:
    """One request at a time, as UTM handles its Apple Events and utmctl calls: the runbook
    may create and start several VMs at once, and each stand-in reads, edits and saves the
    whole state file, so an unserialized pair would lose one VM's change."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(path.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def save(state: dict[str, Any]) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def find(state: dict[str, Any], name_or_uuid: str) -> dict[str, Any] | None:
    """utmctl's VM argument: "Either the UUID or the complete name" (§2)."""
    vms: list[dict[str, Any]] = state["vms"]
    for vm in vms:
        if name_or_uuid in (vm["name"], vm["uuid"]):
            return vm  # the live record: callers edit it and save the state
    return None


def random_mac() -> str:
    """UTM's MACs: uppercase, first byte locally administered (§3 "MAC")."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x2
    return ":".join(f"{b:02X}" for b in raw)


def new_vm(name: str) -> dict[str, Any]:
    """A VM as `make new virtual machine` starts it for QEMU, before the record is applied
    (utmapp/UTM Scripting/UTMScriptingCreateCommand.swift `createQemuVirtualMachine`: the
    architecture's defaults, i.e. 512 MiB and cores 0 (`UTMQemuConfigurationSystem.swift`) and
    one shared NIC (`UTMQemuConfigurationNetwork.swift`); an empty removable drive and a 64 GiB
    disk on the virt machine's default interfaces, USB and VirtIO
    (`UTMQemuConfigurationDrive.swift` `defaultInterface`); one ptty serial port; no display)."""
    mac = random_mac()
    return {
        "uuid": str(uuidlib.uuid4()).upper(),
        "name": name,
        "status": "stopped",
        "addresses": [],
        "guest_agent": False,
        "mac": mac,
        "serial": None,
        "drives": [
            {"id": drive_id(), "removable": True, "source": None, "interface": "USB"},
            {"id": drive_id(), "removable": False, "source": None, "interface": "VirtIO"},
        ],
        "memory": 512,
        "cpu_cores": 0,
        "nics": [{"mode": "shared", "address": mac, "host_interface": ""}],
        "displays": [],
        "serial_ports": [{"interface": "ptty", "port": 0}],
    }


def drive_id() -> str:
    return str(uuidlib.uuid4()).upper()


def default_interface(removable: bool) -> str:
    """The virt machine's default drive interface: USB for a CD (removable), else VirtIO
    (utmapp/UTM Configuration/UTMQemuConfigurationDrive.swift `defaultInterface`)."""
    return "USB" if removable else "VirtIO"


def configuration_rows(vm: dict[str, Any]) -> list[str]:
    """`vm`'s configuration as runbook.mac.utm.VM_CONFIG_SCRIPT prints it (tab-separated rows).

    VMs that `runbook lab up` writes (runbook/lab/console.py) have no recorded configuration:
    they play VMs 01 made as asked, so they read as a bridged NIC with their host's MAC, a
    virtio-ramfb display, their console as the TCP serial port and UTM's default interfaces."""
    if "nics" not in vm:
        serial = vm.get("serial")
        ports = [{"interface": "tcp", "port": serial["port"]}] if serial else []
        made: dict[str, Any] = {
            "memory": 4096,
            "cpu_cores": 4,
            "nics": [{"mode": "bridged", "address": vm.get("mac") or "", "host_interface": "en0"}],
            "displays": [{"hardware": "virtio-ramfb"}],
            "serial_ports": ports,
        }
        vm = {**vm, **made}
    rows = [f"memory\t{vm['memory']}", f"cpu cores\t{vm['cpu_cores']}"]
    rows += [f"nic\t{n['mode']}\t{n['address']}\t{n['host_interface']}" for n in vm["nics"]]
    rows += [f"display\t{d['hardware']}" for d in vm["displays"]]
    rows += [f"serial\t{p['interface']}\t{p['port']}" for p in vm["serial_ports"]]
    drives: list[dict[str, Any]] = vm.get("drives", [])
    rows += [
        f"drive\t{'true' if d['removable'] else 'false'}\t"
        f"{d.get('interface') or default_interface(d['removable'])}"
        for d in drives
    ]
    return rows


# The lab's ISO is a name in this state, not a file; UTM would report the real image's size
# (a NixOS minimal ISO is about 1 GiB), so a named image that is not a file counts as this.
NAMED_IMAGE_MIB: Final = 1024
MIB: Final = 1048576


def host_size_mib(drive: dict[str, Any]) -> int:
    """A drive's `host size` as UTM reads it: its image's size in MiB, 0 without an image
    (reference/utm-makefile-keys.md §3 drive record)."""
    source = drive.get("source")
    if not source:
        return 0
    path = Path(source)
    return path.stat().st_size // MIB if path.is_file() else NAMED_IMAGE_MIB


def drive_rows(vm: dict[str, Any]) -> list[str]:
    """The drives of `vm` as runbook.mac.utm.DRIVES_SCRIPT prints them: `id TAB removable TAB MiB
    TAB source`. Like UTM, a read gives no `source` (only id, removable, interface and host
    size: UTM's Scripting/UTMScriptingConfigImpl.swift), so the script's `try` leaves it empty."""
    drives: list[dict[str, Any]] = vm.get("drives", [])
    return [
        f"{d['id']}\t{'true' if d['removable'] else 'false'}\t{host_size_mib(d)}\t" for d in drives
    ]


def host_of(state: dict[str, Any], vm: dict[str, Any]) -> dict[str, Any] | None:
    """The lab host that plays `vm` (its entry in `hosts`), or None."""
    hosts: dict[str, dict[str, Any]] = state.get("hosts", {})
    found = hosts.get(vm["name"])
    return found if found is not None and found["lab_host"] == vm.get("lab_host") else None


def _keyboard(vm: dict[str, Any]) -> dict[str, Any] | None:
    """The keyboard port of the console of the lab host playing `vm` (its console.json)."""
    played = host_of(load(), vm)
    if played is None:
        return None
    try:
        data = json.loads(Path(played["console"]).read_text())
        return {"host": data["host"], "port": int(data["keyboard"])} if data["keyboard"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def type_on_console(vm: dict[str, Any], text: str) -> None:
    """Send typed text to the VM's lab console; Enter arrives as CR, like a keyboard.

    UTM types through SPICE, not through the serial port, whose one client may be the
    runbook's reader (QEMU serves one at a time, runbook/lab/console.py): so the text goes to
    the keyboard port of the console of the host that plays the VM, and to the serial port
    only for a VM that no lab host plays (a test rig)."""
    keyboard = _keyboard(vm) or vm.get("serial")
    if not keyboard:
        raise OSError(f"VM {vm['name']!r} has no lab console (no serial port in the state)")
    with socket.create_connection((keyboard["host"], int(keyboard["port"])), timeout=5) as sock:
        sock.sendall(text.replace("\n", "\r").encode())
