"""Typed wrappers around UTM on the Mac: `utmctl` subcommands and the AppleScript the runbook needs.

Formats and behaviour follow reference/utm-makefile-keys.md §2 (utmctl) and §3 (AppleScript).
Each wrapper builds an argv list and runs it through `runbook.transport.local.run`. utmctl's exit code
cannot be trusted (its AppleEvent error handler never sets one, §2 "Errors"), so stderr is
checked too. AppleScript goes to `osascript -` on stdin with the user's strings as `argv` items,
so no name or path is ever spliced into script text (packer-plugin-utm does the same,
utm-peers.md §1).

Each wrapper runs the program it is given (params `utm.utmctl`, `utm.osascript`: a path, or a
name looked up on PATH). A Mac-side program runs on macOS, or wherever that path or name finds
an executable; anywhere else the wrapper raises `MacOnlyError` ("unchecked") before running
anything.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runbook.core.errors import CommandError, InputError, RunbookError
from runbook.core.models import Result
from runbook.transport import local
from runbook.transport.commands import LocalCommand

logger: Final = logging.getLogger(__name__)

DEFAULT_UTMCTL: Final = Path("/Applications/UTM.app/Contents/MacOS/utmctl")
OSASCRIPT: Final = "osascript"  # on PATH (/usr/bin on macOS); params utm.osascript names it
# `utmctl ip-address` can block forever without a guest agent (§2, [user] note): always cap it.
IP_ADDRESS_TIMEOUT: Final = 15.0
UTMCTL_TIMEOUT: Final = 60.0
OSASCRIPT_TIMEOUT: Final = 120.0

# Messages utmctl prints on stderr, sometimes with exit code 0 (§2 "Errors").
_UTMCTL_ERRORS: Final = (
    "Error from event:",
    "Virtual machine not found.",
    "Operation not supported by the backend.",
    "NOTE: utmctl does not work from SSH sessions",
)
_UUID_RE: Final = re.compile(r"^[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$")
_MAC_RE: Final = re.compile(r"^([0-9A-Fa-f]{1,2}:){5}[0-9A-Fa-f]{1,2}$")


class MacOnlyError(RunbookError):
    """The step needs macOS (UTM, osascript, Hammerspoon); on this machine it stays unchecked."""


def can_run(program: str | Path) -> bool:
    """Whether the Mac-side `program` (utmctl, osascript, hs: a params value) runs here: on
    macOS always (a wrong path then fails with its own error), elsewhere when the path, or
    the name on PATH, is an executable file."""
    return sys.platform == "darwin" or shutil.which(str(program)) is not None


def require_macos(what: str, program: str | Path) -> None:
    """Raise MacOnlyError naming `what` unless `program` can run here (`can_run`)."""
    if not can_run(program):
        raise MacOnlyError(
            f"unchecked: {what} needs macOS with UTM (this machine is {sys.platform} and has "
            f"no {program}); run it on the Mac, or give the program's path in the params"
        )


class VmStatus(enum.StrEnum):
    """`utmctl status` words (§2 "status output"); `saving`/`restoring` show as pausing/resuming."""

    STOPPED = "stopped"
    STARTING = "starting"
    STARTED = "started"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPING = "stopping"
    UNKNOWN = "unknown"


class StopMode(enum.StrEnum):
    """`utmctl stop` takes at most one of these; `force` is utmctl's default (§2 table)."""

    FORCE = "force"
    KILL = "kill"
    REQUEST = "request"


@dataclass(frozen=True)
class VmEntry:
    """One row of `utmctl list`."""

    uuid: str
    status: VmStatus
    name: str


@dataclass(frozen=True)
class SerialEndpoint:
    """What `utmctl attach` prints: `PTTY: /dev/ttysNNN` or `TCP: <addr>:<port>` (§2 table)."""

    kind: str  # "ptty" or "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None


# --- parsers (pure; tested on the reference's samples) ------------------------------------------


def parse_list(stdout: str) -> list[VmEntry]:
    """Parse `utmctl list`: header `UUID<33 spaces>Status   Name`, rows `<uuid> <status:8> <name>`.

    Columns are fixed (§2 "list output": Status at column 37, Name at 46); a name may hold spaces.
    """
    entries: list[VmEntry] = []
    for line in stdout.splitlines():
        if not line.strip() or line.startswith("UUID "):
            continue
        uuid, rest = line[:36], line[37:]
        if not _UUID_RE.match(uuid) or len(line) < 46:
            raise CommandError(
                host="localhost",
                command="utmctl list",
                exit_code=0,
                reason=f"printed an unexpected line {line!r}",
            )
        entries.append(VmEntry(uuid, parse_status(rest[:8]), line[46:]))
    return entries


