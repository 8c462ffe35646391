"""The checks on the cache VM's configuration: atticd runs with its secret outside /nix/store,
the attic client is installed, its port is open, and avahi answers the name the workers use."""

from __future__ import annotations

import logging
from typing import Final

from runbook.doctor.context import NO_PARAMS, DoctorContext, describe, option_path, where_set
from runbook.doctor.model import DoctorCheck, Status, Verdict, check, ok, unchecked_verdict
from runbook.mac.discover import is_ip
from runbook.nix.nixcfg import (
    NixPath,
    Opaque,
    SystemView,
    Undecided,
    cache_module,
    find_attic_client,
)

logger: Final = logging.getLogger(__name__)

CHECKS: Final[list[DoctorCheck]] = []


def _cache(ctx: DoctorContext) -> SystemView | Verdict:
    view = ctx.cache_view
    if isinstance(view, str):
        return unchecked_verdict(view, "name the cache VM in params (cache.vm)")
    if view.broken:
        return unchecked_verdict(
            f"{', '.join(map(str, view.broken))} does not parse (see nix-parse)"
        )
    return view


@check(CHECKS, "atticd-enabled", "architecture: the cache VM runs atticd (nixpkgs' module)")
def check_atticd_enabled(ctx: DoctorContext) -> Verdict:
    view = _cache(ctx)
    if isinstance(view, Verdict):
        if ctx.deployment is not None and isinstance(ctx.cache_view, str):
            return Verdict(  # params name a cache VM the checkout cannot build
                Status.FAIL,
                ctx.cache_view,
                f"add nixosConfigurations.{ctx.cache_system} (machines/{ctx.cache_system}.nix "
                "enabling services.atticd) or fix cache.vm in params",
            )
        return view
    path = ("services", "atticd", "enable")
    value = view.value(path)
    if value is True:
        return ok(f"{view.name} enables services.atticd{where_set(view, path)}")
    if isinstance(value, Undecided | Opaque):
        return unchecked_verdict(f"services.atticd.enable: {describe(value)}")
    return Verdict(
        Status.FAIL,
        f"{view.name}: services.atticd.enable is {describe(value)}{where_set(view, path)}",
        f"set `services.atticd.enable = true;` in the cache VM's configuration ({view.name})",
    )


@check(
    CHECKS, "atticd-env-file", "lesson 2: the token secret lives in an env file outside /nix/store"
)
def check_atticd_env_file(ctx: DoctorContext) -> Verdict:
    view = _cache(ctx)
    if isinstance(view, Verdict):
        return view
    path = option_path(view, ("services", "atticd", "environmentFile"))  # or credentialsFile
    value, where = view.value(path), where_set(view, path)
    fix = (
        'set `services.atticd.environmentFile = "/var/lib/atticd/env";` and write the RSA '
        "secret there (mode 0600, notebook 05)"
    )
    if isinstance(value, str) and value.startswith("/") and not value.startswith("/nix/store"):
        return ok(f"environmentFile = {value}{where}")
    if isinstance(value, NixPath):
        problem = "is a path literal: Nix copies the file, secret included, into /nix/store"
    elif isinstance(value, str):
        problem = "is in /nix/store" if value.startswith("/") else "is not an absolute path"
    elif value is None or value == Opaque("null"):
        problem = "is not set: the atticd module asserts it is (attic.md §3)"
    else:
        return unchecked_verdict(
            f"environmentFile is {describe(value)}{where}: make sure it is outside /nix/store"
        )
    return Verdict(Status.FAIL, f"environmentFile {describe(value)} {problem}{where}", fix)


@check(
    CHECKS,
    "attic-client",
    "Attic 缓存管理: notebook 06 runs `attic` on the cache VM (services.atticd installs only "
    "atticd-atticadm)",
)
def check_attic_client(ctx: DoctorContext) -> Verdict:
    """nixpkgs nixos/modules/services/networking/atticd.nix puts only its `atticd-atticadm`
    wrapper in environment.systemPackages: without pkgs.attic-client, `attic login` is
    "command not found"."""
    view = _cache(ctx)
    if isinstance(view, Verdict):
        return view
    found = find_attic_client(view)
    if found.where is not None:
        return ok(f"{view.name} installs the attic client ({found.where})")
    if found.conditional:
        return unchecked_verdict(
            f"the attic client is installed under mkIf at {', '.join(found.conditional)}"
        )
    if found.undecided:
        return unchecked_verdict(
            f"environment.systemPackages at {', '.join(found.undecided)} is an expression this "
            "reader does not evaluate: make sure it has pkgs.attic-client"
        )
    target = cache_module(view)
    read = (
        f" (environment.systemPackages at {', '.join(found.read)} has none)" if found.read else ""
    )
    return Verdict(
        Status.WARN,
        f"{view.name} installs no attic client{read}: services.atticd adds only "
        "atticd-atticadm, so `attic login` (notebook 06) would be `command not found`",
        "nothing to do if the runbook sets up the cache (notebook 05 adds it); by hand add "
        f"`environment.systemPackages = [ pkgs.attic-client ];` to {target} (the cache's "
        "configuration)",
    )


