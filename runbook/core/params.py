"""Deployment parameters: one YAML per deployment, validated before anything runs.

Every error names the file, the key and what was expected, in one line (exit 2).
Paths that must exist are checked by `check_paths`: a deploy fails on them, a plan only
lists them as unchecked (the nixos-config checkout is on the user's Mac, not here).

Hostile input (issue 13, tests/corpus/params/) is refused before anything runs: a bounded
file size, nesting depth and alias expansion, duplicate keys, tags other than YAML's
plain ones, control characters, values too long, names a shell or ssh would read as
something else, IPv6 addresses, and a `worker_config` outside the nixos-config checkout.
Relative paths are relative to the params file's directory (where the notebooks run).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runbook.core.errors import InputError
from runbook.core.masking import MaskClashError, clip, mask, protect
from runbook.core.models import Deadlines, Host

_LABEL: Final = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
HOSTNAME_RE: Final = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
NAME_RE: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


# A params file is a page of YAML; these bound what a hostile one can cost (issue 13).
MAX_FILE_BYTES: Final = 256 * 1024
MAX_DEPTH: Final = 32  # the schema nests 3 deep; PyYAML's composer recurses per level
MAX_NODES: Final = 10_000  # after aliases are expanded (a billion laughs is 10**9)
MAX_VALUE_CHARS: Final = 4096
MAX_INT_DIGITS: Final = 30


def _address(value: str) -> str:
    """An IPv4 address or a host name. IPv6 is refused, not bracketed: the handbook's LAN
    is IPv4 with mDNS names (utm.bridged_subnet is IPv4, the sweep of lesson 8 too), and
    the cache URL, ssh targets and nix.conf substituters are rendered in many places that
    would each need `[...]` (and a zone's `%25`)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv6Address):
        raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError as the field's error
            "IPv6 addresses are not supported: expected an IPv4 address or a host name"
        )
    if ":" in value:
        raise ValueError("expected a host name or IPv4 address without a port (its own key)")
    if ip is not None:
        return value
    labels = value.rstrip(".").split(".")
    if not HOSTNAME_RE.match(value) or len(value) > 253 or labels[-1].isdigit():
        raise ValueError("expected an IPv4 address or a host name such as nixos-utm-cache.local")
    return value


def _user_name(value: str) -> str:
    """A login name as useradd accepts it without --badname (shadow-maint/shadow,
    lib/chkname.c, is_valid_name): [A-Za-z0-9_.][A-Za-z0-9_.-]*, not all digits, not "."
    or "..", never starting with "-"; and at most 32 characters (utmp's ut_user, the
    traditional useradd limit). shadow's optional trailing "$" (Samba machine accounts)
    is not taken: no shell or ssh word here needs it."""
    if (
        not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}", value)
        or value.isdigit()
        or value in {".", ".."}
    ):
        raise ValueError(
            "expected a user name as useradd accepts it: letters, digits, '_', '.', '-' "
            "(not first), at most 32, not all digits"
        )
    return value


def _worker_config(value: str) -> str:
    """A Nix file inside the nixos-config checkout, as a plain relative path: no `..`, no
    `~`, no characters a shell or Nix string would read (the plan prints it in commands)."""
    if value.startswith(("/", "~")):
        raise ValueError("expected a path relative to nixos_config, e.g. machines/vm-shared.nix")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+/-]*", value):
        raise ValueError("expected a path of letters, digits, '_', '.', '+', '-' and '/'")
    parts = value.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise ValueError("expected a plain relative path (no '..', '.' or empty parts)")
    if not value.endswith(".nix"):
        raise ValueError("expected a .nix file")
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
    port: int = Field(default=22, ge=1, le=65535, strict=True)
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

    @field_validator("user")
    @classmethod
    def _check_user(cls, v: str) -> str:
        return _user_name(v)


