"""runbook.mac.discover: parsers on recorded outputs, resolution with injected lookups (lesson 8).

No test here sends an mDNS query or contacts any address but loopback and a network namespace
the test creates: name lookups go to an injected resolver or to `localhost`, every external
command is mocked (an autouse fixture fails the test if one would really run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from runbook.core.errors import CommandTimeoutError
from runbook.core.models import Result
from runbook.mac import discover
from runbook.mac.console import backends, keymap
from runbook.transport import local
from runbook.transport.remote import tcp_probe
from tests.conftest import need
from tests.console_rig import start_console

MAC = "5A:94:EF:E4:0C:EE"  # UTM writes uppercase with leading zeros (utm-makefile-keys.md §3)

# macOS `arp -an`: octets without leading zeros (utm-makefile-keys.md §7.3)
ARP_MACOS = """\
? (198.51.100.1) at 0:11:22:33:44:55 on en0 ifscope [ethernet]
? (198.51.100.2) at 3e:22:fb:1:2:64 on bridge100 ifscope permanent [bridge]
? (198.51.100.13) at 5a:94:ef:e4:c:ee on bridge100 ifscope [bridge]
? (198.51.100.9) at (incomplete) on bridge100 ifscope [bridge]
? (224.0.0.251) at 1:0:5e:0:0:fb on en0 ifscope permanent [ethernet]
"""
# net-tools `arp -an` on Linux
ARP_LINUX = """\
? (198.51.100.1) at 00:11:22:33:44:55 [ether] on eth0
? (198.51.100.13) at 5a:94:ef:e4:0c:ee [ether] on eth0
? (198.51.100.7) at <incomplete> on eth0
"""
# iproute2 `ip neigh show`
IP_NEIGH = """\
198.51.100.13 dev enp0s1 lladdr 5a:94:ef:e4:0c:ee REACHABLE
198.51.100.1 dev enp0s1 lladdr 00:11:22:33:44:55 STALE
198.51.100.20 dev enp0s1  FAILED
198.51.100.21 dev enp0s1 INCOMPLETE
fe80::5894:efff:fee4:cee dev enp0s1 lladdr 5a:94:ef:e4:0c:ee router STALE
"""
# the shape macOS `dns-sd -G v4 HOST` prints (it browses until killed)
DNS_SD = """\
DATE: ---Thu 26 Nov 2026---
 1:02:03.456  ...STARTING...
Timestamp     A/R  Flags         IF  Hostname                  Address                                      TTL
 1:02:03.789  Add  2             14  nixos-utm-cache.local.    198.51.100.13                                120
