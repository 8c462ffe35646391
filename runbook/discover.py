"""Find a VM's current address on every run (handbook lesson 8: bridged DHCP changes it).

Methods, tried in order until one answers (reference/utm-makefile-keys.md §7):
1. `mdns`: `<host>.local` through the system resolver (`socket.getaddrinfo`; macOS resolves
   `.local` natively), then `dns-sd -G v4` (macOS) or `avahi-resolve -4 -n` (Linux) when present.
2. `utmctl`: `utmctl ip-address VM` (needs the QEMU guest agent; the live ISO has none, §7.1).
3. `arp`: the neighbour table by the VM's MAC, `arp -an` (macOS) or `ip neigh` (Linux), MACs
   compared with leading zeros stripped per octet as UTM does (§7.3). An entry exists only
   after traffic, and an old entry may outlive a reboot: with a `probe`, every candidate is
   checked and the first that answers wins.
4. `console`: a call-back on the VM's console — the VM prints its addresses (`CALLBACK_COMMAND`)
   and the text is parsed.
5. `given`: the params' address when it is an IP literal, as a last resort, with a warning.

Nothing is cached: each call asks again and says which method found the address.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from runbook import local, utm
from runbook.errors import CommandError, CommandTimeoutError, RunbookError

logger: Final = logging.getLogger(__name__)

Resolver = Callable[..., Sequence[Any]]  # socket.getaddrinfo's shape
Probe = Callable[[str], bool]
ConsoleReader = Callable[[str], str]  # given the call-back command, the console's answer

MDNS_TIMEOUT: Final = 3.0
NEIGHBOUR_TIMEOUT: Final = 5.0
METHODS: Final = ("mdns", "utmctl", "arp", "console", "given")
# Prints one `inet A.B.C.D/N ...` line per global IPv4 address; iproute2 is on every NixOS.
# Marker words are split with '' so the echoed command line never matches its own output.
CALLBACK_BEGIN: Final = "RUNBOOK-ADDR-BEGIN"
CALLBACK_END: Final = "RUNBOOK-ADDR-END"
CALLBACK_COMMAND: Final = (
    "echo RUNBOOK-ADDR-''BEGIN; ip -4 -o addr show scope global; echo RUNBOOK-ADDR-''END"
)


class AddressNotFoundError(RunbookError):
    """No method found the VM's address; the message lists what each one said."""


@dataclass(frozen=True)
class Target:
    """What we know about a VM: its mDNS name or IP (params `address`), UTM name, MAC."""

    address: str
    vm: str | None = None
    mac: str | None = None

    @classmethod
    def from_params(cls, vm: _VmParams) -> Target:
        """From a params `vms:` entry (name, address, mac)."""
        return cls(address=vm.address, vm=vm.name, mac=vm.mac)


