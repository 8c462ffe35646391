"""`runbook doctor`: name every handbook pitfall before a deployment starts.

Each check is an independent function with a stable id and the handbook lesson it guards
(`reference/handbook.zh.md`); it looks at the user's nixos-config checkout (read with the
tree-sitter reader in `runbook.nixfile` / `runbook.nixcfg`, never with regular expressions
over Nix text), the params and the Mac, and returns a status (`ok`, `warn`, `fail`, or
`unchecked` with the reason), the finding (file:line where there is one) and the fix.

`run_checks(deployment, nixos_config)` runs them all; `as_dataframe(findings)` is the table
notebook 00 shows; `plan_fixes(context)` plans the safe edits `runbook doctor --fix` makes.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
import plistlib
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from runbook import local
from runbook.errors import InputError, RunbookError, tail
from runbook.keys import parse_public_key
from runbook.lab.config import LabParams
from runbook.makefile import Makefile
from runbook.nixcfg import (
    Change,
    ConfigTree,
    FlakeSystem,
    Literal,
    NixPath,
    Opaque,
    Plan,
    SystemView,
    Undecided,
    attic_inputs,
    declared_inputs,
    flake_systems,
    is_attic_url,
    lock_text,
    modules_view,
    plan_attic_flake_removal,
    plan_list_item,
    prune_lock,
    read_lock,
    stale_lock_inputs,
    system_view,
)
from runbook.nixfile import NixFile
from runbook.params import Deployment, DiskInterface

if TYPE_CHECKING:
    import pandas

logger: Final = logging.getLogger(__name__)

SUBSTITUTERS: Final = ("nix", "settings", "substituters")
EXTRA_SUBSTITUTERS: Final = ("nix", "settings", "extra-substituters")
TRUSTED_KEYS: Final = ("nix", "settings", "trusted-public-keys")
EXTRA_TRUSTED_KEYS: Final = ("nix", "settings", "extra-trusted-public-keys")
# The handbook's defaults (handbook.zh.md §架构, §当前缓存信息): used when no params are given.
DEFAULT_WORKER_MODULE: Final = Path("machines/vm-shared.nix")
DEFAULT_CACHE_HOST: Final = "nixos-utm-cache.local"
DEFAULT_CACHE_NAME: Final = "main"
ATTICD_PORT: Final = 8080  # atticd listens on [::]:8080 unless configured (attic.md §3)
DEFAULT_UTMCTL: Final = Path("/Applications/UTM.app/Contents/MacOS/utmctl")
UTM_INPUT_MIN: Final = (4, 7, 2)  # UTM `input keystroke` (utm-makefile-keys.md §6)
LAB_SUBNET: Final = LabParams.model_fields["subnet"].default  # runbook/lab/config.py
LIVE_TIMEOUT: Final = 3.0

NO_PARAMS: Final = "no params given"
NOT_MACOS: Final = "not on macOS"


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    UNCHECKED = "unchecked"


@dataclass(frozen=True)
class Verdict:
    """What one check concluded."""

    status: Status
    finding: str
    fix: str = ""


@dataclass(frozen=True)
class Finding:
    check: str
    lesson: str
    status: Status
    finding: str
    fix: str

    def as_json(self) -> dict[str, str]:
        return {
            "check": self.check,
            "lesson": self.lesson,
            "status": str(self.status),
            "finding": self.finding,
            "fix": self.fix,
        }


def ok(finding: str) -> Verdict:
    return Verdict(Status.OK, finding)


def unchecked(reason: str, fix: str = "") -> Verdict:
    return Verdict(Status.UNCHECKED, reason, fix)


@dataclass(frozen=True)
class CacheTarget:
    """Where the workers must find the cache: from params, or defaults said in `assumed`."""

    host: str
    port: int
    name: str
    assumed: str | None = None  # how the defaults were chosen, when no params were given

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/{self.name}"


# -- what the checks read, gathered once ---------------------------------------------------------


class Context:
    """The checkout, the params and this machine, as the checks read them."""

    def __init__(
        self,
        deployment: Deployment | None,
        nixos_config: Path,
        *,
        system: str | None = None,
        lab_subnet: ipaddress.IPv4Network | None = None,
    ) -> None:
        self.deployment = deployment
        self.root = nixos_config
        self.tree = ConfigTree(nixos_config)  # InputError when there is no flake.nix
        self.system = system or platform.system()
        lab = deployment.lab if deployment is not None else None
        self.lab_subnet = lab_subnet or (lab.subnet if lab is not None else LAB_SUBNET)
        self.parsed = self.tree.parsed()

    @property
    def flake(self) -> NixFile | None:
        return self.parsed.get(Path("flake.nix"))

    @cached_property
    def systems(self) -> dict[str, FlakeSystem]:
        return flake_systems(self.flake) if self.flake is not None else {}

    @cached_property
    def cache_system(self) -> str | None:
        """The cache VM's configuration: params `cache.vm`, else the flake's `*-cache` one."""
        if self.deployment is not None:
            return self.deployment.cache.vm
        names = sorted(n for n in self.systems if n.endswith("-cache"))
        return names[0] if names else None

    def _view(self, name: str) -> SystemView:
        known = self.systems.get(name)
        user = known.user if known is not None and known.user else self.user
        return system_view(self.tree, name, user)

    @cached_property
    def cache_view(self) -> SystemView | str:
        """The cache VM's modules, or why there are none."""
        name = self.cache_system
        if name is None:
            return "no *-cache configuration in flake.nix's nixosConfigurations (" + NO_PARAMS + ")"
        if not (self.root / "machines" / f"{name}.nix").is_file():
            return f"machines/{name}.nix (the cache VM {name}'s configuration) not found"
        return self._view(name)

    @cached_property
    def worker_systems(self) -> list[str]:
        """The worker VMs' configurations: params' workers, else the handbook's pair
        (`vm-aarch64-utm` beside `vm-aarch64-utm-cache`) when the flake has it."""
        if self.deployment is not None:
            names = [vm.name for vm in self.deployment.workers]
        else:
            cache = self.cache_system
            names = [cache.removesuffix("-cache")] if cache and cache.endswith("-cache") else []
            names = [n for n in names if n in self.systems]
        return [n for n in names if (self.root / "machines" / f"{n}.nix").is_file()]

    @cached_property
    def worker_views(self) -> list[SystemView]:
        """Each worker system, else the worker module (params `worker_config`) and its imports."""
        views = [self._view(name) for name in self.worker_systems]
        if views or not (self.root / self.worker_module).is_file():
            return views
        return [modules_view(self.tree, str(self.worker_module), [self.worker_module], self.user)]

    @property
    def worker_module(self) -> Path:
        return Path(self.deployment.worker_config) if self.deployment else DEFAULT_WORKER_MODULE

    @cached_property
    def all_views(self) -> list[SystemView]:
        """The cache and worker systems (a bare worker module only when there is no system)."""
        views = [self.cache_view] if isinstance(self.cache_view, SystemView) else []
        views += [self._view(name) for name in self.worker_systems]
        return views or self.worker_views

    @cached_property
    def target(self) -> CacheTarget:
        dep = self.deployment
        if dep is not None:
            return CacheTarget(dep.cache.host, dep.cache.port, dep.cache.name)
        view = self.cache_view
        host_name = view.value(("networking", "hostName")) if isinstance(view, SystemView) else None
        host = f"{host_name}.local" if isinstance(host_name, str) else DEFAULT_CACHE_HOST
        whence = "its networking.hostName" if isinstance(host_name, str) else "the handbook"
        return CacheTarget(
            host,
            _listen_port(view) if isinstance(view, SystemView) else ATTICD_PORT,
            DEFAULT_CACHE_NAME,
            f"{NO_PARAMS}: expecting http://{host}:{ATTICD_PORT}/{DEFAULT_CACHE_NAME} "
            f"(host from {whence}, attic's default port, the handbook's cache name)",
        )

    @cached_property
    def makefile(self) -> Makefile | None:
        path = self.root / "Makefile"
        return Makefile.read(path) if path.is_file() else None

    @property
    def user(self) -> str | None:
        return self.deployment.user if self.deployment is not None else None

    def notes(self) -> list[str]:
        """The defaults the checks used, said once above the table."""
        if self.deployment is not None:
            return []
        said = [f"{NO_PARAMS}: cache configuration {self.cache_system or '(none found)'}"]
        said.append(f"worker settings from {self.worker_module}; {self.target.assumed}")
        return said


