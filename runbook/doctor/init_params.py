"""`runbook init`: a deployment params file from what is here, each value explained.

It reads what the doctor reads (`DoctorContext`: the flake's nixosConfigurations with the
tree-sitter reader, the user mkSystem names, the keys the configuration authorizes), this
machine's `~/.ssh/*.pub` and UTM.app's Info.plist, and chooses:

- the VMs: every nixosConfiguration; the one whose name ends in `-cache` is the cache, the
  others are its workers (one params file holds them all, issue 15 item 6);
- the user the systems name (`user = "…"` in mkSystem) and the local key whose public half
  that user authorizes (none authorized: InputError naming the file to edit);
- a stable locally administered MAC per VM (`stable_mac`), in UTM's own format;
- UTM's path and version, and the console backend this UTM supports (utm-input from 4.7.3);
- `utm.iso: auto` for the release flake.nix pins (`nixpkgs.url = "…/nixos-26.05"`).

`Choice` values carry their reason; `render` writes them as YAML with the reason as a comment.
The file is validated with `runbook.core.params` before it is written, and written atomically
and never over an existing file unless asked (`write_atomically`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from runbook.core import params
from runbook.core.errors import InputError
from runbook.doctor.context import DoctorContext, parse_public_key
from runbook.doctor.host_checks import utm_version
from runbook.doctor.model import Finding, Status
from runbook.doctor.run import run_context
from runbook.doctor.system_checks import _authorized_keys, _user_of
from runbook.mac import utm
from runbook.nix.nixcfg import SystemView

DEFAULT_DEPLOYMENT: Final = "utm-attic"
DEFAULT_OUT: Final = Path("runbook.yaml")
DEFAULT_UTM_APP: Final = Path("/Applications/UTM.app")
DEFAULT_RELEASE: Final = "26.05"  # the handbook's nixpkgs (utm-makefile-keys.md §1: nixos-26.05)
DEFAULT_SERIAL_PORT: Final = 4560
_RELEASE_RE: Final = re.compile(r"nixos-(\d{2}\.\d{2})(?:-small)?$")
SET_RE: Final = re.compile(r"^([A-Za-z_][\w.-]*)=(.*)$", re.DOTALL)


def stable_mac(name: str) -> str:
    """A MAC for VM `name` that is the same on every run and every machine: the first six
    bytes of SHA-256("runbook-vm:" + name), with the locally administered bit (0x02 of the
    first byte) set and the multicast bit (0x01) clear (IEEE 802 unicast, not a vendor's).
    Written as UTM writes MACs: upper case, colon separated (UTM
    Configuration/UTMQemuConfigurationNetwork.swift `randomMacAddress`, `%02X` joined by `:`)."""
    raw = bytearray(hashlib.sha256(f"runbook-vm:{name}".encode()).digest()[:6])
    raw[0] = (raw[0] | 0x02) & 0xFE
    return ":".join(f"{b:02X}" for b in raw)


@dataclass(frozen=True)
class Choice:
    """A value init chose and why (the comment beside it in the file)."""

    value: Any
    why: str = ""


@dataclass
class Found:
    """What init read, before anything is asked or overridden."""

    root: Path
    cache: str
    workers: list[str]
    user: Choice
    keys: list[tuple[Path, str]]  # (private key, where the configuration authorizes it)
    hosts: dict[str, Choice]
    utm_app: Path
    utm_version: tuple[int, ...] | None
    release: Choice
    notes: list[str] = field(default_factory=list)


def _views(ctx: DoctorContext) -> dict[str, SystemView]:
    return {v.name: v for v in ctx.all_views}


def local_public_keys(ssh_dir: Path) -> list[tuple[Path, tuple[str, str]]]:
    """(private key path, (type, blob)) for each `ssh_dir/*.pub` whose private half is there."""
    found = []
    for pub in sorted(ssh_dir.resolve().glob("*.pub")):
        private = pub.with_suffix("")
        try:
            key = parse_public_key(pub.read_text(errors="replace"))
        except OSError:
            continue
        if key is not None and private.is_file():
            found.append((private, key))
    return found


def home_path(path: Path) -> str:
    """`path` as the file shows it: `~/…` under the home directory, else absolute."""
    home = Path.home().resolve()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def _user_file(view: SystemView, user: str) -> str:
    """Where to authorize a key for `user`: the file that defines users.users.USER."""
    at = view.where(("users", "users", user))
    return at.split(":")[0] if at else f"users/{user}/nixos.nix"


def read(
    root: Path,
    *,
    ssh_dir: Path,
    utm_app: Path,
    user: str | None = None,
    only_workers: list[str] | None = None,
    system: str | None = None,
) -> Found:
    """Everything init chooses from, read from the checkout at `root`, `ssh_dir` and UTM."""
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (expected your nixos-config checkout)")
    if not (root / "flake.nix").is_file():
        raise InputError(f"{root}: not a nixos-config checkout (expected a flake.nix in it)")
    ctx = DoctorContext(None, root, system=system)
    names = sorted(ctx.systems)
    if not names:
        raise InputError(
            f"{root / 'flake.nix'}: no nixosConfigurations found (expected "
            '`nixosConfigurations.NAME = mkSystem "NAME" { … };`)'
        )
    caches = [n for n in names if n.endswith("-cache")]
    if not caches:
        raise InputError(
            f"{root / 'flake.nix'}: no nixosConfiguration ends in -cache (has {', '.join(names)});"
            " the cache VM's configuration is named like vm-aarch64-utm-cache"
        )
    cache = caches[0]
    workers = [n for n in names if n != cache and not n.endswith("-cache")]
    if only_workers is not None:
        missing = [w for w in only_workers if w not in workers]
        if missing:
            raise InputError(
                f"--workers {missing[0]}: not a worker nixosConfiguration of flake.nix "
                f"(has {', '.join(workers) or 'none'})"
            )
        workers = [w for w in workers if w in only_workers]
    notes = (
        [f"{', '.join(caches[1:])} also end in -cache: {cache} is the cache"] if caches[1:] else []
    )
    views = _views(ctx)
    # the user: given, else the one mkSystem names (all systems alike), else the only one
    if user is not None:
        chosen_user = Choice(user, "given with --user")
    else:
        named = {n: ctx.systems[n].user for n in [cache, *workers]}
        users = sorted({u for u in named.values() if u})
        if len(users) == 1:
            line = ctx.systems[cache].line
            chosen_user = Choice(users[0], f'mkSystem names user = "{users[0]}" (flake.nix:{line})')
        elif len(users) > 1:
            raise InputError(
                f"{root / 'flake.nix'}: the systems name different users "
                f"({', '.join(f'{n}: {u}' for n, u in named.items() if u)}); pass --user"
            )
        else:
            guess = _user_of(ctx, views[cache]) if cache in views else None
            if guess is None:
                raise InputError(
                    f"{root / 'flake.nix'}: no system names its user (mkSystem … {{ user = "
                    '"…"; }}); pass --user'
                )
            chosen_user = Choice(guess, f"the only user {cache}'s modules define")
    # the keys the user is authorized with, in every system, that this machine holds
    local = local_public_keys(ssh_dir)
    authorized: dict[tuple[str, str], str] | None = None
    for name in [cache, *workers]:
        view = views.get(name)
        if view is None:
            continue
        keys, _unknown = _authorized_keys(ctx, view, chosen_user.value)
        here = dict(keys)
        authorized = (
            here if authorized is None else {k: w for k, w in authorized.items() if k in here}
        )
    usable = [(p, (authorized or {})[k]) for p, k in local if k in (authorized or {})]
    hosts = {name: _host(views.get(name), name) for name in [cache, *workers]}
    counts: dict[str, int] = {}
    for choice in hosts.values():
        counts[choice.value] = counts.get(choice.value, 0) + 1
    for name, choice in hosts.items():
        if counts[choice.value] > 1:
            hosts[name] = Choice(
                choice.value,
                f"{choice.why}; {counts[choice.value]} VMs share it: each is found by its MAC",
            )
    flake = ctx.flake
    url = flake.string(("inputs", "nixpkgs", "url")) if flake is not None else None
    match = _RELEASE_RE.search(url or "")
    release = (
        Choice(match.group(1), f"flake.nix pins nixpkgs {url}")
        if match
        else Choice(
            DEFAULT_RELEASE,
            f"flake.nix pins no nixos-YY.MM channel ({url or 'no nixpkgs.url'}): the handbook's",
        )
    )
    version = utm_version(utm_app / "Contents" / "MacOS" / "utmctl")
    found = Found(
        root, cache, workers, chosen_user, usable, hosts, utm_app, version, release, notes
    )
    if not usable:
        view = views.get(cache) or next(iter(views.values()), None)
        where = _user_file(view, chosen_user.value) if view is not None else "users/USER/nixos.nix"
        # key names only (their folder once): the line stays whole within the 300 characters
        key_names = ", ".join(p.with_suffix(".pub").name for p, _ in local)
        have = (
            f"{ssh_dir}/{{{key_names}}}"
            if key_names
            else f"no {ssh_dir}/*.pub (ssh-keygen makes one)"
        )
        raise InputError(
            f"{root / where}: no local SSH key is authorized for {chosen_user.value} ({have}): "
            f"add one's .pub to users.users.{chosen_user.value}.openssh.authorizedKeys.keys there"
        )
    return found


def _host(view: SystemView | None, name: str) -> Choice:
    """The VM's mDNS name: its networking.hostName + .local (lesson 8: re-resolved every run)."""
    value = view.value(("networking", "hostName")) if view is not None else None
    if isinstance(value, str) and params.HOSTNAME_RE.match(value):
        at = view.where(("networking", "hostName")) if view is not None else None
        return Choice(f"{value}.local", f"networking.hostName ({at}) over mDNS")
    return Choice(f"{name}.local", f"{name} sets no networking.hostName: found by its MAC instead")


@dataclass
class Answers:
    """What the user (prompts or flags) decided; None means take what init found."""

    deployment: str = DEFAULT_DEPLOYMENT
    identity: Path | None = None
    backend: str | None = None
    addresses: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


def backend_for(version: tuple[int, ...] | None, *, has_hs: bool) -> Choice:
    """The console backend this UTM supports (runbook.mac.utm.supports_input_automation)."""
    if version is None:
        return Choice("utm-input", "UTM's version is unknown here: utm-input needs UTM >= 4.7.3")
    shown = utm.shown_version(version)
    if utm.supports_input_automation(version):
        return Choice("utm-input", f"UTM {shown} >= 4.7.3 types raw scan codes (lesson 4)")
    if has_hs:
        return Choice("hammerspoon", f"UTM {shown} < 4.7.3 cannot type; Hammerspoon's hs is here")
    return Choice("serial", f"UTM {shown} < 4.7.3 cannot type and no hs: a TCP serial console")


def choose(found: Found, answers: Answers, *, has_hs: bool) -> dict[str, Any]:
    """The params as nested dicts of Choice values, in the order the file shows them."""
    if answers.identity is not None:
        where = dict(found.keys).get(answers.identity)
        identity = Choice(
            home_path(answers.identity),
            f"given; authorized at {where}" if where else "given (not among the authorized keys)",
        )
    else:
        path, where = found.keys[0]
        others = f"; {len(found.keys) - 1} other authorized key(s) here" if found.keys[1:] else ""
        identity = Choice(home_path(path), f"{path.name}.pub is authorized at {where}{others}")
    utmctl = found.utm_app / "Contents" / "MacOS" / "utmctl"
    if found.utm_version is not None:
        utm_why = (
            f"UTM {utm.shown_version(found.utm_version)} (Info.plist CFBundleShortVersionString)"
        )
    else:
        where = (
            "not on macOS"
            if sys.platform != "darwin"
            else f"no {found.utm_app}/Contents/Info.plist"
        )
        utm_why = f"no UTM here ({where}): UTM's documented install path"
    backend = (
        Choice(answers.backend, "chosen")
        if answers.backend
        else backend_for(found.utm_version, has_hs=has_hs)
    )
    vms: list[dict[str, Choice]] = []
    for name in [found.cache, *found.workers]:
        role = "cache" if name == found.cache else "worker"
        address = (
            Choice(answers.addresses[name], "given with --address")
            if name in answers.addresses
            else found.hosts[name]
        )
        vms.append(
            {
                "name": Choice(name, f"flake.nix nixosConfigurations.{name}"),
                "role": Choice(
                    role, "its name ends in -cache" if role == "cache" else "not -cache"
                ),
                "address": address,
                "mac": Choice(
                    stable_mac(name), "stable: derived from the VM name (locally administered)"
                ),
            }
        )
    cache_host = answers.addresses.get(found.cache) or found.hosts[found.cache].value
    data: dict[str, Any] = {
        "deployment": Choice(answers.deployment, "the records and known_hosts are kept under it"),
        "nixos_config": Choice(str(found.root), "the checkout (flake.nix) init read"),
        "user": found.user,
        "identity": identity,
        "worker_config": Choice("machines/vm-shared.nix", "where workers get the cache settings"),
        "vms": vms,
        "cache": {
            "vm": Choice(found.cache, ""),
            "host": Choice(cache_host, "the name the workers use for the cache"),
            "port": Choice(8080, "atticd's default listen port"),
            "name": Choice("main", "the handbook's cache name"),
        },
        "utm": {
            "utmctl": Choice(str(utmctl), utm_why),
            "iso": Choice("auto", "the minimal aarch64 installer, downloaded once and checked"),
            "iso_release": found.release,
        },
        "console": {"backend": backend},
    }
    if backend.value == "serial":
        data["console"]["serial_port"] = Choice(
            DEFAULT_SERIAL_PORT, "01 gives VM i a TCP serial console on 127.0.0.1:port+i"
        )
    for item in answers.overrides:
        _override(data, item)
    return data


def _override(data: dict[str, Any], item: str) -> None:
    """`KEY=VALUE` (dotted KEY, VALUE read as YAML) set in `data`; `vms.NAME.KEY` a VM's."""
    match = SET_RE.match(item)
    if match is None:
        raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. utm.host_interface=en1")
    keys, raw = match.group(1).split("."), match.group(2)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        raise InputError(f"--set {item!r}: the value is not valid YAML") from None
    target: Any = data
    if keys[0] == "vms" and len(keys) == 3:
        for vm in data["vms"]:
            if vm["name"].value == keys[1]:
                vm[keys[2]] = Choice(value, "set with --set")
                return
        raise InputError(f"--set {item!r}: no VM named {keys[1]!r}")
    for key in keys[:-1]:
        node = target.get(key)
        if node is None:
            node = target[key] = {}
        if not isinstance(node, dict):
            raise InputError(f"--set {item!r}: {key} is not a section")
        target = node
    target[keys[-1]] = Choice(value, "set with --set")


def _scalar(value: Any) -> str:
    """`value` as one line of YAML (a string with newlines as a double-quoted JSON string,
    which YAML reads the same)."""
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value)
    text = str(yaml.safe_dump(value, default_flow_style=True, width=10_000))
    return text.strip().removesuffix("...").strip()


