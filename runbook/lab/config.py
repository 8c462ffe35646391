"""The lab's parameters and the names derived from them.

A lab file (lab/lab.yaml, lab/lab-live.yaml) is a deployment's params without what the lab
makes (checkout, key, known_hosts, the Mac's programs), plus a `lab:` section: the hosts that
play its VMs (host i plays the VM named its `nixname`). `runbook lab up` reads it and writes
the deployment's ordinary params file (runbook/lab/environment.py).
"""

from __future__ import annotations

import ipaddress
import logging
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runbook.core.errors import InputError

logger: Final = logging.getLogger(__name__)

DEFAULT_PARAMS: Final = Path(__file__).resolve().parents[2] / "lab" / "lab.yaml"
NETNS_PREFIX: Final = "rblab-"  # ip netns names: rblab-<host>
FIRST_HOST: Final = 11  # host i gets <subnet>.(11 + i); the bridge gets .1
SSH_PORT: Final = 22


class Phase(StrEnum):
    LIVE = "live"  # the NixOS ISO: root logs in with a password, no user yet
    INSTALLED = "installed"  # after a switch to machines/vm-shared.nix: root refused, user+key


class HostSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    nixname: str = "vm-aarch64-utm"
    phase: Phase = Phase.INSTALLED


class LabParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Path("/var/lib/runbook-lab")
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.231.0.0/24")
    bridge: str = Field(default="rblab0", pattern=r"^[a-z][a-z0-9]{0,11}$")
    user: str = "jqwang"
    shell: str = "/usr/bin/fish"
    passwords: dict[str, str] = Field(default_factory=lambda: {"root": "root"})
    identity: Path | None = None
    hosts: tuple[HostSpec, ...] = Field(min_length=1)

    @field_validator("hosts")
    @classmethod
    def _unique(cls, hosts: tuple[HostSpec, ...]) -> tuple[HostSpec, ...]:
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise ValueError("host names must be unique")
        return hosts

    @property
    def identity_path(self) -> Path:
        return self.identity or self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    def address(self, index: int) -> str:
        """Host `index`'s address when the lab comes up (its first DHCP lease)."""
        return str(self.subnet.network_address + FIRST_HOST + index)

    def lease_address(self, index: int) -> str:
        """Host `index`'s address once it boots as another DHCP client (the installed system
        after the live ISO, see hostinit.renew_lease): the next free one after every host's
        first lease, as a DHCP server hands out its pool."""
        return str(self.subnet.network_address + FIRST_HOST + len(self.hosts) + index)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name


def load(path: Path | str | None = None) -> LabParams:
    """Read the `lab:` section of a lab file (lab/lab.yaml by default)."""
    return load_file(path)[0]


def load_file(path: Path | str | None = None) -> tuple[LabParams, dict[str, Any]]:
    """A lab file's `lab:` section and the rest (the deployment it plays, for the params)."""
    source = Path(path) if path else DEFAULT_PARAMS
    try:
        data: Any = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("lab"), dict):
        raise InputError(f"{source}: expected a `lab:` mapping with `hosts:`")
    rest = {k: v for k, v in data.items() if k != "lab"}
    return from_mapping(data["lab"], str(source)), rest


def from_mapping(data: dict[str, Any], source: str = "lab params") -> LabParams:
    try:
        params = LabParams.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InputError(f"{source}: lab.{where}: {err['msg']}") from None
    # every host has two leases: the one it comes up with, and the installed system's
    if 2 * len(params.hosts) > params.subnet.num_addresses - FIRST_HOST - 1:
        raise InputError(f"{source}: lab.hosts: too many hosts for {params.subnet}")
    return params