def _listen_port(view: SystemView) -> int:
    listen = view.value(("services", "atticd", "settings", "listen"))
    if isinstance(listen, str) and listen.rpartition(":")[2].isdigit():
        return int(listen.rpartition(":")[2])
    return ATTICD_PORT


def _where(view: SystemView, path: Sequence[str]) -> str:
    at = view.where(path)
    return f" ({at})" if at else ""


def _describe(value: Literal | Undecided | None) -> str:
    if value is None:
        return "not set"
    if isinstance(value, Undecided):
        return value.reason
    if isinstance(value, Opaque | NixPath):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)


_DEVICE: Final = re.compile(r"/dev/(\$\((\w+)\)|\$\{(\w+)\}|[A-Za-z0-9]+)")


# -- the checks ---------------------------------------------------------------------------------

CheckFunction = Callable[[Context], Verdict]


@dataclass(frozen=True)
class Check:
    id: str
    lesson: str
    run: CheckFunction


CHECKS: list[Check] = []


def check(check_id: str, lesson: str) -> Callable[[CheckFunction], CheckFunction]:
    def register(function: CheckFunction) -> CheckFunction:
        CHECKS.append(Check(check_id, lesson, function))
        return function

    return register


@check("nix-parse", "all: a file that does not parse stops every nixos-rebuild")
def check_nix_parse(ctx: Context) -> Verdict:
    broken = [f"{rel}: {exc}" for rel, exc in ctx.tree.broken.items()]
    confirmed = "tree-sitter"
    if local.which("nix-instantiate") is not None and ctx.parsed:
        confirmed += " and nix-instantiate --parse"
        broken += _nix_refuses(ctx.root, list(ctx.parsed))
    if broken:
        return Verdict(Status.FAIL, "; ".join(broken), "fix the syntax error at the place named")
    return ok(f"{len(ctx.parsed)} .nix files parse ({confirmed})")


def _nix_refuses(root: Path, files: list[Path]) -> list[str]:
    """The files the installed Nix does not parse: one call for all, one per file on failure."""
    argv = ["nix-instantiate", "--parse"]
    if local.run([*argv, *(str(root / f) for f in files)], check=False).exit_code == 0:
        return []
    refused = []
    for rel in files:
        result = local.run([*argv, str(root / rel)], check=False)
        if result.exit_code != 0:
            refused.append(f"{rel}: nix-instantiate: {tail(result.stderr, 2)}")
    return refused


