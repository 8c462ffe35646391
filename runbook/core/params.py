"""Deployment parameters: one YAML per deployment, validated before anything runs.

Every error names the file, the key and what was expected, in one line (exit 2).
Paths that must exist are checked by `check_paths`: a deploy fails on them, a plan only
lists them as unchecked (the nixos-config checkout is on the user's Mac, not here).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runbook.core.errors import InputError
from runbook.core.models import Deadlines, Host

_LABEL: Final = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
HOSTNAME_RE: Final = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
NAME_RE: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value) or len(value) > 253:
        raise ValueError("expected an IP address or a host name such as nixos-utm-cache.local")
    return value


class Role(StrEnum):
    CACHE = "cache"
    WORKER = "worker"

    def __str__(self) -> str:
        return self.value


class DiskInterface(StrEnum):
    VIRTIO = "virtio"  # UTM's default on the QEMU virt machine: /dev/vda
    SCSI = "scsi"
    USB = "usb"
    NVME = "nvme"

    @property
    def device(self) -> str:
        return {
            "virtio": "/dev/vda",
            "scsi": "/dev/sda",
            "usb": "/dev/sda",
            "nvme": "/dev/nvme0n1",
        }[self.value]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VM(_Strict):
    name: str = Field(pattern=NAME_RE, description="UTM VM name = the NixOS configuration name")
    role: Role
    address: str = Field(description="mDNS name or IP; resolved again on every run (lesson 8)")
    port: int = Field(default=22, ge=1, le=65535)
    mac: str | None = Field(default=None, pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")
    disk_interface: DiskInterface = DiskInterface.VIRTIO
    reference: bool = Field(
        default=False,
        description="another deployment's VM (e.g. the cache a worker uses): read, never "
        "created, typed on, installed or switched by this one",
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, v: str) -> str:
        return _address(v)


class Bootstrap(_Strict):
    """The live ISO's identity (lesson 7): root with a password set on the console."""

    user: str = "root"
    password_secret: str = Field(
        default="live-root-password",
        pattern=NAME_RE,
        description="name in the secret store; never the password",
    )
    password_env: str = Field(default="RUNBOOK_ROOT_PASSWORD", pattern=r"^[A-Z_][A-Z0-9_]*$")


class Cache(_Strict):
    vm: str = Field(pattern=NAME_RE, description="the VM that runs atticd")
    host: str = Field(description="the name workers use, e.g. nixos-utm-cache.local")
    port: int = Field(default=8080, ge=1, le=65535)
    name: str = Field(default="main", pattern=r"^[a-z0-9][a-z0-9_-]{0,49}$")
    push_jobs: int = Field(default=4, ge=1, le=64)
    upstream_filter: bool = Field(
        default=True, description="attic's default: skip cache.nixos.org paths"
    )
    rotate_token_secret: bool = False
    token_secret: str = Field(default="attic-token-secret", pattern=NAME_RE)
    admin_token: str = Field(default="attic-admin-token", pattern=NAME_RE)

    @field_validator("host")
    @classmethod
    def _check_host(cls, v: str) -> str:
        return _address(v)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/{self.name}"


class Utm(_Strict):
    """UTM on the Mac: where its programs are, the ISO, the bridged network. The programs run
    on macOS, or wherever the configured paths exist (runbook.mac.utm.can_run)."""

    utmctl: Path = Path("/Applications/UTM.app/Contents/MacOS/utmctl")
    osascript: Path = Field(
        default=Path("/usr/bin/osascript"), description="runs UTM's AppleScript (§3)"
    )
    iso: Path | Literal["auto"] | None = Field(
        default=None,
        description="the NixOS installer ISO, or `auto`: the minimal aarch64 ISO of "
        "iso_release, downloaded once and checked (runbook.mac.iso)",
    )
    iso_release: str = Field(
        default="26.05",
        pattern=r"^\d{2}\.\d{2}$",
        description="the NixOS release `iso: auto` downloads (the handbook's nixos-26.05)",
    )
    iso_mirror: str = Field(
        default="https://channels.nixos.org",
        pattern=r"^https?://[^\s]+$",
        description="where `iso: auto` downloads from ($RUNBOOK_ISO_MIRROR overrides it)",
    )
    network: str = Field(default="bridged", pattern=r"^(bridged|shared)$")
    host_interface: str = Field(
        default="en0",
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$",
        description="the Mac's interface the VMs are bridged to: lesson 8's sweep and call-back",
    )
    bridged_subnet: ipaddress.IPv4Network | None = Field(
        default=None, description="the bridged LAN to sweep for a VM (default: host_interface's)"
    )


class Console(_Strict):
    backend: str = Field(default="utm-input", pattern=r"^(utm-input|hammerspoon|quartz|serial)$")
    serial_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="VM i's TCP serial console on 127.0.0.1 is serial_port + i (01 makes it)",
    )
    hs: Path | None = Field(
        default=None, description="Hammerspoon's `hs` CLI (default: the one on PATH)"
    )


class Timeouts(_Strict):
    """Deadlines in seconds (issue 13): every remote wait ends, even when the peer vanishes."""

    connect: float = Field(default=10, gt=0, le=600, description="TCP connect + SSH handshake")
    command: float = Field(default=3600, gt=0, le=86400, description="one remote command")
    stall: float = Field(
        default=300, gt=0, le=86400, description="a transfer with no byte either way this long"
    )
    keepalive: float = Field(default=5, gt=0, le=300, description="seconds between keepalives")
    keepalive_count: int = Field(default=3, ge=1, le=100, description="missed = host dead")
    step: float = Field(default=7200, gt=0, le=172800, description="one step, in the runner")

    def deadlines(self) -> Deadlines:
        return Deadlines(
            self.connect, self.command, self.stall, self.keepalive, self.keepalive_count
        )