def parse_status(stdout: str) -> VmStatus:
    """Parse `utmctl status`: one word; anything unknown is VmStatus.UNKNOWN."""
    word = stdout.strip().lower()
    try:
        return VmStatus(word)
    except ValueError:
        return VmStatus.UNKNOWN


def parse_ip_addresses(stdout: str) -> list[str]:
    """Parse `utmctl ip-address`: one address per line, IPv4 first, loopback already dropped."""
    found: list[str] = []
    for line in stdout.splitlines():
        text = line.strip()
        try:
            found.append(str(ipaddress.ip_address(text.split("%", 1)[0])))
        except ValueError:
            if text:
                logger.debug("utmctl ip-address: ignored line %r", text)
    return found


def parse_attach(stdout: str) -> SerialEndpoint:
    """Parse `utmctl attach`: `PTTY: /dev/ttys003` or `TCP: 127.0.0.1:4444`."""
    for line in stdout.splitlines():
        if line.startswith("PTTY: "):
            return SerialEndpoint("ptty", path=line[6:].strip())
        if line.startswith("TCP: "):
            host, _, port = line[5:].strip().rpartition(":")
            if host and port.isdigit():
                return SerialEndpoint("tcp", host=host.strip("[]"), port=int(port))
    raise CommandError(
        host="localhost",
        command="utmctl attach",
        exit_code=0,
        reason=f"printed no PTTY:/TCP: line ({stdout.strip()[:200]!r})",
    )


def utmctl_failed(result: Result) -> str | None:
    """utmctl's failure text from stderr, or None; its exit code alone is not trusted (§2)."""
    for marker in _UTMCTL_ERRORS:
        if marker in result.stderr:
            return result.stderr.strip()
    if result.exit_code != 0:
        return result.stderr.strip() or f"exit code {result.exit_code}"
    return None


# --- utmctl ------------------------------------------------------------------------------------


def utmctl_argv(utmctl: str | Path, *args: str) -> list[str]:
    """The argv for one utmctl subcommand."""
    return [str(utmctl), *args]


def utmctl_command(utmctl: str | Path, *args: str, timeout: float = UTMCTL_TIMEOUT) -> LocalCommand:
    """One utmctl subcommand as the value a plan shows and `_utmctl` runs."""
    return LocalCommand.of(utmctl_argv(utmctl, *args), timeout=timeout)


def _utmctl(utmctl: str | Path, *args: str, timeout: float = UTMCTL_TIMEOUT) -> Result:
    require_macos(f"`utmctl {args[0]}`", utmctl)
    cmd = utmctl_command(utmctl, *args, timeout=timeout)
    result = local.run(list(cmd.argv), check=False, timeout=cmd.timeout)
    failure = utmctl_failed(result)
    if failure is not None:
        raise CommandError(
            host="localhost", command=result.command, exit_code=result.exit_code, stderr=failure
        )
    return result


def list_vms(*, utmctl: str | Path = DEFAULT_UTMCTL) -> list[VmEntry]:
    """Every VM UTM knows: `utmctl list`."""
    return parse_list(_utmctl(utmctl, "list").stdout)


def find_vm(name: str, *, utmctl: str | Path = DEFAULT_UTMCTL) -> VmEntry | None:
    """The VM called `name` (or with that UUID), or None."""
    for entry in list_vms(utmctl=utmctl):
        if name in (entry.name, entry.uuid):
            return entry
    return None


def status(vm: str, *, utmctl: str | Path = DEFAULT_UTMCTL) -> VmStatus:
    """`utmctl status VM`; VM is the UUID or the complete name."""
    return parse_status(_utmctl(utmctl, "status", vm).stdout)


def start(
    vm: str,
    *,
    disposable: bool = False,
    recovery: bool = False,
    utmctl: str | Path = DEFAULT_UTMCTL,
) -> None:
    """`utmctl start VM [--disposable] [--recovery]`."""
    flags = [f for f, on in (("--disposable", disposable), ("--recovery", recovery)) if on]
    _utmctl(utmctl, "start", vm, *flags)