@check("attic-flake-input", "lesson 1: the attic flake's client fails to build (-std=c++2a)")
def check_attic_flake_input(ctx: Context) -> Verdict:
    flake = ctx.flake
    if flake is None:
        return unchecked("flake.nix does not parse")
    found = [
        f"flake.nix:{flake.under(('inputs', name))[0].line}: input {name} = {source}"
        for name, source in sorted(attic_inputs(flake).items())
    ]
    lock_path = ctx.root / "flake.lock"
    if lock_path.is_file():
        for key, node in sorted(read_lock(lock_path)["nodes"].items()):
            if _fetches_attic(node):
                found.append(f"flake.lock: node {key!r} locks the attic repository")
    if found:
        return Verdict(
            Status.FAIL,
            "; ".join(found),
            "delete the attic input (and `attic` from outputs' arguments) from flake.nix, run "
            "`nix flake lock`; nixpkgs' services.atticd and pkgs.attic-client replace it "
            "(`runbook doctor --fix` does this)",
        )
    return ok("flake.nix has no attic input and flake.lock no attic node")


def _fetches_attic(node: Any) -> bool:
    for part in ("original", "locked"):
        ref = node.get(part) if isinstance(node, dict) else None
        if not isinstance(ref, dict):
            continue
        if ref.get("repo") == "attic" or is_attic_url(str(ref.get("url", "x"))):
            return True
    return False


@check("attic-module-import", "lesson 1: the attic flake's module and packages go with its input")
def check_attic_module_import(ctx: Context) -> Verdict:
    names = {"attic"} | (set(attic_inputs(ctx.flake)) if ctx.flake is not None else set())
    found: list[str] = []
    for rel, nix in ctx.parsed.items():
        for node, path in nix.selects("inputs"):
            if path[0] in names and len(path) > 1:
                found.append(f"{rel}:{node.start_point.row + 1}: {nix.text(node)}")
        if rel == Path("flake.nix"):  # `outputs = { attic, ... }:` names the input directly
            for name in names:
                for node, path in nix.selects(name):
                    if path[0] in ("nixosModules", "packages", "overlays"):
                        found.append(f"{rel}:{node.start_point.row + 1}: {nix.text(node)}")
    if found:
        return Verdict(
            Status.FAIL,
            "uses the attic flake: " + "; ".join(found),
            "remove inputs.attic.nixosModules.atticd from lib/mksystem.nix (nixpkgs has "
            "services.atticd) and use pkgs.attic-client for inputs.attic.packages "
            "(`runbook doctor --fix` does this)",
        )
    if ctx.tree.broken:
        return unchecked("some .nix files do not parse (see nix-parse)")
    return ok("no module uses inputs.attic")


def _cache(ctx: Context) -> SystemView | Verdict:
    view = ctx.cache_view
    if isinstance(view, str):
        return unchecked(view, "name the cache VM in params (cache.vm)")
    if view.broken:
        return unchecked(f"{', '.join(map(str, view.broken))} does not parse (see nix-parse)")
    return view


@check("atticd-enabled", "architecture: the cache VM runs atticd (nixpkgs' module)")
def check_atticd_enabled(ctx: Context) -> Verdict:
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
        return ok(f"{view.name} enables services.atticd{_where(view, path)}")
    if isinstance(value, Undecided | Opaque):
        return unchecked(f"services.atticd.enable: {_describe(value)}")
    return Verdict(
        Status.FAIL,
        f"{view.name}: services.atticd.enable is {_describe(value)}{_where(view, path)}",
        f"set `services.atticd.enable = true;` in the cache VM's configuration ({view.name})",
    )


@check("atticd-env-file", "lesson 2: the token secret lives in an env file outside /nix/store")
def check_atticd_env_file(ctx: Context) -> Verdict:
    view = _cache(ctx)
    if isinstance(view, Verdict):
        return view
    path = ("services", "atticd", "environmentFile")
    value, where = view.value(path), _where(view, path)
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
        return unchecked(
            f"environmentFile is {_describe(value)}{where}: make sure it is outside /nix/store"
        )
    return Verdict(Status.FAIL, f"environmentFile {_describe(value)} {problem}{where}", fix)


@check("cache-port-open", "architecture: workers reach atticd (the module opens no port)")
def check_cache_port_open(ctx: Context) -> Verdict:
    view = _cache(ctx)
    if isinstance(view, Verdict):
        return view
    port = ctx.target.port
    enabled = view.value(("networking", "firewall", "enable"))
    if enabled is False:
        return ok(f"the firewall is off{_where(view, ('networking', 'firewall', 'enable'))}")
    if enabled is not None and enabled is not True:
        return unchecked(f"networking.firewall.enable: {_describe(enabled)}")
    path = ("networking", "firewall", "allowedTCPPorts")
    ports = view.value(path)
    if isinstance(ports, list) and port in ports:
        return ok(f"allowedTCPPorts has {port}{_where(view, path)}")
    if isinstance(ports, Undecided | Opaque) or (
        isinstance(ports, list) and any(isinstance(p, Opaque) for p in ports)
    ):
        return unchecked(f"allowedTCPPorts is {_describe(ports)}{_where(view, path)}")
    return Verdict(
        Status.FAIL,
        f"{view.name}: the firewall is on and allowedTCPPorts ({_describe(ports)}) lacks {port}",
        f"add `networking.firewall.allowedTCPPorts = [ {port} ];` to the cache VM's configuration",
    )


@check("avahi-publish", "architecture, lesson 8: the Mac resolves the cache as <host>.local")
def check_avahi_publish(ctx: Context) -> Verdict:
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
        return ok(f"avahi publishes the addresses{_where(view, wanted[2])}")
    if any(isinstance(v, Undecided | Opaque) for v in values.values()):
        shown = "; ".join(f"{k}: {_describe(v)}" for k, v in values.items())
        return unchecked(shown)
    off = ", ".join(f"{k} is {_describe(v)}" for k, v in values.items() if v is not True)
    return Verdict(
        Status.FAIL,
        f"{view.name}: {off}",
        "set `services.avahi = { enable = true; publish = { enable = true; addresses = true; }; };`"
        " in the cache VM's configuration",
    )