"""
AVAHI = "nixos-utm-cache.local\t198.51.100.13\n"
# what the VM's console shows after CALLBACK_COMMAND: the echo, then the answer
CONSOLE = (
    "root@nixos:~]# echo RUNBOOK-ADDR-''BEGIN; ip -4 -o addr show scope global; "
    "echo RUNBOOK-ADDR-''END\r\n"
    "RUNBOOK-ADDR-BEGIN\r\n"
    "2: enp0s1    inet 198.51.100.13/24 brd 198.51.100.255 scope global dynamic noprefixroute "
    "enp0s1\\       valid_lft 86321sec preferred_lft 86321sec\r\n"
    "RUNBOOK-ADDR-END\r\n[root@nixos:~]# "
)


@pytest.fixture(autouse=True)
def no_real_commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[mock.MagicMock]:
    """Nothing here may run dns-sd/avahi/arp/utmctl for real."""
    monkeypatch.setattr(local, "which", lambda name: None)
    with mock.patch("runbook.transport.local.run", autospec=True) as run:
        run.side_effect = AssertionError("a test tried to run an external command")
        yield run


def fake_resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: object, family: int = 0, type: int = 0) -> list[tuple]:  # noqa: A002
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in table[host]]

    return resolve


# --- parsers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mac", "want"),
    [
        (MAC, "5a:94:ef:e4:c:ee"),
        ("00:0A:00:00:00:01", "0:a:0:0:0:1"),
        ("1:2:3:4:5:6", "1:2:3:4:5:6"),
    ],
)
def test_normalize_mac(mac: str, want: str) -> None:
    assert discover.normalize_mac(mac) == want


def test_parse_arp_macos() -> None:
    rows = discover.parse_arp_an(ARP_MACOS)
    assert [(n.address, n.mac, n.interface) for n in rows] == [
        ("198.51.100.1", "0:11:22:33:44:55", "en0"),
        ("198.51.100.2", "3e:22:fb:1:2:64", "bridge100"),
        ("198.51.100.13", "5a:94:ef:e4:c:ee", "bridge100"),
        ("224.0.0.251", "1:0:5e:0:0:fb", "en0"),
    ]
    assert discover.addresses_for_mac(rows, MAC) == ["198.51.100.13"]


def test_parse_arp_linux_net_tools() -> None:
    rows = discover.parse_arp_an(ARP_LINUX)
    assert [n.address for n in rows] == ["198.51.100.1", "198.51.100.13"]
    assert discover.addresses_for_mac(rows, MAC) == ["198.51.100.13"]


def test_parse_ip_neigh_ipv4_first() -> None:
    rows = discover.parse_ip_neigh(IP_NEIGH)
    assert [n.address for n in rows] == [
        "198.51.100.13",
        "198.51.100.1",
        "fe80::5894:efff:fee4:cee",
    ]
    assert discover.addresses_for_mac(rows, MAC) == ["198.51.100.13", "fe80::5894:efff:fee4:cee"]
    assert discover.addresses_for_mac(rows, "02:00:00:00:00:99") == []


def test_parse_dns_sd_and_avahi() -> None:
    assert discover.parse_dns_sd_v4(DNS_SD, "nixos-utm-cache.local") == ["198.51.100.13"]
    assert discover.parse_dns_sd_v4(DNS_SD, "other.local") == []
    assert discover.parse_avahi_resolve(AVAHI, "nixos-utm-cache.local") == ["198.51.100.13"]
    assert discover.parse_avahi_resolve("", "nixos-utm-cache.local") == []


def test_parse_console_addresses() -> None:
    assert discover.parse_console_addresses(CONSOLE) == ["198.51.100.13"]
    ip_a = "    inet 127.0.0.1/8 scope host lo\n    inet 169.254.3.4/16 scope link\n"
    ifconfig = "eth0  Link encap:Ethernet\n      inet addr:198.51.100.5  Bcast:198.51.100.255\n"
    assert discover.parse_console_addresses(ip_a + "    inet 198.51.100.6/24 brd x\n") == [
        "198.51.100.6"
    ]
    assert discover.parse_console_addresses(ifconfig) == ["198.51.100.5"]
    # only the marked block counts once the markers are there
    assert discover.parse_console_addresses("inet 198.51.100.99/24\n" + CONSOLE) == [
        "198.51.100.13"
    ]


# --- methods ----------------------------------------------------------------------------------


def test_mdns_via_system_resolver_on_localhost() -> None:
    # the real socket.getaddrinfo, on loopback only
    found = discover.resolve_address(discover.Target("localhost"), methods=("mdns",))
    assert (found.address, found.method) == ("127.0.0.1", "mdns")


def test_mdns_with_injected_resolver() -> None:
    resolver = fake_resolver({"nixos-utm-cache.local": ["198.51.100.13"]})
    found = discover.resolve_address(
        discover.Target("nixos-utm-cache.local"), resolver=resolver, methods=("mdns",)
    )
    assert (found.address, found.method) == ("198.51.100.13", "mdns")


def test_every_call_resolves_again_never_cached() -> None:
    table = {"vm.local": ["198.51.100.13"]}
    target = discover.Target("vm.local")
    assert discover.resolve_address(target, resolver=fake_resolver(table)).address.endswith(".13")
    table["vm.local"] = ["198.51.100.42"]  # the VM rebooted and got a new lease
    assert discover.resolve_address(target, resolver=fake_resolver(table)).address.endswith(".42")


def test_mdns_falls_back_to_dns_sd_and_keeps_lines_before_the_timeout(
    monkeypatch: pytest.MonkeyPatch, no_real_commands: mock.MagicMock
) -> None:
    monkeypatch.setattr(
        local, "which", lambda name: "/usr/bin/dns-sd" if name == "dns-sd" else None
    )

    def browse_forever(argv, **kwargs):
        assert argv == ["dns-sd", "-G", "v4", "nixos-utm-cache.local"]
        assert kwargs["timeout"] == discover.MDNS_TIMEOUT
        for line in DNS_SD.splitlines():
            kwargs["on_line"]("stdout", line)
        raise CommandTimeoutError(host="localhost", command="dns-sd", exit_code=None)

    no_real_commands.side_effect = browse_forever
    found = discover.resolve_address(
        discover.Target("nixos-utm-cache.local"), resolver=fake_resolver({}), methods=("mdns",)
    )
    assert (found.address, found.method) == ("198.51.100.13", "mdns")


def test_mdns_avahi_resolve_on_linux(
    monkeypatch: pytest.MonkeyPatch, no_real_commands: mock.MagicMock
) -> None:
    monkeypatch.setattr(
        local,
        "which",
        lambda name: "/usr/bin/avahi-resolve" if name == "avahi-resolve" else None,
    )
    no_real_commands.side_effect = None
    no_real_commands.return_value = Result("avahi-resolve", 0, AVAHI, "", 0.1)
    assert discover.via_mdns_tools("nixos-utm-cache.local") == ["198.51.100.13"]
    assert no_real_commands.call_args.args[0] == [
        "avahi-resolve",
        "-4",
        "-n",
        "nixos-utm-cache.local",
    ]


@pytest.mark.parametrize(
    ("platform", "argv", "out"),
    [("darwin", ["arp", "-an"], ARP_MACOS), ("linux", ["ip", "neigh", "show"], IP_NEIGH)],
)
def test_neighbour_table_argv(
    monkeypatch: pytest.MonkeyPatch,
    no_real_commands: mock.MagicMock,
    platform: str,
    argv: list[str],
    out: str,
) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(local, "which", lambda name: f"/bin/{name}")
    no_real_commands.side_effect = None
    no_real_commands.return_value = Result(" ".join(argv), 0, out, "", 0.1)
    table = discover.neighbour_table()
    assert no_real_commands.call_args.args[0] == argv
    assert discover.addresses_for_mac(table, MAC)[0] == "198.51.100.13"


def test_arp_by_mac_and_the_probe_rejects_a_stale_entry() -> None:
    # after a reboot the old lease can linger in the ARP cache next to the new one
    rows = discover.parse_arp_an(
        "? (198.51.100.13) at 5a:94:ef:e4:c:ee on en0 ifscope [ethernet]\n"
        "? (198.51.100.42) at 5a:94:ef:e4:c:ee on en0 ifscope [ethernet]\n"
    )
    target = discover.Target("nixos-utm-cache.local", vm="cache", mac=MAC)
    found = discover.resolve_address(
        target,
        methods=("arp",),
        neighbours=lambda: rows,
        probe=lambda address: address == "198.51.100.42",
    )
    assert (found.address, found.method) == ("198.51.100.42", "arp")


def test_utmctl_ip_address(
    monkeypatch: pytest.MonkeyPatch, no_real_commands: mock.MagicMock
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")  # a Mac: utm runs its programs
    no_real_commands.side_effect = None
    no_real_commands.return_value = Result("utmctl", 0, "198.51.100.13\nfe80::1\n", "", 0.1)
    found = discover.resolve_address(
        discover.Target("nixos-utm-cache.local", vm="cache"), methods=("utmctl",)
    )
    assert (found.address, found.method) == ("198.51.100.13", "utmctl")
    assert no_real_commands.call_args.args[0][1:] == ["ip-address", "cache"]


def test_order_failures_and_the_report(
    monkeypatch: pytest.MonkeyPatch, no_real_commands: mock.MagicMock
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")  # a Mac: utm runs its programs
    no_real_commands.side_effect = None
    no_real_commands.return_value = Result(
        "utmctl", 0, "", "Error from event: The QEMU guest agent is not running\n", 0.1
    )
    target = discover.Target("nixos-utm-cache.local", vm="cache", mac=MAC)
    found = discover.resolve_address(
        target,
        resolver=fake_resolver({}),
        neighbours=list,
        console=lambda command: CONSOLE,
    )
    assert (found.address, found.method) == ("198.51.100.13", "console")
    assert [t.split(":")[0] for t in found.tried] == ["mdns", "utmctl", "arp", "console"]
    assert "guest agent" in found.tried[1]
    with pytest.raises(discover.AddressNotFoundError) as info:
        discover.resolve_address(target, resolver=fake_resolver({}), neighbours=list)
    msg = str(info.value)
    assert msg.startswith("no address for cache: mdns: no answer; utmctl: failed")
    assert "console: not applicable; callback: not applicable; given: not applicable" in msg


def test_given_ip_is_the_last_resort_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    found = discover.resolve_address(discover.Target("198.51.100.77"), neighbours=list)
    assert (found.address, found.method) == ("198.51.100.77", "given")
    assert "may be stale" in caplog.text


def test_tcp_probe_on_loopback() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert tcp_probe(port, timeout=1)("127.0.0.1")
    assert not tcp_probe(port, timeout=1)("127.0.0.1")


def test_target_from_params() -> None:
    from runbook.core.params import VM, Role

    vm = VM(name="vm-aarch64-utm-cache", role=Role.CACHE, address="nixos-utm-cache.local", mac=MAC)
    assert discover.Target.from_params(vm) == discover.Target(
        "nixos-utm-cache.local", vm="vm-aarch64-utm-cache", mac=MAC
    )


def test_console_callback_from_a_real_console_in_its_own_netns(tmp_path: Path) -> None:
    """The VM prints its address on its console: a real bash in a network namespace of ours."""
    need(os.geteuid() == 0, "needs root for a network namespace")
    need(shutil.which("unshare") is not None, "needs unshare (util-linux)")
    rig = start_console(tmp_path, netns_address="10.77.0.5/24")
    try:
        console = discover.serial_callback(backends.SerialBackend(port=rig.port), "lab-vm")
        found = discover.resolve_address(
            discover.Target("lab-vm.invalid", vm="lab-vm"),
            methods=("console",),
            console=console,
        )
    finally:
        rig.stop()
    assert (found.address, found.method) == ("10.77.0.5", "console")


# --- issue 9: a fresh VM on the live ISO (no avahi, no guest agent, nothing in ARP yet) -------


def test_arp_reads_the_mac_from_utm_when_params_have_none() -> None:
    rows = discover.parse_ip_neigh("198.51.100.13 dev en0 lladdr 5a:94:ef:e4:0c:ee REACHABLE\n")
    asked: list[str] = []

    def mac_of(vm: str) -> str:
        asked.append(vm)
        return MAC

    found = discover.resolve_address(
        discover.Target("198.51.100.99", vm="cache"),  # a stale IP and no MAC in the params
        methods=("arp",),
        neighbours=lambda: rows,
        mac_lookup=mac_of,
    )
    assert (found.address, found.method, asked) == ("198.51.100.13", "arp", ["cache"])
    assert "MAC from UTM's configuration" in found.tried[0]


def test_arp_sweeps_the_subnet_when_the_table_does_not_know_the_vm_yet() -> None:
    swept: list[float] = []
    table: list[discover.Neighbour] = []  # ARP knows the VM only after traffic to it

    def sweep(seconds: float) -> discover.SweepResult:
        swept.append(seconds)
        table.append(discover.Neighbour("198.51.100.13", discover.normalize_mac(MAC), "en0"))
        return discover.SweepResult("198.51.100.0/24", 22, 253, ("198.51.100.13",), 1.2)

    target = discover.Target("198.51.100.99", vm="cache", mac=MAC)
    found = discover.resolve_address(
        target, methods=("arp",), neighbours=lambda: list(table), sweep=sweep
    )
    assert (found.address, found.method) == ("198.51.100.13", "arp")
    assert len(swept) == 1 and 0 < swept[0] <= discover.SWEEP_TIMEOUT
    assert "swept 253 addresses of 198.51.100.0/24 on port 22" in found.tried[0]
    # the table knows it now: the next search sends nothing
    again = discover.resolve_address(
        target, methods=("arp",), neighbours=lambda: list(table), sweep=sweep
    )
    assert again.address == "198.51.100.13" and len(swept) == 1


def test_sweep_never_goes_beyond_one_slash_24_nor_to_this_machine() -> None:
    import ipaddress

    net = ipaddress.IPv4Network("10.20.0.0/16")
    own = ipaddress.IPv4Address("10.20.3.7")
    hosts = discover.sweep_hosts(net, own)
    assert len(hosts) == 253 and hosts[0] == "10.20.3.1" and hosts[-1] == "10.20.3.254"
    assert "10.20.3.7" not in hosts
    small = discover.sweep_hosts(ipaddress.IPv4Network("10.20.3.0/29"))
    assert small == [f"10.20.3.{i}" for i in range(1, 7)]


def test_tcp_sweep_on_loopback_finds_the_listener_within_its_deadline() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.9", 0))
        server.listen()
        port = server.getsockname()[1]
        hosts = [f"127.0.0.{i}" for i in range(1, 15)]
        result = discover.tcp_sweep(hosts, port, timeout=5, concurrency=4, network="127.0.0.0/28")
        assert result.answered == ("127.0.0.9",) and result.tried == 14
        assert result.seconds < 5
        assert "swept 14 addresses of 127.0.0.0/28" in result.note
        # no time left: nothing is tried at all
        assert discover.tcp_sweep(hosts, port, timeout=0).tried == 0


def _run_typed(command: str) -> None:
    """What the VM's shell does with the typed call-back line (here: a local bash)."""
    subprocess.Popen(["bash", "-c", command], stdin=subprocess.DEVNULL)