class Cache(_Strict):
    vm: str = Field(pattern=NAME_RE, description="the VM that runs atticd")
    host: str = Field(description="the name workers use, e.g. nixos-utm-cache.local")
    port: int = Field(default=8080, ge=1, le=65535, strict=True)
    name: str = Field(default="main", pattern=r"^[a-z0-9][a-z0-9_-]{0,49}$")
    push_jobs: int = Field(default=4, ge=1, le=64, strict=True)
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
        strict=True,
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
    user: str = "jqwang"
    identity: Path
    known_hosts: Path | None = None
    worker_config: str = Field(
        default="machines/vm-shared.nix",
        description="the workers' Nix module, relative to nixos_config and inside it",
    )
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
    def _expand(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, str):
            return v
        path = Path(os.path.expanduser(v))
        base = (info.context or {}).get("base")
        return base / path if base is not None and not path.is_absolute() else path

    @field_validator("user")
    @classmethod
    def _check_user(cls, v: str) -> str:
        return _user_name(v)

    @field_validator("worker_config")
    @classmethod
    def _check_worker_config(cls, v: str) -> str:
        return _worker_config(v)

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


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            name = clip(str(part), 40)
            out += f".{name}" if out else name
    return out or "(top level)"


def _shown(got: Any) -> str:
    """A value as an error message shows it: repr'd (control characters escaped), cut."""
    if isinstance(got, str) and len(got) > 60:
        return f"{got[:60]!r}… ({len(got):,} characters)"
    text = repr(got)
    return text if len(text) <= 80 else f"{text[:80]}… ({len(text):,} characters)"


