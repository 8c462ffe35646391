"""What the doctor's checks read, gathered once: the nixos-config checkout (its systems, the
cache and worker modules, the Makefile), the params and this machine; and how a finding
names a Nix value and where it is set."""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final

from tree_sitter import Node

from runbook.core.params import VM, Deployment
from runbook.nix.makefile import Makefile
from runbook.nix.nixcfg import (
    ConfigTree,
    FlakeSystem,
    Literal,
    NixPath,
    Opaque,
    SystemView,
    Undecided,
    flake_systems,
    modules_view,
)
from runbook.nix.nixfile import NixFile, string_value

logger: Final = logging.getLogger(__name__)

# The handbook's defaults (handbook.zh.md §架构, §当前缓存信息): used when no params are given.
DEFAULT_WORKER_MODULE: Final = Path("machines/vm-shared.nix")
DEFAULT_CACHE_HOST: Final = "nixos-utm-cache.local"
DEFAULT_CACHE_NAME: Final = "main"
ATTICD_PORT: Final = 8080  # atticd listens on [::]:8080 unless configured (attic.md §3)

NO_PARAMS: Final = "no params given"
_ATTRSETS: Final = frozenset({"attrset_expression", "rec_attrset_expression"})
CONFIGURATIONS: Final = ("outputs", "nixosConfigurations")
NOT_A_SYSTEM: Final = "is not one of flake.nix's nixosConfigurations"
# Options nixpkgs renamed with mkRenamedOptionModule: the old name still sets the new one
# (nixos/modules/services/networking/atticd.nix imports the credentialsFile rename).
RENAMED: Final[dict[tuple[str, ...], tuple[str, ...]]] = {
    ("services", "atticd", "environmentFile"): ("services", "atticd", "credentialsFile"),
}


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


class DoctorContext:
    """The checkout, the params and this machine, as the checks read them."""

    def __init__(
        self,
        deployment: Deployment | None,
        nixos_config: Path,
        *,
        system: str | None = None,
        vm_subnet: ipaddress.IPv4Network | None = None,
        deploy_runs: frozenset[str] = frozenset(),
    ) -> None:
        self.deployment = deployment
        # the notebooks (by number, "07") a deploy runs after this check: a finding a later
        # notebook fixes (07 replaces the workers' key) is a warning there, not a failure
        self.deploy_runs = deploy_runs
        self.root = nixos_config
        self.tree = ConfigTree(nixos_config)  # InputError when there is no flake.nix
        self.system = system or platform.system()
        # the bridged LAN the VMs are on, when the params name it (utm.bridged_subnet): the
        # live cache is asked there or on loopback, nowhere else
        bridged = deployment.utm.bridged_subnet if deployment is not None else None
        self.vm_subnet = vm_subnet or bridged
        self.parsed = self.tree.parsed()

    @property
    def flake(self) -> NixFile | None:
        return self.parsed.get(Path("flake.nix"))

    @cached_property
    def systems(self) -> dict[str, FlakeSystem]:
        return flake_systems(self.flake) if self.flake is not None else {}

    @cached_property
    def systems_listed(self) -> bool:
        """Whether flake.nix writes its nixosConfigurations out one by one (`name = …;`), so
        a name missing from `systems` is really not there; False when they come from a call
        (`nixosConfigurations = lib.genAttrs …`) or none are found."""
        flake = self.flake
        if flake is None or not self.systems:
            return False
        return all(b.value.type in _ATTRSETS for b in flake.find(CONFIGURATIONS))

    @cached_property
    def machine_names(self) -> dict[str, str]:
        """Each system's machine file name: the string `mkSystem "NAME" { … }` is called with
        (lib/mksystem.nix loads ../machines/NAME.nix), else the attribute name."""
        flake = self.flake
        found = {name: name for name in self.systems}
        if flake is None:
            return found
        for b in flake.under(CONFIGURATIONS):
            if len(b.path) == 3 and b.path[2] in found:
                first = _first_argument(b.value)
                text = string_value(first, flake.source) if first is not None else None
                if text:
                    found[b.path[2]] = text
        return found

    def machine_file(self, name: str) -> Path:
        return Path("machines") / f"{self.machine_names.get(name, name)}.nix"

    def buildable(self, name: str) -> str | None:
        """Why the checkout cannot build system `name` as NIXNAME, or None when it can."""
        if self.systems_listed and name not in self.systems:
            return NOT_A_SYSTEM
        machine = self.machine_file(name)
        if not (self.root / machine).is_file():
            return f"{machine} ({name}'s machine file, loaded by lib/mksystem.nix) not found"
        return None

    def listed_systems(self) -> str:
        return f"flake.nix has {', '.join(sorted(self.systems))}"

    @cached_property
    def cache_system(self) -> str | None:
        """The cache VM's configuration: params `cache.vm`, else the flake's `*-cache` one."""
        if self.deployment is not None:
            return self.deployment.cache.vm
        names = sorted(n for n in self.systems if n.endswith("-cache"))
        return names[0] if names else None

    def _view(self, name: str) -> SystemView:
        """System `name` as lib/mksystem.nix assembles it (utm-makefile-keys.md §1): its
        machine file first, then the user file of the user the flake names for it, then the
        modules mksystem lists itself, and every file they import."""
        known = self.systems.get(name)
        user = known.user if known is not None and known.user else self.user
        start = [self.machine_file(name)]
        if user:
            start.append(Path("users") / user / "nixos.nix")
        start.append(Path("lib/mksystem.nix"))
        return modules_view(self.tree, name, start, user)

    @cached_property
    def cache_view(self) -> SystemView | str:
        """The cache VM's modules, or why there are none."""
        name = self.cache_system
        if name is None:
            return "no *-cache configuration in flake.nix's nixosConfigurations (" + NO_PARAMS + ")"
        problem = self.buildable(name)
        if problem == NOT_A_SYSTEM:
            return f"the cache VM {name} {NOT_A_SYSTEM} ({self.listed_systems()})"
        return problem or self._view(name)

    @cached_property
    def worker_systems(self) -> list[str]:
        """The worker VMs' configurations: params' workers, else every nixosConfiguration of
        the flake but the cache's; those the checkout cannot build are left out (the check
        vm-configurations names them)."""
        if self.deployment is not None:
            names = [vm.name for vm in self.deployment.workers]
        else:
            names = [n for n in self.systems if n != self.cache_system]
        return [n for n in names if self.buildable(n) is None]

    def unbuildable_vms(self) -> list[tuple[VM, str]]:
        """The params' worker VMs the checkout cannot build, each with the reason."""
        if self.deployment is None:
            return []
        found = [(vm, self.buildable(vm.name)) for vm in self.deployment.workers]
        return [(vm, why) for vm, why in found if why is not None]

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

    @cached_property
    def identity_key(self) -> tuple[str, str] | str | None:
        """The public half of params `identity` as (type, base64 blob); why it cannot be
        read; None without params. Derived from the private key where it loads (no
        passphrase), else read from IDENTITY.pub."""
        if self.deployment is None:
            return None
        key = self.deployment.identity
        try:
            from cryptography.hazmat.primitives import serialization

            private = serialization.load_ssh_private_key(key.read_bytes(), password=None)
            line = private.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            found = parse_public_key(line.decode())
        except (ValueError, TypeError, OSError, AttributeError):
            found = None
        if found is None:
            try:
                found = parse_public_key(key.with_name(key.name + ".pub").read_text())
            except OSError:
                found = None
        return found or f"the public half of identity {key} cannot be read (see ssh-key)"

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


