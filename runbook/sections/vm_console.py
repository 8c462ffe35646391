"""How sections 01, 02, 03 and 90 reach UTM and a VM's console on the Mac.

UTM is `utmctl` (params `utm.utmctl`) and `osascript` (params `utm.osascript`), and the console
is typed into with the params' backend (lesson 4, runbook.mac.console; Hammerspoon's CLI is params
`console.hs`). A console that answers (UTM's TCP serial port: `utmctl attach VM` prints `TCP:
127.0.0.1:PORT`, reference/utm-makefile-keys.md §2-§3) is also read back: prompts are waited
for, the address call-back works (lesson 8) and the console text is kept in the record. The
programs are values of `MacSide`, run at those paths: nothing here changes this process's
environment, and whatever plays the Mac is only a matter of those paths.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runbook.core.errors import RunbookError
from runbook.core.masking import mask
from runbook.core.params import VM
from runbook.core.secrets import Secret
from runbook.engine.steps import Context
from runbook.mac import utm
from runbook.mac.console.backends import (
    ConsoleBackend,
    SerialBackend,
    SerialConsole,
    clean_console_text,
    make_backend,
)
from runbook.mac.discover import (
    METHODS,
    SEARCH_TIMEOUT,
    TYPED_METHODS,
    Resolution,
    SweepResult,
    Target,
    interface_address,
    recv_line,
    resolve_address,
    serial_callback,
    sweep_hosts,
    tcp_callback,
    tcp_sweep,
)
from runbook.transport.commands import ConsoleTyping
from runbook.transport.hostkeys import KnownHosts, entry_name
from runbook.transport.remote import tcp_probe

logger: Final = logging.getLogger(__name__)

# What each backend is, for the plan (lesson 4).
BACKEND_LABEL: Final = {
    "utm-input": "UTM `input scan code` through osascript",
    "hammerspoon": "Hammerspoon raw key events (`hs -c`)",
    "quartz": "pyobjc Quartz key events to UTM",
    "serial": "UTM's TCP serial port",
}
# Without a console to read back, pauses between typed lines let each program start reading.
BLIND_PAUSE: Final = 1.5
PROMPT_TIMEOUT: Final = 20.0
BANNER_TIMEOUT: Final = 5.0


# --- the Mac side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacSide:
    """The Mac's programs and network, as the params give them: `utm.utmctl`,
    `utm.osascript`, `console.hs` (None: the `hs` on PATH), the bridged interface
    (`utm.host_interface`) and `utm.bridged_subnet` when the LAN to sweep is not that
    interface's. A value: every program runs at its path, nothing changes `os.environ`."""

    utmctl: str
    osascript: str = str(utm.OSASCRIPT)
    hs: str | None = None
    host_interface: str = "en0"
    bridged_subnet: ipaddress.IPv4Network | None = None

    @property
    def where(self) -> str:
        return f"UTM ({self.utmctl})"


def mac_side(ctx: Context) -> MacSide:
    """The Mac side of this deployment, read from its params only."""
    dep = ctx.dep
    return MacSide(
        utmctl=str(dep.utm.utmctl),
        osascript=str(dep.utm.osascript),
        hs=str(dep.console.hs) if dep.console.hs is not None else None,
        host_interface=dep.utm.host_interface,
        bridged_subnet=dep.utm.bridged_subnet,
    )


# --- a VM's console -----------------------------------------------------------------------------


@dataclass
class VmConsole:
    """Typing into a VM's console, and reading it back when it is a serial console."""

    vm: VM
    backend: ConsoleBackend
    reader: SerialBackend | None

    @property
    def label(self) -> str:
        read = f", read back on {self.reader.host}:{self.reader.port}" if self.reader else ""
        return f"{self.vm.name}'s console ({self.backend.name}{read})"

    def type_line(self, text: str) -> None:
        """Type `text` and Enter with the backend (no read-back)."""
        self.backend.type_text(self.vm.name, text + "\n")

    def close(self) -> None:
        """Leave the serial console (one client at a time, like QEMU's): the next is served."""
        if self.reader is not None:
            self.reader.close()


def serial_endpoint(ctx: Context, mac: MacSide, vm: VM) -> tuple[str, int] | None:
    """The VM's TCP serial console as UTM has it: `utmctl attach`, else its configuration's
    first serial port (AppleScript), else params `console.serial_port` + the VM's index."""
    try:
        found = utm.attach(vm.name, utmctl=mac.utmctl)
        if found.kind == "tcp" and found.host and found.port:
            return found.host, found.port
    except RunbookError as exc:
        logger.debug("utmctl attach %s: %s", vm.name, exc)
    try:
        configured = utm.serial_tcp_endpoint(vm.name, osascript=mac.osascript)
        if configured is not None:
            return configured
    except RunbookError as exc:
        logger.debug("serial port of %s in UTM's configuration: %s", vm.name, exc)
    if ctx.dep.console.serial_port is not None:
        return "127.0.0.1", ctx.dep.console.serial_port + ctx.dep.vms.index(vm)
    return None