def _describe(err: dict[str, Any]) -> str:
    where = _loc(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"key {where}: unknown key"
    if err["type"] == "missing":
        return f"key {where}: required key is missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list | tuple) else f" (got {_shown(got)})"
    msg = clip(str(err["msg"]).removeprefix("Value error, "), 120)
    return f"key {where}: {msg}{shown}"


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no python/* tags) with the bounds a params file needs: nesting
    depth, alias expansion (billion laughs), integer length, and duplicate keys refused
    (YAML 1.2 §3.2.1.1: keys are unique; PyYAML silently keeps the last)."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _bounded(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, _value in node.value:
                if (
                    not isinstance(key_node, ScalarNode)
                    or key_node.tag == "tag:yaml.org,2002:merge"
                ):
                    continue
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in first:
                    raise ConstructorError(
                        None,
                        None,
                        f"duplicate key {clip(key_node.value, 40)!r} (first at line {first[key]})",
                        key_node.start_mark,
                    )
                first[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_bounded_int(self, node: ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        if len(text) > MAX_INT_DIGITS:
            raise ConstructorError(None, None, f"an integer of {len(text)} digits", node.start_mark)
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_bounded_int)


def _bounded(root: Node) -> None:
    """Refuse a document whose alias-expanded size passes MAX_NODES, or that refers to
    itself: sizes are counted once per node (memoized), so a bomb costs its own length."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > MAX_NODES:
                raise ComposerError(
                    None,
                    None,
                    f"more than {MAX_NODES:,} values once its aliases are expanded",
                    node.start_mark,
                )
            continue
        if key in size:
            continue
        if key in on_path:
            raise ComposerError(None, None, "an alias that refers to itself", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _yaml_error(source: str, exc: yaml.YAMLError) -> InputError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    at = f" at line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.reader.ReaderError):
        at, problem = f" at byte {exc.position}", "a control character is not allowed"
    return InputError(f"{source}: not valid YAML{at}: {clip(str(problem or exc), 120)}")


def _bad_char(text: str, allowed: str) -> str | None:
    for ch in text:
        if ch not in allowed and unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co"}:
            return f"U+{ord(ch):04X}"
    return None


def _screen(data: Any, source: str) -> None:
    """Walk the loaded YAML (no recursion: depth is bounded anyway) and refuse what no key
    of the schema takes: control characters (NUL, ESC, newlines except in
    local_nix_config), binary values and values longer than MAX_VALUE_CHARS."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and (bad := _bad_char(k, "")):
                    raise InputError(f"{source}: key {_loc((*loc, k))}: a key with {bad}")
                stack.append(((*loc, k), v))
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in enumerate(value))
        elif isinstance(value, bytes | bytearray | set):
            raise InputError(f"{source}: key {_loc(loc)}: expected text, got a binary or set value")
        elif isinstance(value, str):
            where = _loc(loc)
            if len(value) > MAX_VALUE_CHARS:
                raise InputError(
                    f"{source}: key {where}: a value of {len(value):,} characters "
                    f"(at most {MAX_VALUE_CHARS:,}): {_shown(value)}"
                )
            allowed = "\n\t" if loc == ("local_nix_config",) else ""
            if bad := _bad_char(value, allowed):
                raise InputError(
                    f"{source}: key {where}: control character {bad} in {_shown(value)}"
                )


class ParamsProblemsError(InputError):
    """Every problem pydantic found in a params file, each naming the file and key: the CLI
    prints one line per problem (`lines`); as text they read as one line, joined by "; "."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = [mask(line) for line in lines]


def _implied(loc: tuple[Any, ...], locs: list[tuple[Any, ...]]) -> bool:
    return any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs)


def parse(text: str, source: str = "<params>", base: Path | None = None) -> Deployment:
    """Validate a params text; `base` is the directory relative paths are taken from."""
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no python/* tags
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    except (RecursionError, ValueError, OverflowError, MemoryError) as exc:
        raise InputError(f"{source}: not valid YAML: {clip(type(exc).__name__, 40)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of keys at the top level")
    _screen(data, source)
    try:
        return Deployment.model_validate(data, context={"base": base})
    except ValidationError as exc:
        errors = exc.errors()
        locs = [tuple(e["loc"]) for e in errors]
        # a container's error that only follows from its items' ("vms: at least 1 item"
        # after vms[0] was refused) is not a problem of its own
        own = [e for e, loc in zip(errors, locs, strict=True) if not _implied(loc, locs)]
        raise ParamsProblemsError([f"{source}: {_describe(dict(e))}" for e in own]) from None
    except RecursionError:
        raise InputError(f"{source}: nested too deep") from None


def load_params(path: Path | str) -> Deployment:
    return load(path).deployment


def load(path: Path | str) -> Loaded:
    """Read and validate a params file; InputError names the file and key."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{p}: no such params file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(f"{p}: more than {MAX_FILE_BYTES // 1024} KiB: not a params file")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise InputError(f"{p}: expected UTF-8 text") from None
    dep = parse(text, str(p), p.parent)
    if dep.cache.vm not in {v.name for v in dep.vms}:
        raise InputError(f"{p}: key cache.vm: {dep.cache.vm!r} is not one of the vms")
    if dep.cache_vm.role is not Role.CACHE:
        raise InputError(f"{p}: key cache.vm: VM {dep.cache.vm!r} must have role cache")
    inside_checkout(dep, p)
    try:
        protect(printed_names(dep))
    except MaskClashError as exc:
        raise InputError(f"{p}: {exc}") from None
    return Loaded(p, hashlib.sha256(raw).hexdigest(), dep)


def inside_checkout(dep: Deployment, source: Path | str) -> Path:
    """`worker_config` inside `nixos_config`, symlinks resolved (when the checkout is on this
    machine): the file 07 rewrites can only be one of the checkout's."""
    root = dep.nixos_config
    target = root / dep.worker_config
    if not root.is_dir():
        return target
    real_root, real = root.resolve(), target.resolve()
    if not real.is_relative_to(real_root):
        raise InputError(
            f"{source}: key worker_config: {dep.worker_config} resolves outside nixos_config "
            f"({clip(str(real), 80)} is not in {clip(str(real_root), 80)})"
        )
    return target


# Words the runbook prints on every run: a secret equal to one (or inside one) would turn
# its own output into `*****` (issue 13: a password equal to a VM name broke utmctl's output).
RUNBOOK_WORDS: Final = (
    "completed",
    "planned",
    "unchecked",
    "running",
    "failed",
    "skipped",
    "pending",
    "interrupted",
    "nixos-rebuild",
    "nixos-install",
    "nixos-config",
    "atticd",
    "attic login",
    "utmctl",
    "systemctl",
    "substituters",
    "trusted-public-keys",
)


def printed_names(dep: Deployment) -> dict[str, str]:
    """Every name the runbook prints for `dep`, by the key it comes from: no secret may be
    one of them, or a part of one (masking would hide it)."""
    names = {f"the runbook's word {w!r}": w for w in RUNBOOK_WORDS}
    names.update(
        {
            "deployment": dep.deployment,
            "user": dep.user,
            "bootstrap.user": dep.bootstrap.user,
            "bootstrap.password_secret": dep.bootstrap.password_secret,
            "cache.host": dep.cache.host,
            "cache.name": dep.cache.name,
            "cache.url": dep.cache.url,
            "cache.token_secret": dep.cache.token_secret,
            "cache.admin_token": dep.cache.admin_token,
            "worker_config": dep.worker_config,
            "nixos_config": str(dep.nixos_config),
            "identity": str(dep.identity),
            "utm.utmctl": str(dep.utm.utmctl),
        }
    )
    for i, vm in enumerate(dep.vms):
        names[f"vms[{i}].name"] = vm.name
        names[f"vms[{i}].address"] = vm.address
    return names


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