def stop(vm: str, *, mode: StopMode = StopMode.FORCE, utmctl: str | Path = DEFAULT_UTMCTL) -> None:
    """`utmctl stop VM --force|--kill|--request` (`--request` asks the guest to shut down)."""
    _utmctl(utmctl, "stop", vm, f"--{StopMode(mode).value}")


def suspend(vm: str, *, save_state: bool = False, utmctl: str | Path = DEFAULT_UTMCTL) -> None:
    """`utmctl suspend VM [--save-state]`."""
    _utmctl(utmctl, "suspend", vm, *(["--save-state"] if save_state else []))


def ip_addresses(
    vm: str, *, utmctl: str | Path = DEFAULT_UTMCTL, timeout: float = IP_ADDRESS_TIMEOUT
) -> list[str]:
    """`utmctl ip-address VM` (needs the QEMU guest agent in the VM), capped by `timeout`."""
    return parse_ip_addresses(_utmctl(utmctl, "ip-address", vm, timeout=timeout).stdout)


def attach(
    vm: str, *, index: int | None = None, utmctl: str | Path = DEFAULT_UTMCTL
) -> SerialEndpoint:
    """`utmctl attach VM [--index N]`: where the VM's serial console is (PTY or TCP)."""
    extra = ["--index", str(index)] if index is not None else []
    return parse_attach(_utmctl(utmctl, "attach", vm, *extra).stdout)


def delete(vm: str, *, utmctl: str | Path = DEFAULT_UTMCTL) -> None:
    """`utmctl delete VM` — no confirmation, so callers confirm first."""
    _utmctl(utmctl, "delete", vm)


# --- AppleScript -------------------------------------------------------------------------------


def osascript_argv(*args: str, osascript: str | Path = OSASCRIPT) -> list[str]:
    """`osascript - ARG...`: the script comes on stdin, its `argv` are ARG... (never spliced)."""
    return [str(osascript), "-", *args]


def run_applescript(
    script: str,
    *args: str,
    what: str,
    timeout: float = OSASCRIPT_TIMEOUT,
    osascript: str | Path = OSASCRIPT,
) -> str:
    """Run `script` through `osascript` (params `utm.osascript`) with `args` as its argv;
    return stdout stripped.

    A script of UTM's Input Automation Suite (what the utm-input console backend sends) is
    refused before it runs when UTM is older than 4.7.3 (`require_input_automation`)."""
    require_macos(what, osascript)
    if uses_input_automation(script):
        require_input_automation(osascript=osascript)
    cmd = applescript_command(script, *args, osascript=osascript, timeout=timeout)
    return local.run(list(cmd.argv), stdin=cmd.stdin, timeout=cmd.timeout).stdout.strip()


def applescript_command(
    script: str, *args: str, osascript: str | Path = OSASCRIPT, timeout: float = OSASCRIPT_TIMEOUT
) -> LocalCommand:
    """`osascript - ARG...` with `script` on stdin, as the value a plan shows and
    `run_applescript` runs."""
    argv = osascript_argv(*args, osascript=osascript)
    return LocalCommand.of(argv, timeout=timeout, stdin=script, heredoc="APPLESCRIPT")


def _applescript_enum(value: str, allowed: Sequence[str], what: str) -> str:
    # Only closed sets of words reach the script text; everything else goes through argv.
    if value not in allowed:
        raise InputError(f"{what}: {value!r} is not one of {', '.join(allowed)}")
    return value


# sdef drive interface names (§3 "Drive record"); the disk device follows from it.
DISK_INTERFACES: Final = {"virtio": "VirtIO", "scsi": "SCSI", "usb": "USB", "nvme": "NVMe"}