def open_console(ctx: Context, mac: MacSide, vm: VM) -> VmConsole:
    endpoint = serial_endpoint(ctx, mac, vm)
    reader = SerialBackend(endpoint[0], endpoint[1]) if endpoint else None
    name = ctx.dep.console.backend
    if name == "serial":
        if reader is None:
            raise RunbookError(f"{vm.name} has no TCP serial console (utmctl attach)")
        return VmConsole(vm, reader, reader)
    return VmConsole(vm, make_backend(name, hs=mac.hs, osascript=mac.osascript), reader)


class LazyConsole:
    """The Mac side and one VM's console, opened on first use (a plan never opens them)."""

    def __init__(self, ctx: Context, vm: VM) -> None:
        self._ctx, self._vm = ctx, vm
        self._opened: tuple[MacSide, VmConsole] | None = None

    def __call__(self) -> tuple[MacSide, VmConsole]:
        if self._opened is None:
            mac = mac_side(self._ctx)
            self._opened = mac, open_console(self._ctx, mac, self._vm)
        return self._opened

    def close(self) -> None:
        """Leave the console's one connection (a later use connects again)."""
        if self._opened is not None:
            self._opened[1].close()


def typing(ctx: Context, vm: VM, text: str | Secret, wait_for: str | None = None) -> ConsoleTyping:
    """`text` typed on `vm`'s console with the params' backend, shown in a plan as it is sent
    (secrets as *****): for utm-input UTM's readable `input keystroke` form (the codes sent
    would spell the password), else `[console] LINE ⏎`."""
    name = ctx.dep.console.backend

    def shown(line: str | Secret) -> str:
        if name == "utm-input":
            from runbook.sections.common import keystroke

            return f"{keystroke(vm, line)}   # sent as `input scan code`"
        return f"[{vm.name} console, {BACKEND_LABEL[name]}] {line} ⏎"

    return ConsoleTyping(vm.name, text, wait_for, shown)


def plan_typing(ctx: Context, vm: VM, lines: list[str]) -> list[ConsoleTyping]:
    return [typing(ctx, vm, line) for line in lines]


def type_value(
    con: VmConsole,
    watch: SerialConsole | None,
    line: ConsoleTyping,
    timeout: float = PROMPT_TIMEOUT,
) -> str:
    """Type one planned line (`typing`) and wait as it says."""
    return type_line(con, watch, line.text, line.wait_for, timeout)


@contextmanager
def watching(con: VmConsole) -> Iterator[SerialConsole | None]:
    """The serial console's one connection, read while typing (None without a serial
    console). It is the same connection the serial backend types on and the address
    call-back reads (SerialBackend.session): QEMU serves one client at a time."""
    if con.reader is None:
        yield None
        return
    watch = con.reader.session()
    watch.drain(0.2)
    try:
        yield watch
        watch.drain(0.2)
    finally:
        con.reader.last_transcript = watch.transcript


def type_line(
    con: VmConsole,
    watch: SerialConsole | None,
    text: str | Secret,
    wait_for: str | None = None,
    timeout: float = PROMPT_TIMEOUT,
) -> str:
    """Type `text` + Enter; with a reader, return the console text up to `wait_for`."""
    line = Secret(text.reveal() + "\n", "console line") if isinstance(text, Secret) else text + "\n"
    con.backend.type_text(con.vm.name, line)
    if watch is None or wait_for is None:
        time.sleep(BLIND_PAUSE)
        return ""
    return watch.read_until(wait_for, timeout).group(0)


def marked(ctx: Context, vm: VM, command: str, tag: str) -> ConsoleTyping:
    """`command` typed between markers: `echo TAG-BEGIN; command; echo TAG-END=$?`. The
    markers are split with '' so the echoed command line never matches (as discover.py does)."""
    begin, end = f"RUNBOOK-{tag}-BEGIN", f"RUNBOOK-{tag}-END"
    typed = f"echo {_split(begin)}; {command}; echo {_split(end)}=$?"
    return typing(ctx, vm, typed, rf"{re.escape(end)}=\d+")


def run_marked(
    con: VmConsole, watch: SerialConsole | None, line: ConsoleTyping, tag: str
) -> str | None:
    """Type the `marked(..., tag)` line; the text from its begin marker on, or None without a
    reader."""
    begin = f"RUNBOOK-{tag}-BEGIN"
    if watch is None:
        type_line(con, None, line.text)
        return None
    type_value(con, watch, line)
    text = clean_console_text(watch.transcript)
    return text[text.rfind(begin) :] if begin in text else text


def _split(word: str) -> str:
    return word[:-3] + "''" + word[-3:]


