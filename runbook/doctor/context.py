"""What the doctor's checks read, gathered once: the nixos-config checkout (its systems, the
cache and worker modules, the Makefile), the params and this machine; and how a finding
names a Nix value and where it is set."""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final

from runbook.lab.config import LabParams
from runbook.makefile import Makefile
from runbook.nixcfg import (
    ConfigTree,
    FlakeSystem,
    Literal,
    NixPath,
    Opaque,
    SystemView,
    Undecided,
    flake_systems,
    modules_view,
    system_view,
)
from runbook.nixfile import NixFile
from runbook.params import Deployment

logger: Final = logging.getLogger(__name__)

# The handbook's defaults (handbook.zh.md §架构, §当前缓存信息): used when no params are given.
DEFAULT_WORKER_MODULE: Final = Path("machines/vm-shared.nix")
DEFAULT_CACHE_HOST: Final = "nixos-utm-cache.local"
DEFAULT_CACHE_NAME: Final = "main"
ATTICD_PORT: Final = 8080  # atticd listens on [::]:8080 unless configured (attic.md §3)
LAB_SUBNET: Final = LabParams.model_fields["subnet"].default  # runbook/lab/config.py

NO_PARAMS: Final = "no params given"


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


# -- how a finding names a value -----------------------------------------------------------------


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