def _lines(data: dict[str, Any], indent: str, first: str | None = None) -> Iterable[str]:
    for i, (key, item) in enumerate(data.items()):
        lead = first if (first is not None and i == 0) else indent
        if isinstance(item, Choice):
            text = f"{lead}{key}: {_scalar(item.value)}"
            yield f"{text}  # {item.why}" if item.why else text
        elif isinstance(item, dict):
            yield f"{lead}{key}:"
            yield from _lines(item, indent + "  ")
        elif isinstance(item, list):
            yield f"{lead}{key}:"
            for entry in item:
                yield from _lines(entry, indent + "    ", first=indent + "  - ")


HEADER: Final = (
    "# Written by `runbook init` from {root}.\n"
    "# Each value says why it was chosen; edit any of them. Secrets are never written here:\n"
    '# they live in the secret store (README, "Secrets"). Next: runbook deploy {out} --yes\n'
)


def render(data: dict[str, Any], *, root: Path, out: Path) -> str:
    return HEADER.format(root=root, out=out) + "\n".join(_lines(data, "")) + "\n"


def validate(text: str, out: Path) -> params.Deployment:
    """The text as `runbook.core.params` loads it (InputError naming `out` and the key)."""
    dep = params.parse(text, str(out))
    if dep.cache.vm not in {v.name for v in dep.vms}:
        raise InputError(f"{out}: key cache.vm: {dep.cache.vm!r} is not one of the vms")
    return dep


def write_atomically(out: Path, text: str, *, force: bool) -> None:
    """`text` into `out` through a temporary file in its directory: a reader sees the old
    file or the whole new one. Without `force` an existing `out` is refused (InputError),
    and the final link is made with link(2), which fails rather than replace a file that
    appeared meanwhile."""
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory, expected a file path")
    if out.exists() and not force:
        raise InputError(f"{out}: exists; pass --force to replace it (or --out another file)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)
            except FileExistsError:
                raise InputError(f"{out}: exists; pass --force to replace it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def doctor_findings(dep: params.Deployment, root: Path) -> list[Finding]:
    """The doctor's checks on the written params (it contacts only a cache on loopback or on
    utm.bridged_subnet, never the VMs' mDNS names)."""
    return run_context(DoctorContext(dep, root))


def failing(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status is Status.FAIL]