def exit_status(marked: str, tag: str) -> int | None:
    found = re.search(rf"RUNBOOK-{tag}-END=(\d+)", marked)
    return int(found[1]) if found else None


def save_screen(ctx: Context, con: VmConsole, label: str) -> Path | None:
    """The console's picture in the record (lesson 4): text over serial, masked, 0600.

    The picture is evidence, never a result: it is taken in a `finally` after typing, so any
    failure here (no Screen Recording permission, a Lua error, a full disk) is logged as a
    warning and the step goes on; raising would fail a step whose typing worked, or hide the
    error that typing raised."""
    if ctx.record_dir is None:
        return None
    try:
        path = ctx.record_dir / "console" / f"{con.vm.name}-{label}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if con.reader is not None and con.reader.last_transcript:
            return con.reader.screenshot(con.vm.name, path)
        if con.backend.name == "hammerspoon":
            return con.backend.screenshot(con.vm.name, path.with_suffix(".png"))
    except Exception as exc:  # noqa: BLE001 - a picture must never fail the step
        logger.warning(
            "no console picture of %s (%s) in the record: %s",
            con.vm.name,
            label,
            mask(f"{type(exc).__name__}: {exc}"),
        )
    return None


# --- addresses (lesson 8) -----------------------------------------------------------------------


def resolve(
    mac: MacSide,
    vm: VM,
    con: VmConsole | None,
    *,
    sshd_may_be_down: bool = False,
    typing: bool = True,
    methods: tuple[str, ...] = METHODS,
    timeout: float = SEARCH_TIMEOUT,
) -> Resolution:
    """The VM's address now (lesson 8): mDNS, `utmctl ip-address` (params' utmctl), ARP by
    the MAC (params', else UTM's configuration) after a sweep of the bridged subnet's SSH
    port, the console: read back over serial, or a typed call-back to a one-shot listener on
    the Mac's bridged address (any backend), then the params' address. Each answer must
    accept a connection on the SSH port; with `sshd_may_be_down` (lesson 3) what the VM
    itself says on its console or call-back is taken as is. Without `typing` nothing is typed
    on the console (a check, or a VM just rebooted to a login prompt)."""
    bridged = interface_address(mac.host_interface)
    network = mac.bridged_subnet or (bridged.network if bridged is not None else None)
    if bridged is None:
        logger.info(
            "%s: no IPv4 address on %s (params utm.host_interface)", vm.name, mac.host_interface
        )
    own = bridged.ip if bridged is not None else None
    sweep = None
    if network is not None:
        hosts, swept = sweep_hosts(network, own), str(network)

        def sweep(seconds: float) -> SweepResult:
            return tcp_sweep(hosts, vm.port, timeout=seconds, network=swept)

    reader = serial_callback(con.reader, vm.name) if typing and con and con.reader else None
    caller = None
    if typing and con is not None and own is not None:
        listen, typist = str(own), con.type_line
        caller = lambda seconds: tcp_callback(listen, typist, seconds)
    return resolve_address(
        Target.from_params(vm),
        methods=methods,
        console=reader,
        callback=caller,
        probe=tcp_probe(vm.port),
        unprobed=TYPED_METHODS if sshd_may_be_down else (),
        mac_lookup=(
            functools.partial(utm.mac_address, osascript=mac.osascript)
            if utm.can_run(mac.osascript)
            else None
        ),
        sweep=sweep,
        utmctl=mac.utmctl,
        timeout=timeout,
    )


# --- sshd (lesson 3) ----------------------------------------------------------------------------


def sshd_banner(address: str, port: int = 22) -> str | None:
    """sshd's `SSH-2.0-...` banner, or None: refused, or closed before the banner (the client
    then says `kex_exchange_identification: Connection closed by remote host`, lesson 3)."""
    try:
        with socket.create_connection((address, port), timeout=BANNER_TIMEOUT) as sock:
            sock.settimeout(BANNER_TIMEOUT)
            data = recv_line(sock, 512)
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    return line if line.startswith("SSH-") else None


def key_fingerprint(b64: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob (base64 as in a .pub file)."""
    digest = hashlib.sha256(base64.b64decode(b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_keys(text: str) -> list[tuple[str, str]]:
    """(type, base64) of each `ssh-xxx AAAA... comment` line printed on the console."""
    found = re.findall(r"\b((?:ssh|ecdsa-sha2)-[a-z0-9-]+) (AAAA[A-Za-z0-9+/=]+)", text)
    return list(dict.fromkeys(found))


def pin_host_keys(known_hosts: Path, address: str, port: int, keys: list[tuple[str, str]]) -> None:
    """known_hosts for address:port = exactly `keys` (read on the console, a trusted channel)."""
    KnownHosts(known_hosts).pin(entry_name(address, port), keys)