@check("hostname-matches-mdns", "architecture, lesson 8: <hostName>.local is the cache's name")
def check_hostname_matches_mdns(ctx: Context) -> Verdict:
    if ctx.deployment is None:
        return unchecked(NO_PARAMS)
    view = _cache(ctx)
    if isinstance(view, Verdict):
        return view
    host = ctx.deployment.cache.host
    path = ("networking", "hostName")
    name = view.value(path)
    if _is_ip(host):
        return Verdict(
            Status.WARN,
            f"params cache.host is the IP {host}: it changes when the VM reboots (lesson 8)",
            f"set cache.host to {_describe(name).strip(chr(34))}.local, the mDNS name",
        )
    if not host.endswith(".local"):
        return unchecked(f"params cache.host {host} is not an mDNS (.local) name")
    if isinstance(name, Undecided | Opaque):
        return unchecked(f"networking.hostName is {_describe(name)}")
    actual = name if isinstance(name, str) else "nixos"  # NixOS's default hostName
    if actual.lower() == host.removesuffix(".local").lower():
        return ok(f"networking.hostName = {actual}{_where(view, path)} answers {host}")
    return Verdict(
        Status.FAIL,
        f"{view.name}: networking.hostName is {actual!r}{_where(view, path)}, "
        f"so avahi answers {actual}.local, not {host}",
        f'set `networking.hostName = "{host.removesuffix(".local")}";` or cache.host: '
        f"{actual}.local in params",
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _workers(ctx: Context) -> list[SystemView] | Verdict:
    views = ctx.worker_views
    if not views:
        return unchecked(f"{ctx.worker_module} (the workers' module) not found")
    broken = [str(p) for v in views for p in v.broken]
    if broken:
        return unchecked(f"{', '.join(broken)} does not parse (see nix-parse)")
    return views


def _merged(view: SystemView, *paths: tuple[str, ...]) -> tuple[list[Literal], str, str | None]:
    """The list values at `paths` together, where they are defined, and why not decidable."""
    items: list[Literal] = []
    where: list[str] = []
    for path in paths:
        value = view.value(path)
        if isinstance(value, list):
            items.extend(value)
            where.append(view.where(path))
        elif value is not None:
            return [], "", f"{'.'.join(path)} is {_describe(value)}"
    return items, ", ".join(w for w in where if w), None


@check("worker-substituter", "Worker VM 配置: workers substitute from the cache")
def check_worker_substituter(ctx: Context) -> Verdict:
    views = _workers(ctx)
    if isinstance(views, Verdict):
        return views
    url = ctx.target.url
    note = f" [{ctx.target.assumed}]" if ctx.target.assumed else ""
    missing, by_ip, fine = [], [], []
    for view in views:
        items, where, undecided = _merged(view, SUBSTITUTERS, EXTRA_SUBSTITUTERS)
        if undecided:
            return unchecked(f"{view.name}: {undecided}")
        strings = [i for i in items if isinstance(i, str)]
        if url.rstrip("/") in {i.rstrip("/") for i in strings}:
            fine.append(f"{view.name} ({where})")
        elif any(isinstance(i, Opaque) for i in items):
            return unchecked(f"{view.name}: substituters hold expressions ({where})")
        elif ips := [i for i in strings if _same_cache_by_ip(i, ctx.target)]:
            by_ip.append(f"{view.name} uses {ips[0]} ({where})")
        else:
            missing.append(f"{view.name} ({where or 'not set'})")
    if by_ip:
        return Verdict(
            Status.FAIL,
            f"{'; '.join(by_ip)}: an IP address changes when the VM reboots (lesson 8){note}",
            f'use "{url}" (the mDNS name) in nix.settings.substituters in {ctx.worker_module}',
        )
    if missing:  # expected before the cache exists: notebook 07 adds it
        return Verdict(
            Status.WARN,
            f"nix.settings.substituters lacks {url} in {', '.join(missing)}{note}",
            f"nothing to do if the runbook sets up the workers (notebook 07 adds it); by hand "
            f'add "{url}" to nix.settings.substituters in {ctx.worker_module} '
            "(`runbook doctor --fix`)",
        )
    return ok(f"{url} is a substituter of {', '.join(fine)}{note}")


def _same_cache_by_ip(url: str, target: CacheTarget) -> bool:
    parts = urlsplit(url)
    return (
        _is_ip(parts.hostname or "")
        and parts.path.strip("/") == target.name
        and (parts.port or 80) == target.port
    )


@check("worker-trusted-key", "Worker VM 配置: workers trust the cache's current key")
def check_worker_trusted_key(ctx: Context) -> Verdict:
    views = _workers(ctx)
    if isinstance(views, Verdict):
        return views
    name = ctx.target.name
    fix = (
        f"add the key `attic cache info {name}` shows ({name}:…) to "
        f"nix.settings.trusted-public-keys in {ctx.worker_module}"
    )
    trusted: set[str] = set()
    for view in views:
        items, where, undecided = _merged(view, TRUSTED_KEYS, EXTRA_TRUSTED_KEYS)
        if undecided:
            return unchecked(f"{view.name}: {undecided}")
        keys = [i for i in items if isinstance(i, str) and i.partition(":")[0] == name]
        bad = [k for k in keys if not _is_public_key(k)]
        if bad:
            return Verdict(
                Status.FAIL,
                f"{view.name}: trusted-public-keys: {bad[0]!r} is not NAME:base64(32 bytes), "
                f"so Nix rejects every signature ({where})",
                fix,
            )
        if not keys:  # expected before the cache exists: notebook 07 adds its key
            return Verdict(
                Status.WARN,
                f"{view.name}: trusted-public-keys has no {name}: key ({where or 'not set'}): "
                "Nix would ignore the cache's paths",
                f"nothing to do if the runbook sets up the workers (notebook 07 adds it); by hand {fix}",
            )
        trusted.update(keys)
    live, reason = live_cache_key(ctx)
    shown = ", ".join(sorted(trusted))
    if live is None:
        return ok(f"the workers trust {shown}; live comparison unchecked: {reason}")
    if live in trusted:
        return ok(f"the workers trust {shown}, the live cache's key")
    return Verdict(
        Status.FAIL,
        f"the workers trust {shown} but the cache at {ctx.target.url} signs with {live} "
        "(a recreated cache: Nix silently builds locally)",
        f'replace the key with "{live}" in {ctx.worker_module}',
    )


def _is_public_key(key: str) -> bool:
    try:
        parse_public_key(key)
    except InputError:
        return False
    return True


def resolve_without_network(host: str) -> list[str]:
    """`host`'s addresses from what this machine knows without asking anyone: an IP literal,
    localhost, /etc/hosts (the lab writes its hosts there; no DNS or mDNS query is made)."""
    if _is_ip(host):
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


def live_cache_key(ctx: Context) -> tuple[str | None, str]:
    """The public key the cache serves (GET /CACHE/attic-cache-info, attic.md §5), only from
    a cache on loopback or the lab's subnet; else None and why."""
    target = ctx.target
    allowed = [
        a
        for a in resolve_without_network(target.host)
        if ipaddress.ip_address(a).is_loopback
        or (ipaddress.ip_address(a).version == 4 and ipaddress.ip_address(a) in ctx.lab_subnet)
    ]
    if not allowed:
        return None, (
            f"cache not reachable from here ({target.host} is not on loopback or the lab's "
            f"{ctx.lab_subnet}; no other address is contacted)"
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


def _makefile(ctx: Context) -> Makefile | Verdict:
    if ctx.makefile is None:
        return unchecked("no Makefile in the checkout")
    return ctx.makefile


@check("makefile-disk-device", "部署流程 3: vm/bootstrap0 partitions the VM's disk")
def check_makefile_disk_device(ctx: Context) -> Verdict:
    make = _makefile(ctx)
    if isinstance(make, Verdict):
        return make
    recipe = make.recipes.get("vm/bootstrap0")
    if recipe is None:
        return unchecked("the Makefile has no vm/bootstrap0 target")
    used: dict[str, int] = {}
    for number, line in recipe:
        for device in _devices(line, make):
            used.setdefault(device, number)
    if not used:
        return unchecked("vm/bootstrap0 names no /dev disk")
    dep = ctx.deployment
    vms = (
        {vm.name: vm.disk_interface for vm in dep.vms}
        if dep
        else {"(UTM default)": DiskInterface.VIRTIO}
    )
    wrong = [
        f"{name} has a {iface.value} disk ({iface.device})"
        for name, iface in vms.items()
        if set(used) != {iface.device}
    ]
    shown = ", ".join(f"{dev} (Makefile:{line})" for dev, line in used.items())
    if not wrong:
        return ok(f"vm/bootstrap0 partitions {shown}, the VMs' disk")
    fix = (
        "create the disk with interface SCSI in UTM (disk_interface: scsi in params), or change "
        f"{next(iter(used))} in vm/bootstrap0 to the VM's device (utm-makefile-keys.md §1)"
    )
    if dep is None:
        return Verdict(
            Status.WARN,
            f"vm/bootstrap0 partitions {shown}; {NO_PARAMS}: UTM's default VirtIO disk is /dev/vda",
            fix,
        )
    return Verdict(Status.FAIL, f"vm/bootstrap0 partitions {shown} but {'; '.join(wrong)}", fix)


def _devices(line: str, make: Makefile) -> list[str]:
    """Whole-disk devices in a recipe line, `$(VAR)` expanded from the Makefile's default."""
    found: list[str] = []
    for match in _DEVICE.finditer(line):
        name = match[2] or match[3]
        var = make.on_mac(name) if name else None
        device = "/dev/" + (var.value.strip() if var else match[1])
        if device.startswith("/dev/nvme"):
            device = re.sub(r"p\d+$", "", device)
        elif re.match(r"^/dev/[sv]d[a-z]", device):
            device = device.rstrip("0123456789")
        else:
            continue
        found.append(device)
    return found


@check("makefile-password-ssh", "lesson 7: every ssh/rsync of the Makefile asks a password")
def check_makefile_password_ssh(ctx: Context) -> Verdict:
    make = _makefile(ctx)
    if isinstance(make, Verdict):
        return make
    options = [v for v in make.variables if v.name == "SSH_OPTIONS"]
    off = [v for v in options if "PubkeyAuthentication=no" in v.value.replace(" ", "")]
    if off:
        return Verdict(
            Status.WARN,
            f"Makefile:{off[0].line}: SSH_OPTIONS has PubkeyAuthentication=no: key "
            "authentication is off, every ssh and rsync asks a password",
            "nothing to do: the runbook supplies the password through SSH_ASKPASS; drop "
            "`-o PubkeyAuthentication=no` to log in with your key instead",
        )
    return ok("SSH_OPTIONS leaves key authentication on" if options else "no SSH_OPTIONS")


@check("makefile-nixname-default", "部署流程: NIXNAME names the VM's configuration")
def check_makefile_nixname_default(ctx: Context) -> Verdict:
    make = _makefile(ctx)
    if isinstance(make, Verdict):
        return make
    var = make.on_mac("NIXNAME")
    if var is None:
        return ok("NIXNAME has no default on a Mac: the runbook passes NIXNAME=<vm>")
    value = var.value.strip()
    if value in ctx.systems:
        return ok(f"Makefile:{var.line}: NIXNAME defaults to {value}, a nixosConfiguration")
    return Verdict(
        Status.WARN,
        f"Makefile:{var.line}: on a Mac NIXNAME defaults to {value}, which is not one of "
        "flake.nix's nixosConfigurations (a darwin configuration)",
        "nothing to do: the runbook passes NIXNAME=<vm name> to every make target; by hand "
        "use `make vm/switch NIXNAME=vm-aarch64-utm`",
    )


def _each_system(ctx: Context, judge: Callable[[SystemView], Verdict]) -> Verdict:
    """The worst verdict over the cache and worker systems (all of them named in it)."""
    views = ctx.all_views
    if not views:
        why = f" ({NO_PARAMS})" if ctx.deployment is None else ""
        return unchecked(f"no VM configuration found{why}")
    verdicts = [(view.name, judge(view)) for view in views]
    order = [Status.FAIL, Status.UNCHECKED, Status.WARN, Status.OK]
    worst = min((v for _, v in verdicts), key=lambda v: order.index(v.status))
    by_finding: dict[str, list[str]] = {}
    for name, verdict in verdicts:
        if verdict.status is worst.status:
            by_finding.setdefault(verdict.finding, []).append(name)
    shown = "; ".join(f"{', '.join(names)}: {text}" for text, names in by_finding.items())
    return Verdict(worst.status, shown, worst.fix)


@check("root-login-after-switch", "lesson 7: root cannot log in after vm/switch")
def check_root_login_after_switch(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("services", "openssh", "settings", "PermitRootLogin")
        permit, mutable = view.value(path), view.value(("users", "mutableUsers"))
        if isinstance(permit, Undecided | Opaque) or isinstance(mutable, Undecided | Opaque):
            return unchecked(
                f"PermitRootLogin {_describe(permit)}, mutableUsers {_describe(mutable)}"
            )
        reasons = []
        if permit != "yes":
            shown = (
                _describe(permit) if permit is not None else 'not set (NixOS: "prohibit-password")'
            )
            reasons.append(f"PermitRootLogin {shown}{_where(view, path)}")
        if mutable is False:
            reasons.append(f"users.mutableUsers = false{_where(view, ('users', 'mutableUsers'))}")
        if not reasons:
            return ok("root keeps its password login")
        return Verdict(
            Status.WARN,
            f"{', '.join(reasons)}: root's password login is gone after the switch",
            "nothing to do: after vm/switch the runbook logs in as the user with the key; make "
            "sure users.users.<user>.openssh.authorizedKeys.keys has it",
        )

    return _each_system(ctx, judge)


def _user_of(ctx: Context, view: SystemView) -> str | None:
    if view.user:
        return view.user
    users = [u for u in view.names_under(("users", "users")) if u != "root"]
    return ctx.user or (users[0] if len(users) == 1 else None)


@check("login-shell-fish", "lesson 5: fish parses what ssh sends")
def check_login_shell_fish(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        user = _user_of(ctx, view)
        if user is None:
            return unchecked("no user found (" + NO_PARAMS + ")")
        path: tuple[str, ...] = ("users", "users", user, "shell")
        shell = view.value(path)
        if shell is None:
            path = ("users", "defaultUserShell")
            shell = view.value(path)
        if isinstance(shell, Undecided):
            return unchecked(f"{user}'s shell: {shell.reason}")
        if shell is not None and "fish" in _describe(shell):
            return Verdict(
                Status.WARN,
                f"{user}'s login shell is fish{_where(view, path)}",
                "nothing to do: the runbook sends every remote command as bash on stdin; by "
                "hand wrap commands in `bash -c '…'`",
            )
        return ok(f"{user}'s shell is {_describe(shell)}")

    return _each_system(ctx, judge)


@check("sudo-nopasswd", "lesson 7: sudo without a password for wheel")
def check_sudo_nopasswd(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        user = _user_of(ctx, view)
        if user is None:
            return unchecked("no user found (" + NO_PARAMS + ")")
        groups = view.value(("users", "users", user, "extraGroups"))
        if (
            isinstance(groups, list)
            and "wheel" not in groups
            and not any(isinstance(g, Opaque) for g in groups)
        ):
            return Verdict(
                Status.FAIL,
                f"{user} is not in wheel{_where(view, ('users', 'users', user, 'extraGroups'))}: no sudo",
                f'add "wheel" to users.users.{user}.extraGroups',
            )
        path = ("security", "sudo", "wheelNeedsPassword")
        needs = view.value(path)
        if needs is False:
            return ok(f"wheelNeedsPassword = false{_where(view, path)}")
        if isinstance(needs, Undecided | Opaque):
            return unchecked(f"wheelNeedsPassword {_describe(needs)}")
        return Verdict(
            Status.WARN,
            f"security.sudo.wheelNeedsPassword is {_describe(needs)}: sudo asks {user}'s password",
            "set `security.sudo.wheelNeedsPassword = false;`, or give the runbook the sudo "
            "password (secret store)",
        )

    return _each_system(ctx, judge)


@check("nic-name-pinned", "lesson 8: DHCP only on a named interface")
def check_nic_name_pinned(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("networking", "useDHCP")
        global_dhcp = view.value(path)
        if global_dhcp is not False:
            if isinstance(global_dhcp, Undecided | Opaque):
                return unchecked(f"networking.useDHCP {_describe(global_dhcp)}")
            return ok(f"DHCP on every interface (networking.useDHCP {_describe(global_dhcp)})")
        pinned = [
            f"{nic}{_where(view, ('networking', 'interfaces', nic, 'useDHCP'))}"
            for nic in view.names_under(("networking", "interfaces"))
            if view.value(("networking", "interfaces", nic, "useDHCP")) is True
        ]
        what = f"only on {', '.join(pinned)}" if pinned else "on no interface"
        return Verdict(
            Status.WARN,
            f"networking.useDHCP = false{_where(view, path)}, DHCP {what}: a NIC "
            "named otherwise gets no address after the switch",
            "check the name with `ip link` on the VM's console; or set "
            "`networking.useDHCP = true;` (lesson 8: the runbook finds the VM by mDNS)",
        )

    return _each_system(ctx, judge)


@check("guest-agent", "lesson 8: utmctl ip-address needs the QEMU guest agent")
def check_guest_agent(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("services", "qemuGuest", "enable")
        value = view.value(path)
        if value is True:
            return ok(f"services.qemuGuest.enable{_where(view, path)}")
        if isinstance(value, Undecided | Opaque):
            return unchecked(f"services.qemuGuest.enable {_describe(value)}")
        return Verdict(
            Status.WARN,
            f"services.qemuGuest.enable is {_describe(value)}: `utmctl ip-address` cannot answer",
            "set `services.qemuGuest.enable = true;` if you want utmctl ip-address; the "
            "runbook finds the VM by mDNS and ARP anyway (utm-makefile-keys.md §7)",
        )

    return _each_system(ctx, judge)


@check("ssh-key", "lesson 7: after the switch only the user's key logs in")
def check_ssh_key(ctx: Context) -> Verdict:
    if ctx.deployment is None:
        return unchecked(NO_PARAMS)
    key = ctx.deployment.identity
    if not key.is_file():
        return Verdict(
            Status.FAIL,
            f"identity {key} does not exist",
            f"create it: ssh-keygen -t ed25519 -f {key}",
        )
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        return Verdict(
            Status.FAIL,
            f"identity {key} has mode {mode:04o}: ssh refuses a private key others can read",
            f"chmod 600 {key}",
        )
    public = key.with_name(key.name + ".pub")
    if not public.is_file():
        return Verdict(
            Status.FAIL,
            f"{public} (the public half) does not exist",
            f"ssh-keygen -y -f {key} > {public}",
        )
    if not _halves_match(key, public):
        return Verdict(
            Status.FAIL,
            f"{public} is not the public half of {key}",
            f"ssh-keygen -y -f {key} > {public}",
        )
    return ok(f"{key} (mode {mode:04o}) and {public.name}")


def _halves_match(key: Path, public: Path) -> bool:
    """False only when both halves load and differ (a passphrase-protected key is not read)."""
    from cryptography.hazmat.primitives import serialization

    try:
        private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        derived = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    except (ValueError, TypeError, OSError):
        return True
    written = public.read_bytes().split()[:2]
    return written == derived.split()[:2]


def _utmctl(ctx: Context) -> Path:
    return ctx.deployment.utm.utmctl if ctx.deployment is not None else DEFAULT_UTMCTL


@check("utmctl", "部署流程 1: UTM's command line drives the VMs")
def check_utmctl(ctx: Context) -> Verdict:
    if ctx.system != "Darwin":
        return unchecked(NOT_MACOS)
    utmctl = _utmctl(ctx)
    if not utmctl.is_file():
        return Verdict(
            Status.FAIL,
            f"{utmctl} not found",
            "install UTM (https://mac.getutm.app) or set utm.utmctl in params",
        )
    result = local.run([str(utmctl), "list"], check=False, timeout=30)
    if result.exit_code != 0 or "Error" in result.stderr or "NOTE:" in result.stderr:
        return Verdict(
            Status.FAIL,
            f"`utmctl list` did not answer: {tail(result.stderr or result.stdout, 2)}",
            "run from a logged-in session (not over SSH) and allow Automation for UTM",
        )
    return ok(f"{utmctl} answers ({max(len(result.stdout.splitlines()) - 1, 0)} VMs)")


def utm_version(utmctl: Path) -> tuple[int, ...] | None:
    """UTM's version from UTM.app's Info.plist (…/UTM.app/Contents/MacOS/utmctl)."""
    try:
        info = plistlib.loads((utmctl.parents[1] / "Info.plist").read_bytes())
        return tuple(int(p) for p in str(info["CFBundleShortVersionString"]).split("."))
    except (OSError, KeyError, ValueError, IndexError, plistlib.InvalidFileException):
        return None


def _backend(ctx: Context) -> str:
    return ctx.deployment.console.backend if ctx.deployment is not None else "utm-input"


@check("utm-version", "lesson 4: UTM >= 4.7.2 types on the console without Hammerspoon")
def check_utm_version(ctx: Context) -> Verdict:
    if ctx.system != "Darwin":
        return unchecked(NOT_MACOS)
    version = utm_version(_utmctl(ctx))
    if version is None:
        return Verdict(
            Status.FAIL, "UTM's version unreadable (no UTM.app Info.plist)", "install UTM >= 4.7.2"
        )
    shown = ".".join(map(str, version))
    if version >= UTM_INPUT_MIN:
        return ok(f"UTM {shown}")
    status = Status.FAIL if _backend(ctx) == "utm-input" else Status.WARN
    return Verdict(
        status,
        f"UTM {shown} < 4.7.2: no `input keystroke` for the utm-input backend",
        "update UTM, or use console.backend: hammerspoon",
    )


@check("console-backend", "lesson 4: the console backend can type into the VM")
def check_console_backend(ctx: Context) -> Verdict:
    if ctx.system != "Darwin":
        return unchecked(NOT_MACOS)
    backend = _backend(ctx)
    if backend == "hammerspoon":
        if local.which("hs") is None:
            return Verdict(
                Status.FAIL,
                "`hs` (Hammerspoon's CLI) is not on PATH",
                'in Hammerspoon: hs.ipc.cliInstall("/opt/homebrew")',
            )
        result = local.run(["hs", "-c", "return 1"], check=False, timeout=10)
        if result.exit_code != 0:
            return Verdict(
                Status.FAIL,
                f"`hs -c` exits {result.exit_code} (69: Hammerspoon not running or hs.ipc not loaded)",
                'add require("hs.ipc") to ~/.hammerspoon/init.lua and reload',
            )
        return ok("hammerspoon: hs answers through hs.ipc")
    if backend == "utm-input":
        if local.which("osascript") is None:
            return Verdict(
                Status.FAIL, "osascript not found", "the utm-input backend needs macOS's osascript"
            )
        return ok("utm-input: osascript present (UTM's version: see utm-version)")
    if backend == "serial":
        port = ctx.deployment.console.serial_port if ctx.deployment else None
        if port is None:
            return Verdict(
                Status.FAIL,
                "console.backend serial without console.serial_port",
                "set console.serial_port",
            )
        return ok(f"serial console on TCP port {port}")
    import importlib.util

    if importlib.util.find_spec("Quartz") is None:
        return Verdict(
            Status.FAIL,
            "quartz backend: pyobjc's Quartz is not installed",
            "pip install pyobjc-framework-Quartz",
        )
    return ok("quartz: pyobjc Quartz importable")


# -- running them -------------------------------------------------------------------------------


def run_context(ctx: Context) -> list[Finding]:
    """Every check on one context; a check that cannot read what it needs says unchecked."""
    findings: list[Finding] = []
    for item in CHECKS:
        try:
            verdict = item.run(ctx)
        except (RunbookError, OSError) as exc:
            verdict = unchecked(f"could not read what it needs: {exc}")
        findings.append(Finding(item.id, item.lesson, verdict.status, verdict.finding, verdict.fix))
    return findings


def run_checks(deployment: Deployment | None, nixos_config: Path) -> list[Finding]:
    """Every check against a nixos-config checkout, with or without a deployment's params.

    Raises InputError when `nixos_config` is not a checkout (no flake.nix).
    """
    return run_context(Context(deployment, nixos_config))


def failed(findings: Sequence[Finding]) -> bool:
    return any(f.status is Status.FAIL for f in findings)


def as_dataframe(findings: Sequence[Finding]) -> pandas.DataFrame:
    """The findings as a table (columns check, lesson, status, finding, fix) for notebook 00."""
    import pandas

    return pandas.DataFrame(
        [f.as_json() for f in findings], columns=["check", "lesson", "status", "finding", "fix"]
    )


def render_json(findings: Sequence[Finding]) -> str:
    return json.dumps([f.as_json() for f in findings], indent=2, ensure_ascii=False)


def render_text(findings: Sequence[Finding], notes: Sequence[str] = ()) -> str:
    width = max((len(f.check) for f in findings), default=10) + 2
    lines = [f"note: {n}" for n in notes]
    lines.append(f"{'STATUS':<11}{'CHECK':<{width}}FINDING")
    for f in findings:
        lines.append(f"{f.status!s:<11}{f.check:<{width}}{f.finding}")
        if f.fix and f.status is not Status.OK:
            lines.append(f"{'':<11}{'':<{width}}fix: {f.fix}")
    counts = {s: sum(f.status is s for f in findings) for s in Status}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


# -- the safe fixes (--fix / --diff) -----------------------------------------------------------


FIXABLE: Final = frozenset({"attic-flake-input", "attic-module-import", "worker-substituter"})


def plan_fixes(
    ctx: Context, findings: Sequence[Finding], checks: Collection[str] = FIXABLE
) -> Plan:
    """Edits for lesson 1 (attic input, its references, the lock) and the workers' cache
    substituter, for those of `checks` that warn or fail; every other finding needs a
    decision the user makes."""
    failing = {
        f.check for f in findings if f.status in (Status.FAIL, Status.WARN) and f.check in checks
    }
    plan = Plan()
    if failing & {"attic-flake-input", "attic-module-import"} and ctx.flake is not None:
        plan.extend(plan_attic_flake_removal(ctx.tree))
        _plan_lock(ctx, ctx.flake, plan)
    worker = ctx.parsed.get(ctx.worker_module)
    if "worker-substituter" in failing and worker is not None:
        # plan_list_item returns None when the URL is there; `attic use` puts it first (attic.md §4)
        edit = plan_list_item(worker, SUBSTITUTERS, ctx.target.url, first=True)
        if edit is not None:
            plan.edits.setdefault(ctx.worker_module, []).append(edit)
    return plan


def _plan_lock(ctx: Context, flake: NixFile, plan: Plan) -> None:
    lock_path = ctx.root / "flake.lock"
    if not lock_path.is_file():
        return
    lock = read_lock(lock_path)
    stale = stale_lock_inputs(lock, declared_inputs(flake) - set(attic_inputs(flake)))
    if stale:
        plan.rewrites[Path("flake.lock")] = lock_text(prune_lock(lock, stale))


def planned_changes(
    deployment: Deployment | None, nixos_config: Path, checks: Collection[str] = FIXABLE
) -> list[Change]:
    """The new content of each file `runbook doctor --fix` would edit for `checks` (every
    one checked to parse), without writing anything; `nixcfg.write_changes` writes them."""
    ctx = Context(deployment, nixos_config)
    return ctx.tree.changes(plan_fixes(ctx, run_context(ctx), checks))