def test_callback_source_address_is_the_vms() -> None:
    typed: list[str] = []

    def type_it(command: str) -> None:
        typed.append(command)
        _run_typed(command)

    assert discover.tcp_callback("127.0.0.1", type_it, timeout=10) == ["127.0.0.1"]
    (command,) = typed
    assert command.startswith("timeout 5 bash -c 'echo RUNBOOK-HELLO-")
    assert ">/dev/tcp/127.0.0.1/" in command
    keymap.keys_for(command + "\n")  # every backend can type it (US layout)


def test_callback_ignores_a_connection_without_the_token_and_has_a_deadline() -> None:
    def stranger_first(command: str) -> None:
        port = command.rsplit("/", 1)[1].split("'")[0]
        _run_typed(f"echo someone-else >/dev/tcp/127.0.0.1/{port}")
        time.sleep(0.3)
        _run_typed(command)

    assert discover.tcp_callback("127.0.0.1", stranger_first, timeout=10) == ["127.0.0.1"]
    start = time.monotonic()
    assert discover.tcp_callback("127.0.0.1", lambda command: None, timeout=1) == []
    assert time.monotonic() - start < 3


def test_the_search_has_a_deadline_and_names_every_method() -> None:
    target = discover.Target("198.51.100.77", vm="cache", mac=MAC)

    def slow_callback(seconds: float) -> list[str]:
        time.sleep(0.3)
        return []

    with pytest.raises(discover.AddressNotFoundError) as info:
        discover.resolve_address(
            target,
            methods=("callback", "arp", "given"),
            callback=slow_callback,
            neighbours=list,
            probe=lambda address: False,
            timeout=0.2,
        )
    msg = str(info.value)
    assert msg.startswith("no address for cache: callback: no answer")
    assert "arp: skipped: the search's 0.2s deadline passed" in msg
    assert "given: skipped" in msg


