"""The lab's network: a bridge in the root namespace and one network namespace per host.

Each host gets `ip netns add rblab-NAME`, a veth pair (root side `rblabvN` on the bridge,
host side `eth0`) and an address in the lab subnet. The namespace has only the connected
route of that subnet: no default route, so nothing but the lab and this machine is reachable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from runbook.lab.config import NETNS_PREFIX, LabParams
from runbook.transport.local import run

logger: Final = logging.getLogger(__name__)
NETNS_DIR: Final = Path("/run/netns")


def netns(name: str) -> str:
    return f"{NETNS_PREFIX}{name}"


def _ip(*args: str, check: bool = True) -> int:
    return run(["ip", *args], check=check).exit_code


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ensure_bridge(params: LabParams) -> None:
    prefix = params.subnet.prefixlen
    if not link_exists(params.bridge):
        _ip("link", "add", params.bridge, "type", "bridge")
    _ip("addr", "replace", f"{params.gateway}/{prefix}", "dev", params.bridge)
    _ip("link", "set", params.bridge, "up")


def remove_bridge(params: LabParams) -> None:
    if link_exists(params.bridge):
        _ip("link", "del", params.bridge, check=False)


def create_host_net(params: LabParams, index: int, name: str) -> None:
    ns = netns(name)
    veth = veth_name(params, index)
    if link_exists(veth):
        _ip("link", "del", veth, check=False)
    _ip("netns", "add", ns)
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("link", "set", veth, "master", params.bridge, "up")
    addr = f"{params.address(index)}/{params.subnet.prefixlen}"
    _ip("-n", ns, "addr", "add", addr, "dev", "eth0")
    _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", ns, "link", "set", "lo", "up")


def flush_neighbours(params: LabParams) -> None:
    """Forget this machine's (the Mac side's) ARP entries on the lab bridge: as for a VM that
    just booted, its MAC is learned only from traffic to it (`ip neigh flush dev BRIDGE`)."""
    if link_exists(params.bridge):
        _ip("neigh", "flush", "dev", params.bridge, check=False)


def veth_name(params: LabParams, index: int) -> str:
    return f"{params.bridge}v{index}"  # IFNAMSIZ: bridge names are at most 12 characters


def list_lab_netns() -> list[str]:
    """Host names of every rblab-* namespace (ours, from this run or a crashed one)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(
        p.name[len(NETNS_PREFIX) :] for p in NETNS_DIR.iterdir() if p.name.startswith(NETNS_PREFIX)
    )


def netns_pids(name: str) -> list[int]:
    """Every process whose network namespace is the host's (`ip netns pids`)."""
    result = run(["ip", "netns", "pids", netns(name)], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def delete_host_net(name: str) -> None:
    """Remove the namespace; its veth end goes with it, and the root end with its peer."""
    if (NETNS_DIR / netns(name)).exists():
        _ip("netns", "del", netns(name), check=False)


def stale_veths(params: LabParams) -> list[str]:
    prefix = f"{params.bridge}v"
    return sorted(
        p.name
        for p in Path("/sys/class/net").iterdir()
        if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit()
    )