@dataclass(frozen=True)
class NewVm:
    """What `create_vm` makes: the handbook's VM (bridged network, the NixOS ISO, a display)."""

    name: str
    iso: Path
    host_interface: str = "en0"  # the Mac's interface to bridge (§3 "Bridged mode")
    architecture: str = "aarch64"
    memory_mib: int = 4096
    cpu_cores: int = 4
    disk_mib: int = 65536
    disk_interface: str = "virtio"
    mac: str | None = None  # a fixed MAC lets discover.py find the VM in the ARP table
    display: bool = True  # no SPICE window without one (§3: create removes GUI devices)
    serial_tcp_port: int | None = None  # a TCP-server serial console on 127.0.0.1 (§3)

    def check(self) -> None:
        """Raise InputError for a value UTM would reject or misread."""
        if not self.name.strip():
            raise InputError("vm name: expected a non-empty name")
        _applescript_enum(self.architecture, ("aarch64", "x86_64"), "architecture")
        _applescript_enum(self.disk_interface, tuple(DISK_INTERFACES), "disk_interface")
        if self.mac is not None and not _MAC_RE.match(self.mac):
            raise InputError(f"mac: {self.mac!r} is not XX:XX:XX:XX:XX:XX")
        for label, value in (("memory_mib", self.memory_mib), ("cpu_cores", self.cpu_cores)):
            if value < 1:
                raise InputError(f"{label}: expected a positive number, got {value}")
        if self.serial_tcp_port is not None and not 1 <= self.serial_tcp_port <= 65535:
            raise InputError(f"serial_tcp_port: {self.serial_tcp_port} is not a TCP port")


# The configuration record's `serial ports` (code SrPt) shares its name with the plural of the
# class `serial port` (code SeRi) in Scripting/UTM.sdef, and AppleScript compiles the name as
# the element reference: `set serial ports of config to ...` fails at run time ("Can't set
# every «class SeRi» of ...", UTM #7460). The raw code names the property itself.
SERIAL_PORTS_KEY: Final = "«class SrPt»"
DISPLAY_HARDWARE: Final = "virtio-ramfb"


def create_vm_record(spec: NewVm) -> str:
    """The `configuration:` record of `make new virtual machine`, every setting in it.

    UTM applies the whole record before it creates anything (Scripting/
    UTMScriptingCreateCommand.swift: `updateConfiguration(from: record)`, then `data.create`),
    so an error there (e.g. an `index` with no element) fails the command and leaves no
    half-made VM. Keys or values UTM does not know it skips without a word, which is why 01
    reads the result back (`vm_config`, `config_differences`). Shapes from
    Scripting/UTM.sdef and UTMScriptingConfigImpl.swift: lists of records for drives, network
    interfaces, displays and serial ports; a record with `index` updates that element (the
    create command starts with one default NIC), one without appends a new one, and elements
    left out are removed (the default ISO drive, 64 GiB disk and ptty serial port).
    """
    spec.check()
    disk = f"{{guest size:{int(spec.disk_mib)}, interface:{DISK_INTERFACES[spec.disk_interface]}}}"
    drives = f"{{{{removable:true, source:isoFile}}, {disk}}}"
    nic = "{index:0, mode:bridged, host interface:hostIf" + (
        ", address:macAddr}" if spec.mac else "}"
    )
    keys = [
        "name:vmName",
        f'architecture:"{spec.architecture}"',
        f"memory:{int(spec.memory_mib)}",
        f"cpu cores:{int(spec.cpu_cores)}",
        f"drives:{drives}",
        f"network interfaces:{{{nic}}}",
    ]
    if spec.display:  # the create command removes GUI devices: no window to type into without one
        keys.append(f'displays:{{{{hardware:"{DISPLAY_HARDWARE}"}}}}')
    if spec.serial_tcp_port is not None:
        keys.append(f"{SERIAL_PORTS_KEY}:{{{{interface:tcp, port:{int(spec.serial_tcp_port)}}}}}")
    return "{" + ", ".join(keys) + "}"


def create_vm_script(spec: NewVm) -> str:
    """AppleScript that makes the VM in one `make new virtual machine` (cheat sheet, §3) whose
    configuration record holds every setting (`create_vm_record`); nothing is set afterwards.
    argv: name, ISO path, host interface, MAC (user strings never enter the script text).
    """
    record = create_vm_record(spec)
    return (
        "on run argv\n"
        "  set vmName to item 1 of argv\n"
        "  set isoFile to POSIX file (item 2 of argv)\n"
        "  set hostIf to item 3 of argv\n"
        "  set macAddr to item 4 of argv\n"
        '  tell application "UTM"\n'
        "    set vm to make new virtual machine with properties "
        f"{{backend:qemu, configuration:{record}}}\n"
        "    return id of vm\n"
        "  end tell\n"
        "end run\n"
    )