def test_typed_answers_are_taken_unprobed_when_sshd_may_be_down() -> None:
    target = discover.Target("cache.local", vm="cache")
    found = discover.resolve_address(
        target,
        methods=("callback",),
        callback=lambda seconds: ["198.51.100.13"],
        probe=lambda address: False,  # sshd has no host keys (lesson 3)
        unprobed=discover.TYPED_METHODS,
    )
    assert (found.address, found.method) == ("198.51.100.13", "callback")


# macOS `ifconfig en0`
IFCONFIG_EN0 = """\
en0: flags=8863<UP,BROADCAST,SMART,RUNNING,SIMPLEX,MULTICAST> mtu 1500
\tether 3c:22:fb:01:02:64
\tinet6 fe80::1%en0 prefixlen 64 secured scopeid 0x6
\tinet 192.168.1.23 netmask 0xffffff00 broadcast 192.168.1.255
"""


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (IFCONFIG_EN0, "192.168.1.23/24"),
        ("\tinet 10.0.8.2 netmask 0xfffff000 broadcast 10.0.15.255\n", "10.0.8.2/20"),
    ],
)
def test_parse_ifconfig_macos(text: str, want: str) -> None:
    assert str(discover.parse_ifconfig(text)) == want


def test_parse_ip_addr_and_interface_argv(
    monkeypatch: pytest.MonkeyPatch, no_real_commands: mock.MagicMock
) -> None:
    out = "5: rblabs    inet 10.231.23.1/24 scope global rblabs\\       valid_lft forever\n"
    assert str(discover.parse_ip_addr(out)) == "10.231.23.1/24"
    monkeypatch.setattr(sys, "platform", "linux")
    no_real_commands.side_effect = None
    no_real_commands.return_value = Result("ip", 0, out, "", 0.1)
    assert str(discover.interface_address("rblabs")) == "10.231.23.1/24"
    assert no_real_commands.call_args.args[0] == ["ip", "-4", "-o", "addr", "show", "dev", "rblabs"]
    monkeypatch.setattr(sys, "platform", "darwin")
    no_real_commands.return_value = Result("ifconfig", 1, "", "interface en9 does not exist", 0.1)
    assert discover.interface_address("en9") is None
    assert no_real_commands.call_args.args[0] == ["ifconfig", "en9"]