class _VmParams(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def mac(self) -> str | None: ...


@dataclass(frozen=True)
class Resolution:
    """The address found now, which method found it, and what every method tried said."""

    address: str
    method: str
    detail: str
    tried: tuple[str, ...] = field(default=())


# --- parsers (pure) ----------------------------------------------------------------------------


def normalize_mac(mac: str) -> str:
    """Lowercase, leading zeros stripped per octet: `5A:94:EF:E4:0C:EE` -> `5a:94:ef:e4:c:ee`."""
    octets = mac.strip().lower().replace("-", ":").split(":")
    return ":".join(o.lstrip("0") or "0" for o in octets)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Neighbour:
    address: str
    mac: str  # normalised
    interface: str


# macOS: `? (192.168.64.13) at 5a:94:ef:e4:c:ee on bridge100 ifscope [bridge]`
# net-tools on Linux: `? (192.168.1.1) at 00:11:22:33:44:55 [ether] on eth0`
_ARP_RE: Final = re.compile(
    r"\((?P<ip>[0-9a-fA-F.:]+)\) at (?P<mac>[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){5})"
    r"(?: \[\w+\])? on (?P<if>\S+)"
)
# iproute2: `192.168.1.1 dev eth0 lladdr 00:11:22:33:44:55 REACHABLE`
_NEIGH_RE: Final = re.compile(
    r"^(?P<ip>[0-9a-fA-F.:]+) dev (?P<if>\S+) lladdr (?P<mac>[0-9a-fA-F:]+)(?P<rest>.*)$"
)


def parse_arp_an(text: str) -> list[Neighbour]:
    """Entries of `arp -an` (macOS or Linux net-tools); `(incomplete)` rows are skipped."""
    found = []
    for line in text.splitlines():
        m = _ARP_RE.search(line)
        if m:
            found.append(Neighbour(m["ip"], normalize_mac(m["mac"]), m["if"]))
    return found


def parse_ip_neigh(text: str) -> list[Neighbour]:
    """Entries of `ip neigh`; FAILED/INCOMPLETE rows (no lladdr) are skipped."""
    found = []
    for line in text.splitlines():
        m = _NEIGH_RE.match(line.strip())
        if m and "FAILED" not in m["rest"]:
            found.append(Neighbour(m["ip"], normalize_mac(m["mac"]), m["if"]))
    return found


def addresses_for_mac(neighbours: Sequence[Neighbour], mac: str) -> list[str]:
    """IPv4 addresses (first) then IPv6 whose MAC equals `mac`, in table order."""
    want = normalize_mac(mac)
    hits = [n.address for n in neighbours if n.mac == want]
    return sorted(dict.fromkeys(hits), key=lambda a: ":" in a)


def parse_dns_sd_v4(text: str, host: str) -> list[str]:
    """Addresses from `dns-sd -G v4 HOST` rows such as
    ` 1:02:03.789  Add  2  4  nixos-utm-cache.local.  192.168.64.13  120`."""
    want = host.rstrip(".").lower()
    found = []
    for line in text.splitlines():
        words = line.split()
        if "Add" not in words:
            continue
        names = [w for w in words if w.rstrip(".").lower() == want]
        ips = [w for w in words if is_ip(w) and ":" not in w]
        if names and ips:
            found.append(ips[0])
    return list(dict.fromkeys(found))


def parse_avahi_resolve(text: str, host: str) -> list[str]:
    """Addresses from `avahi-resolve -4 -n HOST`: `HOST<TAB>ADDRESS` lines."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        named = len(parts) == 2 and parts[0].rstrip(".").lower() == host.rstrip(".").lower()
        if named and is_ip(parts[1]):
            found.append(parts[1])
    return found


_INET_RE: Final = re.compile(r"\binet (?:addr:)?(\d{1,3}(?:\.\d{1,3}){3})")


def parse_console_addresses(text: str) -> list[str]:
    """IPv4 addresses a VM printed on its console (`ip -o addr`, `ip a`, `ifconfig` forms).

    When the call-back markers are present only the text between them counts; loopback and
    link-local addresses are dropped.
    """
    begin, end = text.rfind(CALLBACK_BEGIN), text.rfind(CALLBACK_END)
    if begin != -1 and end > begin:
        text = text[begin:end]
    found = []
    for ip in _INET_RE.findall(text):
        addr = ipaddress.ip_address(ip)
        if not (addr.is_loopback or addr.is_link_local or addr.is_unspecified):
            found.append(ip)
    return list(dict.fromkeys(found))


# --- methods -----------------------------------------------------------------------------------


def via_getaddrinfo(host: str, resolver: Resolver = socket.getaddrinfo) -> list[str]:
    """IPv4 addresses of `host` from the system resolver (mDNS `.local` on macOS)."""
    try:
        infos = resolver(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        logger.debug("getaddrinfo(%s): %s", host, exc)
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _run_streaming(argv: list[str], timeout: float) -> str:
    """Output of a command that may never exit on its own (dns-sd browses forever)."""
    lines: list[str] = []
    try:
        result = local.run(
            argv, check=False, timeout=timeout, on_line=lambda _s, line: lines.append(line)
        )
    except CommandTimeoutError:
        return "\n".join(lines)
    except CommandError as exc:  # not installed
        logger.debug("%s", exc)
        return ""
    return result.stdout


def via_mdns_tools(host: str, timeout: float = MDNS_TIMEOUT) -> list[str]:
    """`dns-sd -G v4 HOST` (macOS) or `avahi-resolve -4 -n HOST` (Linux), when installed."""
    if local.which("dns-sd"):
        return parse_dns_sd_v4(_run_streaming(["dns-sd", "-G", "v4", host], timeout), host)
    if local.which("avahi-resolve"):
        text = _run_streaming(["avahi-resolve", "-4", "-n", host], timeout)
        return parse_avahi_resolve(text, host)
    return []


def neighbour_table() -> list[Neighbour]:
    """This machine's ARP/neighbour table: `arp -an` on macOS, `ip neigh` on Linux."""
    if sys.platform == "darwin" or not local.which("ip"):
        out = local.run(["arp", "-an"], check=False, timeout=NEIGHBOUR_TIMEOUT).stdout
        return parse_arp_an(out)
    out = local.run(["ip", "neigh", "show"], check=False, timeout=NEIGHBOUR_TIMEOUT).stdout
    return parse_ip_neigh(out)


def _first_alive(candidates: Sequence[str], probe: Probe | None) -> tuple[str | None, str]:
    if not candidates:
        return None, "no answer"
    if probe is None:
        return candidates[0], f"candidates {', '.join(candidates)}"
    for address in candidates:
        if probe(address):
            return address, f"answered the probe (of {', '.join(candidates)})"
    return None, f"{', '.join(candidates)} did not answer the probe"


def tcp_probe(port: int = 22, timeout: float = 2.0) -> Probe:
    """A probe that says whether ADDRESS:port accepts a TCP connection (sshd is up)."""

    def probe(address: str) -> bool:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return True
        except OSError:
            return False

    return probe


# --- the resolver ------------------------------------------------------------------------------


@dataclass
class _Attempts:
    notes: list[str] = field(default_factory=list)

    def add(self, method: str, note: str) -> None:
        self.notes.append(f"{method}: {note}")
        logger.debug("discover %s: %s", method, note)


def _candidates(
    method: str,
    target: Target,
    resolver: Resolver,
    console: ConsoleReader | None,
    neighbours: Callable[[], list[Neighbour]],
    utmctl: str | Path,
) -> list[str] | None:
    """Addresses one method offers, or None when it does not apply to this target."""
    if method == "mdns":
        if is_ip(target.address):
            return None
        found = via_getaddrinfo(target.address, resolver)
        return found or via_mdns_tools(target.address)
    if method == "utmctl":
        if not target.vm or not utm.runs_here():
            return None
        return [a for a in utm.ip_addresses(target.vm, utmctl=utmctl) if ":" not in a]
    if method == "arp":
        return None if not target.mac else addresses_for_mac(neighbours(), target.mac)
    if method == "console":
        return None if console is None else parse_console_addresses(console(CALLBACK_COMMAND))
    if method == "given":
        return [target.address] if is_ip(target.address) else None
    raise ValueError(f"unknown discovery method {method!r}")


def resolve_address(
    target: Target,
    *,
    methods: Sequence[str] = METHODS,
    resolver: Resolver = socket.getaddrinfo,
    console: ConsoleReader | None = None,
    probe: Probe | None = None,
    neighbours: Callable[[], list[Neighbour]] = neighbour_table,
    utmctl: str | Path = utm.DEFAULT_UTMCTL,
) -> Resolution:
    """The VM's address right now, and which method found it (lesson 8). Never cached.

    `console(command) -> text` types `command` on the VM console and returns what it printed
    (e.g. `SerialBackend.run`); `probe(address) -> bool` (e.g. `tcp_probe(22)`) rejects
    stale candidates. Raises AddressNotFoundError listing what each method said.
    """
    attempts = _Attempts()
    for method in methods:
        try:
            candidates = _candidates(method, target, resolver, console, neighbours, utmctl)
        except RunbookError as exc:
            attempts.add(method, f"failed: {exc}")
            continue
        if candidates is None:
            attempts.add(method, "not applicable")
            continue
        address, note = _first_alive(candidates, probe)
        attempts.add(method, note)
        if address is not None:
            if method == "given":
                logger.warning("using the configured address %s: it may be stale", address)
            logger.info("%s is at %s (found by %s)", target.vm or target.address, address, method)
            return Resolution(address, method, note, tuple(attempts.notes))
    raise AddressNotFoundError(
        f"no address for {target.vm or target.address}: " + "; ".join(attempts.notes)
    )


class _RunsCommands(Protocol):
    def run(self, vm: str, command: str, done: str, timeout: float = ...) -> str: ...


def serial_callback(console: _RunsCommands, vm: str, timeout: float = 20.0) -> ConsoleReader:
    """A `console=` reader for `resolve_address` from a console that answers (SerialBackend).

    SPICE-only consoles (utm-input, hammerspoon, quartz) cannot be read back: there the
    address comes from mDNS, ARP or utmctl.
    """
    return lambda command: console.run(vm, command, re.escape(CALLBACK_END) + r"\s", timeout)
