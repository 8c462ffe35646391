"""The live cache's signing key, asked only of a cache on loopback or the VMs' bridged subnet
(params `utm.bridged_subnet`): the address guard resolves the cache's name without the network
and contacts nothing else."""

from __future__ import annotations

import ipaddress
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

from runbook.doctor.context import DoctorContext
from runbook.mac.discover import is_ip

logger: Final = logging.getLogger(__name__)

LIVE_TIMEOUT: Final = 3.0


def resolve_without_network(host: str) -> list[str]:
    """`host`'s addresses from what this machine knows without asking anyone: an IP literal,
    localhost, /etc/hosts (no DNS or mDNS query is made)."""
    if is_ip(host):
        return [host]
    if host == "localhost":
        return ["127.0.0.1"]
    found: list[str] = []
    try:
        lines = Path("/etc/hosts").read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) > 1 and host.lower() in (f.lower() for f in fields[1:]):
            found.append(fields[0])
    return found


def live_cache_key(ctx: DoctorContext) -> tuple[str | None, str]:
    """The public key the cache serves (GET /CACHE/attic-cache-info, attic.md §5), only from
    a cache on loopback or the VMs' bridged subnet; else None and why."""
    target = ctx.target
    subnet = ctx.vm_subnet
    allowed = [
        a
        for a in resolve_without_network(target.host)
        if ipaddress.ip_address(a).is_loopback
        or (
            subnet is not None
            and ipaddress.ip_address(a).version == 4
            and ipaddress.ip_address(a) in subnet
        )
    ]
    if not allowed:
        where = f"loopback or utm.bridged_subnet {subnet}" if subnet else "loopback"
        return None, (
            f"cache not reachable from here ({target.host} is not on {where}; no other "
            "address is contacted)"
        )
    address = f"[{allowed[0]}]" if ":" in allowed[0] else allowed[0]
    url = f"http://{address}:{target.port}/{target.name}/attic-cache-info"
    request = urllib.request.Request(url, headers={"Host": f"{target.host}:{target.port}"})
    try:
        with urllib.request.urlopen(request, timeout=LIVE_TIMEOUT) as response:
            key = str(json.loads(response.read().decode())["public_key"])
    except urllib.error.HTTPError as exc:
        return (
            None,
            f"cache answered HTTP {exc.code} ({'private cache' if exc.code == 401 else url})",
        )
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"cache not reachable from here ({url}: {getattr(exc, 'reason', exc)})"
    return key, ""