# OpenSSH public key types (sshd(8) AUTHORIZED_KEYS FILE FORMAT)
_KEY_TYPE: Final = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)(-cert-v01@openssh\.com)?$"
)


def parse_public_key(line: str) -> tuple[str, str] | None:
    """(type, base64 blob) of an OpenSSH public key or authorized_keys line (options before
    the key, a comment after it), None when it holds no key."""
    words = line.split()
    for i, word in enumerate(words[:-1]):
        if _KEY_TYPE.match(word):
            return word, words[i + 1]
    return None


def _first_argument(node: Node) -> Node | None:
    """The first argument of a call such as `mkSystem "name" { … }` (None if not a call)."""
    if node.type != "apply_expression":
        return None
    while True:
        function = node.child_by_field_name("function")
        if function is None or function.type != "apply_expression":
            return node.child_by_field_name("argument")
        node = function


def _listen_port(view: SystemView) -> int:
    listen = view.value(("services", "atticd", "settings", "listen"))
    if isinstance(listen, str) and listen.rpartition(":")[2].isdigit():
        return int(listen.rpartition(":")[2])
    return ATTICD_PORT


# -- how a finding names a value -----------------------------------------------------------------


def option_path(view: SystemView, path: tuple[str, ...]) -> tuple[str, ...]:
    """`path`, or the old name nixpkgs still accepts for it (RENAMED) when only that is set."""
    old = RENAMED.get(path)
    if old is not None and not view.definitions(path) and view.definitions(old):
        return old
    return path


def where_set(view: SystemView, path: Sequence[str]) -> str:
    """` (file:line)` where `view` sets the option at `path`, for a finding; empty if unset."""
    at = view.where(path)
    return f" ({at})" if at else ""


def describe(value: Literal | Undecided | None) -> str:
    """An option's value as a finding shows it: Nix literals, or why it is not decidable."""
    if value is None:
        return "not set"
    if isinstance(value, Undecided):
        return value.reason
    if isinstance(value, Opaque | NixPath):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)