class Deployment(_Strict):
    deployment: str = Field(pattern=NAME_RE)
    nixos_config: Path
    user: str = Field(default="jqwang", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    identity: Path
    known_hosts: Path | None = None
    worker_config: str = Field(default="machines/vm-shared.nix")
    bootstrap: Bootstrap = Bootstrap()
    vms: tuple[VM, ...] = Field(min_length=1)
    cache: Cache
    utm: Utm = Utm()
    console: Console = Console()
    timeouts: Timeouts = Timeouts()
    local_nix_config: str = Field(
        default="",
        description="nix.conf lines for this machine's own nix calls (NIX_CONFIG), e.g. "
        "`experimental-features = nix-command flakes`",
    )

    @field_validator("nixos_config", "identity", "known_hosts", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        return Path(os.path.expanduser(v)) if isinstance(v, str) else v

    @field_validator("vms")
    @classmethod
    def _unique(cls, vms: tuple[VM, ...]) -> tuple[VM, ...]:
        names = [v.name for v in vms]
        if len(set(names)) != len(names):
            raise ValueError("VM names must be unique")
        if all(v.reference for v in vms):
            raise ValueError("every VM is a reference: a deployment must own at least one")
        return vms

    # -- derived ---------------------------------------------------------------

    @property
    def known_hosts_path(self) -> Path:
        if self.known_hosts:
            return self.known_hosts
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "runbook" / "known_hosts" / self.deployment

    def vm(self, name: str) -> VM:
        for v in self.vms:
            if v.name == name:
                return v
        raise InputError(f"deployment {self.deployment}: no VM named {name!r}")

    @property
    def owned_vms(self) -> tuple[VM, ...]:
        """The VMs this deployment creates, installs and switches: all but its references.
        The one place that says so; sections that change a VM iterate these."""
        return tuple(v for v in self.vms if not v.reference)

    def owns(self, vm: VM) -> bool:
        return not vm.reference

    @property
    def owned_cache(self) -> tuple[VM, ...]:
        """The cache VM when this deployment owns it (its atticd is installed here), else ()."""
        return (self.cache_vm,) if self.owns(self.cache_vm) else ()

    @property
    def referenced_cache(self) -> tuple[VM, ...]:
        """The cache VM when this deployment only references it (read, never changed), else ()."""
        return () if self.owns(self.cache_vm) else (self.cache_vm,)

    @property
    def cache_vm(self) -> VM:
        return self.vm(self.cache.vm)

    @property
    def workers(self) -> tuple[VM, ...]:
        return tuple(v for v in self.vms if v.role is Role.WORKER)

    def host(self, vm: VM, *, installed: bool = True, address: str | None = None) -> Host:
        """The SSH target for `vm`: the user + key once installed, root on the live ISO (lesson 7)."""
        return Host(
            name=vm.name,
            address=address or vm.address,
            user=self.user if installed else self.bootstrap.user,
            port=vm.port,
            identity=self.identity if installed else None,
            role=vm.role.value,
            known_hosts=self.known_hosts_path,
            deadlines=self.timeouts.deadlines(),
        )


@dataclass(frozen=True)
class Loaded:
    path: Path
    digest: str
    deployment: Deployment


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    where = _loc(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"key {where}: unknown key"
    if err["type"] == "missing":
        return f"key {where}: required key is missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"key {where}: {msg}{shown}"


def parse(text: str, source: str = "<params>") -> Deployment:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{source}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of keys at the top level")
    try:
        return Deployment.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise InputError(f"{source}: {_describe(dict(first))}{extra}") from None


def load_params(path: Path | str) -> Deployment:
    return load(path).deployment


def load(path: Path | str) -> Loaded:
    """Read and validate a params file; InputError names the file and key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: no such params file") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InputError(f"{p}: expected UTF-8 text") from None
    dep = parse(text, str(p))
    if dep.cache.vm not in {v.name for v in dep.vms}:
        raise InputError(f"{p}: key cache.vm: {dep.cache.vm!r} is not one of the vms")
    if dep.cache_vm.role is not Role.CACHE:
        raise InputError(f"{p}: key cache.vm: VM {dep.cache.vm!r} must have role cache")
    return Loaded(p, hashlib.sha256(raw).hexdigest(), dep)


@dataclass(frozen=True)
class PathCheck:
    key: str
    path: Path
    problem: str | None  # None when fine


def check_paths(dep: Deployment) -> list[PathCheck]:
    """The paths a deployment needs on this machine, each with its problem (or None)."""
    checks = [
        PathCheck(
            "nixos_config",
            dep.nixos_config,
            None
            if (dep.nixos_config / "flake.nix").is_file()
            else "expected a nixos-config checkout with flake.nix",
        ),
        PathCheck(
            "identity",
            dep.identity,
            None if dep.identity.is_file() else "expected an SSH private key file",
        ),
    ]
    if isinstance(dep.utm.iso, Path):  # `auto` is downloaded by 01
        checks.append(
            PathCheck(
                "utm.iso",
                dep.utm.iso,
                None if dep.utm.iso.is_file() else "expected the NixOS ISO file",
            )
        )
    return checks


def require_paths(dep: Deployment, source: Path) -> None:
    """For a deploy: the first missing path is an InputError naming its key."""
    for c in check_paths(dep):
        if c.problem:
            raise InputError(f"{source}: key {c.key}: {c.path}: {c.problem}")