def create_vm(spec: NewVm, *, osascript: str | Path = OSASCRIPT) -> str:
    """Create the VM in UTM (bridged, ISO attached); returns its UUID."""
    script = create_vm_script(spec)
    out = run_applescript(
        script,
        spec.name,
        str(spec.iso),
        spec.host_interface,
        normalize_mac(spec.mac) if spec.mac else "",
        what=f"creating VM {spec.name!r} in UTM",
        osascript=osascript,
    )
    return out.splitlines()[-1].strip() if out else ""


# Reading back what 01 made, read-only. The configuration record's keys as UTM serializes them
# (Scripting/UTMScriptingConfigImpl.swift `serializeQemuConfiguration`, `serializeQemuNetwork`,
# `serializeQemuDisplay`, `serializeQemuSerial`, `serializeQemuDriveExisting`); the serial
# ports by their raw code (SERIAL_PORTS_KEY: `serial ports of cfg` is the element reference,
# UTM #7460). One row per fact, fields split by tabs:
#   memory MiB | cpu cores N | nic mode MAC host-if | display hardware | serial interface port
#   | drive removable interface
VM_CONFIG_SCRIPT: Final = """on run argv
  tell application "UTM"
    set cfg to configuration of (virtual machine named (item 1 of argv))
    set rows to {"memory" & tab & (memory of cfg as text), "cpu cores" & tab & (cpu cores of cfg as text)}
    repeat with n in network interfaces of cfg
      set end of rows to "nic" & tab & (mode of n as text) & tab & (address of n) & tab & (host interface of n)
    end repeat
    repeat with d in displays of cfg
      set end of rows to "display" & tab & (hardware of d)
    end repeat
    repeat with p in «class SrPt» of cfg
      set end of rows to "serial" & tab & (interface of p as text) & tab & (port of p as text)
    end repeat
    repeat with d in drives of cfg
      set end of rows to "drive" & tab & (removable of d as text) & tab & (interface of d as text)
    end repeat
    set AppleScript's text item delimiters to linefeed
    return rows as text
  end tell
end run
"""

# Enumerator codes of Scripting/UTM.sdef (qemu network mode, serial interface, qemu drive
# interface): an enum that `as text` cannot name prints as «constant ****Code».
_ENUM_CODES: Final = {
    "EmUd": "emulated", "ShRd": "shared", "HoSt": "host", "BrGd": "bridged",
    "PtTy": "ptty", "TcP ": "tcp", "IUnA": "unavailable",
    "QdIN": "none", "QdIi": "IDE", "QdIs": "SCSI", "QdId": "SD", "QdIm": "MTD",
    "QdIf": "Floppy", "QdIp": "PFlash", "QdIv": "VirtIO", "QdIn": "NVMe", "QdIu": "USB",
}  # fmt: skip
_CONSTANT_RE: Final = re.compile(r"^«constant \*\*\*\*(.{4})»$")


def _enum_name(text: str) -> str:
    found = _CONSTANT_RE.match(text)
    return _ENUM_CODES.get(found[1], text) if found else text


@dataclass(frozen=True)
class NicConfig:
    mode: str
    address: str
    host_interface: str


@dataclass(frozen=True)
class SerialConfig:
    interface: str
    port: int


@dataclass(frozen=True)
class DriveConfig:
    removable: bool
    interface: str


@dataclass(frozen=True)
class VmConfig:
    """A VM's configuration as UTM reads it back (VM_CONFIG_SCRIPT)."""

    memory_mib: int
    cpu_cores: int
    nics: tuple[NicConfig, ...]
    displays: tuple[str, ...]
    serials: tuple[SerialConfig, ...]
    drives: tuple[DriveConfig, ...]

    def summary(self) -> str:
        """One line: NICs, displays, serial ports, disk interfaces, RAM and cores."""
        nics = ", ".join(f"{n.mode} {n.address}" for n in self.nics) or "no NIC"
        shown = ", ".join(self.displays) or "no display"
        serial = ", ".join(f"{p.interface} {p.port}" for p in self.serials) or "no serial port"
        disks = ", ".join(d.interface for d in self.drives if not d.removable) or "no disk"
        return (
            f"{nics}; display {shown}; serial {serial}; disk {disks}; "
            f"{self.memory_mib} MiB, {self.cpu_cores} cores"
        )


def _config_error(line: str) -> CommandError:
    return CommandError(
        host="localhost",
        command="osascript - (configuration)",
        exit_code=0,
        reason=f"printed an unexpected configuration line {line!r}",
    )


