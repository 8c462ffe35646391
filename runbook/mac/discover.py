"""Find a VM's current address on every run (handbook lesson 8: bridged DHCP changes it).

Methods, tried in order until one answers (reference/utm-makefile-keys.md §7 and its
corrections: the live ISO runs no avahi and no guest agent, and ARP knows a VM only after
traffic to it):
1. `mdns`: `<host>.local` through the system resolver (`socket.getaddrinfo`; macOS resolves
   `.local` natively), then `dns-sd -G v4` (macOS) or `avahi-resolve -4 -n` (Linux) when present.
2. `utmctl`: `utmctl ip-address VM` (needs the QEMU guest agent; the live ISO has none, §7.1).
3. `arp`: the neighbour table by the VM's MAC (the params', else UTM's configuration), `arp
   -an` (macOS) or `ip neigh` (Linux), MACs compared with leading zeros stripped per octet as
   UTM does (§7.3). An entry exists only after traffic, so when the table has none that
   answers, the bridged subnet's SSH port is swept first (`tcp_sweep`: at most a /24, bounded
   concurrency and deadline) and the table read again. An old entry may outlive a reboot:
   every candidate is probed and the first that answers wins.
4. `console`: the VM prints its addresses on a console that is read back (`CALLBACK_COMMAND`
   over the serial port) and the text is parsed.
5. `callback`: a one-shot TCP listener on the Mac's bridged address; a command typed on the
   console (any backend: it needs no read-back) connects to it, and the connection's source
   address is the VM's (`tcp_callback`).
6. `given`: the params' address when it is an IP literal, as a last resort, with a warning.

Nothing is cached: each call asks again. Each method and its answer is logged, the whole
search has a deadline, and the error names every method tried and what it said.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import secrets
import selectors
import socket
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from runbook.core.errors import CommandError, CommandTimeoutError, RunbookError
from runbook.mac import utm
from runbook.transport import local

logger: Final = logging.getLogger(__name__)

Resolver = Callable[..., Sequence[Any]]  # socket.getaddrinfo's shape
Probe = Callable[[str], bool]
ConsoleReader = Callable[[str], str]  # given the call-back command, the console's answer
MacLookup = Callable[[str], str]  # the VM's name -> its MAC (utm.mac_address)
Sweeper = Callable[[float], "SweepResult"]  # fills the ARP table within the given seconds
Caller = Callable[[float], list[str]]  # the call-back: the addresses that called, in seconds

MDNS_TIMEOUT: Final = 3.0
NEIGHBOUR_TIMEOUT: Final = 5.0
IFCONFIG_TIMEOUT: Final = 5.0
SEARCH_TIMEOUT: Final = 90.0  # the whole search, every method together
SWEEP_TIMEOUT: Final = 8.0
SWEEP_CONCURRENCY: Final = 64
SWEEP_CONNECT_TIMEOUT: Final = 1.0  # an address on the LAN answers ARP in milliseconds
SWEEP_MAX_PREFIX: Final = 24  # never sweep more than one /24 (254 addresses)
CALLBACK_TIMEOUT: Final = 20.0
CALLBACK_CONNECT_TIMEOUT: Final = 5  # the typed command gives up after this (coreutils timeout)
METHODS: Final = ("mdns", "utmctl", "arp", "console", "callback", "given")
TYPED_METHODS: Final = ("console", "callback")  # these type on the VM's console
# Prints one `inet A.B.C.D/N ...` line per global IPv4 address; iproute2 is on every NixOS.
# Marker words are split with '' so the echoed command line never matches its own output.
CALLBACK_BEGIN: Final = "RUNBOOK-ADDR-BEGIN"
CALLBACK_END: Final = "RUNBOOK-ADDR-END"
CALLBACK_COMMAND: Final = (
    "echo RUNBOOK-ADDR-''BEGIN; ip -4 -o addr show scope global; echo RUNBOOK-ADDR-''END"
)
HELLO_PREFIX: Final = "RUNBOOK-HELLO-"


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


# macOS `ifconfig en0`: `\tinet 192.168.1.23 netmask 0xffffff00 broadcast 192.168.1.255`
_IFCONFIG_RE: Final = re.compile(r"\binet (\d{1,3}(?:\.\d{1,3}){3}) netmask (0x[0-9a-fA-F]{8})")
# iproute2 `ip -4 -o addr show dev IF`: `5: br0    inet 10.0.0.1/24 brd ... scope global br0`
_IP_ADDR_RE: Final = re.compile(r"\binet (\d{1,3}(?:\.\d{1,3}){3}/\d{1,2})\b")


def parse_ifconfig(text: str) -> ipaddress.IPv4Interface | None:
    """The first IPv4 address and netmask of macOS `ifconfig IF` output."""
    m = _IFCONFIG_RE.search(text)
    if not m:
        return None
    prefix = int(m[2], 16).bit_count()
    return ipaddress.IPv4Interface(f"{m[1]}/{prefix}")


def parse_ip_addr(text: str) -> ipaddress.IPv4Interface | None:
    """The first IPv4 address/prefix of `ip -4 -o addr show dev IF` output."""
    m = _IP_ADDR_RE.search(text)
    return ipaddress.IPv4Interface(m[1]) if m else None


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


def interface_address(name: str) -> ipaddress.IPv4Interface | None:
    """The IPv4 address and prefix of this machine's interface `name` (the Mac's bridged
    interface, params `utm.host_interface`): `ifconfig NAME` on macOS, `ip -4 -o addr show
    dev NAME` elsewhere. None when there is no such interface or it has no IPv4 address."""
    darwin = sys.platform == "darwin"
    argv = ["ifconfig", name] if darwin else ["ip", "-4", "-o", "addr", "show", "dev", name]
    try:
        result = local.run(argv, check=False, timeout=IFCONFIG_TIMEOUT)
    except CommandError as exc:  # no ifconfig/ip here
        logger.debug("%s", exc)
        return None
    if result.exit_code != 0:
        return None
    return parse_ifconfig(result.stdout) if darwin else parse_ip_addr(result.stdout)


def _first_alive(candidates: Sequence[str], probe: Probe | None) -> tuple[str | None, str]:
    if not candidates:
        return None, "no answer"
    if probe is None:
        return candidates[0], f"candidates {', '.join(candidates)}"
    for address in candidates:
        if probe(address):
            return address, f"{address} answered the probe (of {', '.join(candidates)})"
    return None, f"{', '.join(candidates)} did not answer the probe"


# --- filling the ARP table: a bounded sweep of the bridged subnet ------------------------------


@dataclass(frozen=True)
class SweepResult:
    network: str
    port: int
    tried: int
    answered: tuple[str, ...]
    seconds: float

    @property
    def note(self) -> str:
        shown = ", ".join(self.answered[:6]) + (" ..." if len(self.answered) > 6 else "")
        return (
            f"swept {self.tried} addresses of {self.network} on port {self.port} in "
            f"{self.seconds:.1f}s: {len(self.answered)} answered{f' ({shown})' if shown else ''}"
        )


def sweep_hosts(
    network: ipaddress.IPv4Network, own: ipaddress.IPv4Address | None = None
) -> list[str]:
    """The addresses a sweep of `network` tries: never more than one /24 (a wider network is
    narrowed to the /24 holding this machine's own address), never this machine itself."""
    if network.prefixlen < SWEEP_MAX_PREFIX:
        inside = own if own is not None and own in network else network.network_address
        network = ipaddress.IPv4Network(f"{inside}/{SWEEP_MAX_PREFIX}", strict=False)
    return [str(h) for h in network.hosts() if h != own]


def tcp_sweep(
    hosts: Sequence[str],
    port: int = 22,
    *,
    timeout: float = SWEEP_TIMEOUT,
    concurrency: int = SWEEP_CONCURRENCY,
    connect_timeout: float = SWEEP_CONNECT_TIMEOUT,
    network: str = "",
) -> SweepResult:
    """Open a TCP connection to `port` on each of `hosts` (at most `concurrency` at once, each
    given up after `connect_timeout`, all of it within `timeout`) and close it again. Each
    attempt makes this machine ask ARP for the address, so afterwards the neighbour table knows
    every host that is up; the hosts that accepted are returned too."""
    start = time.monotonic()
    end = start + timeout
    pending = list(hosts)
    answered: list[str] = []
    tried = 0
    waiting: dict[int, tuple[socket.socket, str, float]] = {}  # fd -> (socket, host, started)
    sel = selectors.DefaultSelector()

    def forget(fd: int) -> None:
        sock = waiting.pop(fd)[0]
        sel.unregister(sock)
        sock.close()

    try:
        while (pending or waiting) and time.monotonic() < end:
            while pending and len(waiting) < concurrency:
                host = pending.pop(0)
                tried += 1
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                code = sock.connect_ex((host, port))
                if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                    waiting[sock.fileno()] = (sock, host, time.monotonic())
                    sel.register(sock, selectors.EVENT_WRITE)
                    continue
                if code == 0:
                    answered.append(host)
                sock.close()
            for key, _ in sel.select(timeout=0.05):
                sock, host, _started = waiting[key.fd]
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    answered.append(host)
                forget(key.fd)
            now = time.monotonic()
            for fd in [fd for fd, (_s, _h, t) in waiting.items() if now - t > connect_timeout]:
                forget(fd)
    finally:
        for fd in list(waiting):
            forget(fd)
        sel.close()
    return SweepResult(
        network or f"{len(hosts)} hosts", port, tried, tuple(answered), time.monotonic() - start
    )


# --- the call-back: the VM connects to a one-shot listener on the Mac ---------------------------


def callback_command(address: str, port: int | str, token: str) -> str:
    """What is typed on the VM's console so that it connects to `address:port` and says
    `token` (a nonce, never a secret). bash's `/dev/tcp` redirection: nixpkgs builds bash
    without `--disable-net-redirections` (`pkgs/shells/bash/5.nix`), the NixOS ISO's console
    autologs into bash (`services.getty.autologinUser = "nixos"`,
    `nixos/modules/profiles/installation-device.nix`), and `bash -c` runs it from fish too;
    coreutils `timeout` keeps a blocked connect from holding the console."""
    target = f"/dev/tcp/{address}/{port}"
    return f"timeout {CALLBACK_CONNECT_TIMEOUT} bash -c 'echo {HELLO_PREFIX}{token} >{target}'"


def recv_line(sock: socket.socket, limit: int) -> bytes:
    """What `sock` sends up to its first newline (or `limit` bytes, or its close); the socket's
    own timeout bounds each read (OSError, TimeoutError included, reaches the caller)."""
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = sock.recv(256)
        if not chunk:
            break
        data += chunk
    return data


def tcp_callback(
    listen_address: str, type_command: Callable[[str], None], timeout: float = CALLBACK_TIMEOUT
) -> list[str]:
    """Listen once on `listen_address` (an ephemeral port), type the call-back command with
    `type_command`, and return the source address of the connection that says this call's
    token: the VM's address as the Mac's network sees it. Other connections are ignored;
    [] when none came within `timeout`."""
    ipaddress.IPv4Address(listen_address)  # only an address literal reaches the console
    token = secrets.token_hex(6)
    want = f"{HELLO_PREFIX}{token}".encode()
    end = time.monotonic() + timeout
    with socket.create_server((listen_address, 0), backlog=4) as server:
        port = int(server.getsockname()[1])
        type_command(callback_command(listen_address, port, token))
        while (left := end - time.monotonic()) > 0:
            server.settimeout(left)
            try:
                conn, peer = server.accept()
            except TimeoutError:
                break
            with conn:
                conn.settimeout(max(0.1, min(2.0, end - time.monotonic())))
                try:
                    data = recv_line(conn, 256)
                except OSError:
                    data = b""
            if want in data:
                return [str(peer[0])]
            logger.info("call-back on %s:%d: %s said something else", listen_address, port, peer)
    return []


# --- the resolver ------------------------------------------------------------------------------


@dataclass
class _Search:
    """One search: its deadline, and what each method said (logged as it goes)."""

    name: str
    deadline: float
    notes: list[str] = field(default_factory=list)

    def add(self, method: str, note: str) -> None:
        self.notes.append(f"{method}: {note}")
        logger.info("looking for %s: %s: %s", self.name, method, note)

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class _Means:
    """The lookups a search may use (injected by callers and tests)."""

    resolver: Resolver
    console: ConsoleReader | None
    callback: Caller | None
    neighbours: Callable[[], list[Neighbour]]
    mac_lookup: MacLookup | None
    sweep: Sweeper | None
    utmctl: str | Path


def _mac(target: Target, means: _Means) -> tuple[str | None, str]:
    """The VM's MAC: the params', else UTM's configuration of the VM (`utm.mac_address`)."""
    if target.mac:
        return target.mac, "MAC from the params"
    if means.mac_lookup is None or not target.vm:
        return None, "no MAC in the params and no UTM to ask"
    try:
        return means.mac_lookup(target.vm), "MAC from UTM's configuration"
    except RunbookError as exc:
        return None, f"no MAC in the params, and UTM's configuration gave none ({exc})"


def _arp(target: Target, means: _Means, probe: Probe | None, search: _Search) -> str | None:
    mac, whence = _mac(target, means)
    if mac is None:
        search.add("arp", f"not applicable: {whence}")
        return None
    address, note = _first_alive(addresses_for_mac(means.neighbours(), mac), probe)
    if address is not None or means.sweep is None:
        search.add("arp", f"{whence} {mac}: {note}")
        return address
    # ARP knows a VM only after traffic to it: fill the table, then read it again
    swept = means.sweep(max(0.5, min(SWEEP_TIMEOUT, search.left())))
    address, after = _first_alive(addresses_for_mac(means.neighbours(), mac), probe)
    search.add("arp", f"{whence} {mac}: {note}; {swept.note}; then {after}")
    return address


def _candidates(method: str, target: Target, means: _Means, search: _Search) -> list[str] | None:
    """Addresses one method offers, or None when it does not apply to this target."""
    if method == "mdns":
        if is_ip(target.address):
            return None
        found = via_getaddrinfo(target.address, means.resolver)
        return found or via_mdns_tools(target.address, min(MDNS_TIMEOUT, search.left()))
    if method == "utmctl":
        if not target.vm or not utm.can_run(means.utmctl):
            return None
        timeout = max(1.0, min(utm.IP_ADDRESS_TIMEOUT, search.left()))
        found = utm.ip_addresses(target.vm, utmctl=means.utmctl, timeout=timeout)
        return [a for a in found if ":" not in a]
    if method == "console":
        if means.console is None:
            return None
        return parse_console_addresses(means.console(CALLBACK_COMMAND))
    if method == "callback":
        if means.callback is None:
            return None
        return means.callback(max(1.0, min(CALLBACK_TIMEOUT, search.left())))
    if method == "given":
        return [target.address] if is_ip(target.address) else None
    raise ValueError(f"unknown discovery method {method!r}")


def resolve_address(
    target: Target,
    *,
    methods: Sequence[str] = METHODS,
    resolver: Resolver = socket.getaddrinfo,
    console: ConsoleReader | None = None,
    callback: Caller | None = None,
    probe: Probe | None = None,
    unprobed: Collection[str] = (),
    neighbours: Callable[[], list[Neighbour]] = neighbour_table,
    mac_lookup: MacLookup | None = None,
    sweep: Sweeper | None = None,
    utmctl: str | Path = utm.DEFAULT_UTMCTL,
    timeout: float = SEARCH_TIMEOUT,
) -> Resolution:
    """The VM's address right now, and which method found it (lesson 8). Never cached.

    `console(command) -> text` types `command` on the VM console and returns what it printed
    (e.g. `SerialBackend.run`); `callback(seconds) -> [address]` is a typed call-back (e.g.
    `tcp_callback`); `probe(address) -> bool` (e.g. `tcp_probe(22)`) rejects stale
    candidates, except for the methods in `unprobed` (what the VM itself says, when its sshd
    may be down); `mac_lookup(vm)` gives the MAC when the target has none; `sweep(seconds)`
    fills the ARP table. The whole search ends after `timeout` seconds: methods not reached
    by then are listed as skipped. Raises AddressNotFoundError listing what each method said.
    """
    name = target.vm or target.address
    search = _Search(name, time.monotonic() + timeout)
    means = _Means(resolver, console, callback, neighbours, mac_lookup, sweep, utmctl)
    for method in methods:
        if search.left() <= 0:
            search.add(method, f"skipped: the search's {timeout:g}s deadline passed")
            continue
        try:
            if method == "arp":
                address: str | None = _arp(target, means, probe, search)
                note = search.notes[-1].split(": ", 1)[1]
            else:
                candidates = _candidates(method, target, means, search)
                if candidates is None:
                    search.add(method, "not applicable")
                    continue
                address, note = _first_alive(candidates, None if method in unprobed else probe)
                search.add(method, note)
        except RunbookError as exc:
            search.add(method, f"failed: {exc}")
            continue
        if address is not None:
            if method == "given":
                logger.warning("using the configured address %s: it may be stale", address)
            logger.info("%s is at %s (found by %s)", name, address, method)
            return Resolution(address, method, note, tuple(search.notes))
    raise AddressNotFoundError(f"no address for {name}: " + "; ".join(search.notes))


class _RunsCommands(Protocol):
    def run(self, vm: str, command: str, done: str, timeout: float = ...) -> str: ...


def serial_callback(console: _RunsCommands, vm: str, timeout: float = 20.0) -> ConsoleReader:
    """A `console=` reader for `resolve_address` from a console that answers (SerialBackend).

    SPICE-only consoles (utm-input, hammerspoon, quartz) cannot be read back: there the
    typed TCP call-back (`tcp_callback`) finds the address instead.
    """
    return lambda command: console.run(vm, command, re.escape(CALLBACK_END) + r"\s", timeout)