# --- notebook 02 on a fresh VM: the password is typed first ------------------------------------


class _FakeConsole:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.label = "cache's console (utm-input)"

    def close(self) -> None:
        self.events.append("close")


def test_02_types_the_password_first_when_the_vm_is_not_found_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runbook.core.params import load
    from runbook.core.secrets import SecretStore
    from runbook.engine.steps import Context, Mode, Outcome
    from runbook.sections import s02_console
    from runbook.sections.vm_console import MacSide
    from tests.run_rig import PARAMS

    events: list[str] = []
    console = _FakeConsole(events)

    class Lazy:
        def __init__(self, ctx: object, vm: object) -> None:
            pass

        def __call__(self) -> tuple[MacSide, _FakeConsole]:
            return MacSide("utmctl"), console

        def close(self) -> None:
            events.append("close")

    def resolve(mac: MacSide, vm: object, con: object, **kw: object) -> discover.Resolution:
        events.append(f"resolve typing={kw.get('typing', True)}")
        if kw.get("typing") is False:  # the check: nothing typed, nothing found yet
            raise discover.AddressNotFoundError("no address for cache: arp: no answer")
        return discover.Resolution("198.51.100.13", "callback", "called back")

    monkeypatch.setattr(s02_console, "LazyConsole", Lazy)
    monkeypatch.setattr(s02_console, "resolve", resolve)
    monkeypatch.setattr(s02_console, "type_password", lambda ctx, con, pw: events.append("type"))
    monkeypatch.setattr(s02_console, "save_screen", lambda *a: None)
    monkeypatch.setattr(
        s02_console, "root_login", lambda ctx, vm, where, pw: (True, f"root logs in at {where}")
    )
    ctx = Context(
        s02_console.NOTEBOOK, load(PARAMS / "cache.yaml"), Mode.DEPLOY, False,
        SecretStore(tmp_path / "secrets"),
    )  # fmt: skip
    ctx.store.put("live-root-password", "Typed-First-1")
    assert ctx.run(s02_console.set_root_password(ctx, ctx.dep.cache_vm)) is Outcome.DONE
    assert events == ["resolve typing=False", "close", "type", "resolve typing=True", "close"]
    assert ctx.records[-1]["reason"].endswith("root logs in at 198.51.100.13")