def parse_vm_config(stdout: str) -> VmConfig:
    """Parse VM_CONFIG_SCRIPT's rows (see there); enum codes are named, MACs upper-cased."""
    memory = cores = -1
    nics: list[NicConfig] = []
    displays: list[str] = []
    serials: list[SerialConfig] = []
    drives_: list[DriveConfig] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        kind, *fields = line.split("\t")
        if kind in ("memory", "cpu cores") and len(fields) == 1 and fields[0].isdigit():
            memory, cores = (
                (int(fields[0]), cores) if kind == "memory" else (memory, int(fields[0]))
            )
        elif kind == "nic" and len(fields) in (2, 3):  # a last empty host interface is stripped
            mode, address, host_if = [*fields, ""][:3]
            nics.append(NicConfig(_enum_name(mode), address.upper(), host_if))
        elif kind == "display" and len(fields) == 1:
            displays.append(fields[0])
        elif kind == "serial" and len(fields) == 2 and fields[1].isdigit():
            serials.append(SerialConfig(_enum_name(fields[0]), int(fields[1])))
        elif kind == "drive" and len(fields) == 2 and fields[0] in ("true", "false"):
            drives_.append(DriveConfig(fields[0] == "true", _enum_name(fields[1])))
        else:
            raise _config_error(line)
    if memory < 0 or cores < 0:
        raise _config_error(stdout.strip()[:200])
    return VmConfig(memory, cores, tuple(nics), tuple(displays), tuple(serials), tuple(drives_))


def vm_config(vm: str, *, osascript: str | Path = OSASCRIPT) -> VmConfig:
    """`vm`'s configuration as UTM has it (read-only: nothing in UTM changes)."""
    what = f"reading the configuration of {vm!r}"
    out = run_applescript(VM_CONFIG_SCRIPT, vm, what=what, osascript=osascript)
    return parse_vm_config(out)


def normalize_mac(mac: str) -> str:
    """`5a:94:ef:e4:c:ee` -> `5A:94:EF:E4:0C:EE` (UTM prints upper case, ARP strips zeros);
    anything that is no MAC comes back upper-cased as it was."""
    if not _MAC_RE.match(mac):
        return mac.upper()
    return ":".join(f"{int(octet, 16):02X}" for octet in mac.split(":"))


def config_differences(spec: NewVm, config: VmConfig) -> list[str]:
    """What in `config` differs from what 01 makes for `spec`, in words; [] when it matches.

    What the later notebooks rely on: a bridged NIC (with the params' MAC when they give one:
    discovery looks for it), a display (UTM's input and Hammerspoon type into its window), the
    disk on the interface bootstrap0 partitions, and the TCP serial port when one is asked for.
    RAM and cores are left to the user (UTM's settings may change them later).
    """
    wrong: list[str] = []
    bridged = [n for n in config.nics if n.mode == "bridged"]
    if not bridged:
        has = ", ".join(f"{n.mode} {n.address}" for n in config.nics) or "none"
        wrong.append(f"network: no bridged interface (UTM has: {has})")
    elif spec.mac and normalize_mac(spec.mac) not in {normalize_mac(n.address) for n in bridged}:
        macs = ", ".join(n.address for n in bridged)
        wrong.append(
            f"network: the bridged interface has MAC {macs}, params say {spec.mac.upper()}"
        )
    if spec.display and not config.displays:
        wrong.append("display: none (nothing to type into or to take a picture of)")
    want = DISK_INTERFACES[spec.disk_interface]
    disks = [d.interface for d in config.drives if not d.removable]
    if not disks:
        wrong.append("disk: no fixed drive")
    elif disks[0].lower() != want.lower():
        wrong.append(f"disk: interface {disks[0]}, params say {want} ({spec.disk_interface})")
    if spec.serial_tcp_port is not None:
        tcp = [p.port for p in config.serials if p.interface == "tcp"]
        if spec.serial_tcp_port not in tcp:
            has = ", ".join(f"{p.interface} {p.port}" for p in config.serials) or "none"
            wrong.append(f"serial: no TCP port {spec.serial_tcp_port} (UTM has: {has})")
    return wrong