@check(CHECKS, "cache-port-open", "architecture: workers reach atticd (the module opens no port)")
def check_cache_port_open(ctx: DoctorContext) -> Verdict:
    view = _cache(ctx)
    if isinstance(view, Verdict):
        return view
    port = ctx.target.port
    enabled = view.value(("networking", "firewall", "enable"))
    if enabled is False:
        return ok(f"the firewall is off{where_set(view, ('networking', 'firewall', 'enable'))}")
    if enabled is not None and enabled is not True:
        return unchecked_verdict(f"networking.firewall.enable: {describe(enabled)}")
    path = ("networking", "firewall", "allowedTCPPorts")
    ports = view.value(path)
    if isinstance(ports, list) and port in ports:
        return ok(f"allowedTCPPorts has {port}{where_set(view, path)}")
    if isinstance(ports, Undecided | Opaque) or (
        isinstance(ports, list) and any(isinstance(p, Opaque) for p in ports)
    ):
        return unchecked_verdict(f"allowedTCPPorts is {describe(ports)}{where_set(view, path)}")
    return Verdict(
        Status.FAIL,
        f"{view.name}: the firewall is on and allowedTCPPorts ({describe(ports)}) lacks {port}",
        f"add `networking.firewall.allowedTCPPorts = [ {port} ];` to the cache VM's configuration",
    )


@check(
    CHECKS, "avahi-publish", "architecture, lesson 8: the Mac resolves the cache as <host>.local"
)
def check_avahi_publish(ctx: DoctorContext) -> Verdict:
    view = _cache(ctx)
    if isinstance(view, Verdict):
        return view
    wanted = [
        ("services", "avahi", "enable"),
        ("services", "avahi", "publish", "enable"),
        ("services", "avahi", "publish", "addresses"),
    ]
    values = {".".join(p): view.value(p) for p in wanted}
    if all(v is True for v in values.values()):
        return ok(f"avahi publishes the addresses{where_set(view, wanted[2])}")
    if any(isinstance(v, Undecided | Opaque) for v in values.values()):
        shown = "; ".join(f"{k}: {describe(v)}" for k, v in values.items())
        return unchecked_verdict(shown)
    off = ", ".join(f"{k} is {describe(v)}" for k, v in values.items() if v is not True)
    return Verdict(
        Status.FAIL,
        f"{view.name}: {off}",
        "set `services.avahi = { enable = true; publish = { enable = true; addresses = true; }; };`"
        " in the cache VM's configuration",
    )


@check(
    CHECKS, "hostname-matches-mdns", "architecture, lesson 8: <hostName>.local is the cache's name"
)
def check_hostname_matches_mdns(ctx: DoctorContext) -> Verdict:
    if ctx.deployment is None:
        return unchecked_verdict(NO_PARAMS)
    view = _cache(ctx)
    if isinstance(view, Verdict):
        return view
    host = ctx.deployment.cache.host
    path = ("networking", "hostName")
    name = view.value(path)
    if is_ip(host):
        return Verdict(
            Status.WARN,
            f"params cache.host is the IP {host}: it changes when the VM reboots (lesson 8)",
            f"set cache.host to {describe(name).strip(chr(34))}.local, the mDNS name",
        )
    if not host.endswith(".local"):
        return unchecked_verdict(f"params cache.host {host} is not an mDNS (.local) name")
    if isinstance(name, Undecided | Opaque):
        return unchecked_verdict(f"networking.hostName is {describe(name)}")
    actual = name if isinstance(name, str) else "nixos"  # NixOS's default hostName
    if actual.lower() == host.removesuffix(".local").lower():
        return ok(f"networking.hostName = {actual}{where_set(view, path)} answers {host}")
    return Verdict(
        Status.FAIL,
        f"{view.name}: networking.hostName is {actual!r}{where_set(view, path)}, "
        f"so avahi answers {actual}.local, not {host}",
        f'set `networking.hostName = "{host.removesuffix(".local")}";` or cache.host: '
        f"{actual}.local in params",
    )