REMOVE_ISO_SCRIPT: Final = """on run argv
  set vmName to item 1 of argv
  tell application "UTM"
    set vm to virtual machine named vmName
    set config to configuration of vm
    set kept to {}
    set removed to 0
    repeat with d in drives of config
      if removable of d then
        set removed to removed + 1
      else
        set end of kept to contents of d
      end if
    end repeat
    if removed > 0 then
      set drives of config to kept
      update configuration of vm with config
    end if
    return removed
  end tell
end run
"""


# Reading a drive: UTM serializes an existing QEMU drive as {id, removable, interface, host size}
# (Scripting/UTMScriptingConfigImpl.swift `serializeQemuDriveExisting`; §3 lists `source` among
# the drive record's keys, but a read does not return it). `source` is still tried (a later UTM
# may give it) and stays empty; `host size` is 0 when UTM cannot stat the image, so neither
# tells an empty removable drive from one holding the ISO (see `Drive.holds_image`). One line
# per drive: `<id> TAB <removable: true|false> TAB <host size> TAB <source POSIX path or empty>`.
DRIVES_SCRIPT: Final = """on run argv
  tell application "UTM"
    set vm to virtual machine named (item 1 of argv)
    set rows to {}
    repeat with d in drives of (configuration of vm)
      set src to ""
      try
        set src to POSIX path of (source of d)
      end try
      set mib to 0
      try
        set mib to host size of d
      end try
      set end of rows to (id of d as text) & tab & (removable of d as text) & tab & (mib as text) & tab & src
    end repeat
    set AppleScript's text item delimiters to linefeed
    return rows as text
  end tell
end run
"""


@dataclass(frozen=True)
class Drive:
    """One drive of a VM's configuration, as DRIVES_SCRIPT lists it."""

    id: str
    removable: bool
    host_size_mib: int
    source: str | None  # the image's POSIX path; None when UTM does not say (see DRIVES_SCRIPT)

    @property
    def holds_image(self) -> bool:
        """Counts as the attached ISO: any removable drive. A read never gives `source`
        (`serializeQemuDriveExisting` in Scripting/UTMScriptingConfigImpl.swift) and `host
        size` is 0 whenever UTM cannot stat the image (`size(of:)` there), so an ISO UTM cannot
        reach looks like an empty drive; only dropping the drive (`remove_iso`) is certain."""
        return self.removable


def parse_drives(stdout: str) -> list[Drive]:
    """Parse DRIVES_SCRIPT's output: `id<TAB>true|false<TAB>MiB<TAB>source` per drive."""
    drives: list[Drive] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t", 3)
        if len(fields) == 3:  # run_applescript strips the output: a last empty source's tab
            fields.append("")
        if len(fields) != 4 or fields[1] not in ("true", "false") or not fields[2].isdigit():
            raise CommandError(
                host="localhost",
                command="osascript - (drives)",
                exit_code=0,
                reason=f"printed an unexpected drive line {line!r}",
            )
        drive_id, removable, mib, source = fields
        drives.append(Drive(drive_id, removable == "true", int(mib), source or None))
    return drives


def drives(vm: str, *, osascript: str | Path = OSASCRIPT) -> list[Drive]:
    """The drives of `vm`'s configuration (read-only: nothing in UTM changes)."""
    what = f"reading the drives of {vm!r}"
    out = run_applescript(DRIVES_SCRIPT, vm, what=what, osascript=osascript)
    return parse_drives(out)


def attached_isos(vm: str, *, osascript: str | Path = OSASCRIPT) -> list[Drive]:
    """`vm`'s removable drives (each counts as an attached ISO); empty once they are removed."""
    return [d for d in drives(vm, osascript=osascript) if d.holds_image]


def osascript_shown(script: str, *args: str, osascript: str | Path = OSASCRIPT) -> str:
    """How an AppleScript run shows in a plan: `osascript - ARG... <<'APPLESCRIPT'` + script."""
    return applescript_command(script, *args, osascript=osascript).render()


def remove_iso(
    vm: str, *, utmctl: str | Path = DEFAULT_UTMCTL, osascript: str | Path = OSASCRIPT
) -> int:
    """Drop the VM's removable (ISO) drives so it boots from disk; returns how many went.

    UTM updates a configuration only when the VM is stopped (§3), and drives left out of the
    list are removed while the disk is sent back unchanged. 0 means already done.
    """
    now = status(vm, utmctl=utmctl)
    if now is not VmStatus.STOPPED:
        raise RunbookError(f"VM {vm!r} is {now}: stop it before removing the ISO (UTM requires it)")
    what = f"removing the ISO from {vm!r}"
    out = run_applescript(REMOVE_ISO_SCRIPT, vm, what=what, osascript=osascript)
    return int(out) if out.isdigit() else 0


MAC_ADDRESS_SCRIPT: Final = """on run argv
  tell application "UTM"
    set vm to virtual machine named (item 1 of argv)
    return address of item 1 of network interfaces of (configuration of vm)
  end tell
end run
"""


def mac_address(vm: str, *, osascript: str | Path = OSASCRIPT) -> str:
    """The MAC of the VM's first network interface (§3 "MAC"), e.g. `5A:94:EF:E4:0C:EE`."""
    what = f"reading the MAC of {vm!r}"
    out = run_applescript(MAC_ADDRESS_SCRIPT, vm, what=what, osascript=osascript)
    if not _MAC_RE.match(out):
        raise CommandError(
            host="localhost", command="osascript -", exit_code=0, reason=f"gave no MAC: {out!r}"
        )
    return out.upper()


SERIAL_PORT_SCRIPT: Final = """on run argv
  tell application "UTM"
    set vm to virtual machine named (item 1 of argv)
    return (interface of first serial port of vm as text) & " " & (address of first serial port of vm as text) & " " & (port of first serial port of vm as text)
  end tell
end run
"""


def serial_tcp_endpoint(vm: str, *, osascript: str | Path = OSASCRIPT) -> tuple[str, int] | None:
    """(address, port) of a running VM's TCP serial console, or None when unavailable (§3)."""
    what = f"reading the serial port of {vm!r}"
    out = run_applescript(SERIAL_PORT_SCRIPT, vm, what=what, osascript=osascript)
    parts = out.split()
    if len(parts) == 3 and parts[0] == "tcp" and parts[2].isdigit():
        return parts[1], int(parts[2])
    return None


UTM_VERSION_SCRIPT: Final = (
    'tell application "System Events" to return version of application "UTM"\n'
)


def utm_version(*, osascript: str | Path = OSASCRIPT) -> tuple[int, ...]:
    """UTM's version as a tuple (utm-peers.md §1: System Events `version of application`)."""
    out = run_applescript(UTM_VERSION_SCRIPT, what="reading UTM's version", osascript=osascript)
    return tuple(int(p) for p in re.findall(r"\d+", out)[:3])


# The Input Automation Suite came in UTM 4.7.2 (commit 311654dc), but 4.7.2's Scripting/UTM.sdef
# gave the application's `UTM version` the code `UTMv`, the code of the class `virtual machine`,
# which broke scripts that name a VM (UTM #7360; fixed in 03db3f8c, first released in v4.7.3).
INPUT_AUTOMATION_MIN: Final = (4, 7, 3)
_INPUT_SUITE: Final = ("input scan code of ", "input keystroke of ", "input mouse click of ")


def shown_version(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version)) or "unknown"


def supports_input_automation(version: tuple[int, ...]) -> bool:
    """UTM's `input scan code`/`input keystroke` work from 4.7.3 (see INPUT_AUTOMATION_MIN)."""
    return version >= INPUT_AUTOMATION_MIN


def input_automation_refusal(version: tuple[int, ...]) -> str | None:
    """Why the utm-input console backend cannot run on UTM `version`, or None when it can."""
    if supports_input_automation(version):
        return None
    return (
        f"console.backend utm-input needs UTM >= {shown_version(INPUT_AUTOMATION_MIN)}, this "
        f"Mac has UTM {shown_version(version)} (4.7.2's scripting dictionary gave `UTM version` "
        "the code of the class `virtual machine`, UTM #7360; older ones have no `input scan "
        "code`): update UTM, or set console.backend: hammerspoon"
    )


def require_input_automation(*, osascript: str | Path = OSASCRIPT) -> tuple[int, ...]:
    """UTM's version, read now; RunbookError when it is too old for the utm-input backend."""
    version = utm_version(osascript=osascript)
    refusal = input_automation_refusal(version)
    if refusal is not None:
        raise RunbookError(refusal)
    return version


def uses_input_automation(script: str) -> bool:
    """Whether `script` sends a command of UTM's Input Automation Suite (Scripting/UTM.sdef)."""
    return any(command in script for command in _INPUT_SUITE)
