"""The checks on the worker VMs' configuration: they substitute from the cache by its mDNS
name, can resolve that name, and trust its current signing key."""

from __future__ import annotations

import logging
from typing import Final
from urllib.parse import urlsplit

from runbook.cache.keys import parse_public_key
from runbook.core.errors import InputError
from runbook.doctor.context import CacheTarget, DoctorContext, describe
from runbook.doctor.live import live_cache_key
from runbook.doctor.model import DoctorCheck, Status, Verdict, check, ok, unchecked_verdict
from runbook.mac.discover import is_ip
from runbook.nix.nixcfg import Literal, Opaque, SystemView, Undecided, mdns_resolution

logger: Final = logging.getLogger(__name__)

SUBSTITUTERS: Final = ("nix", "settings", "substituters")
EXTRA_SUBSTITUTERS: Final = ("nix", "settings", "extra-substituters")
TRUSTED_KEYS: Final = ("nix", "settings", "trusted-public-keys")
EXTRA_TRUSTED_KEYS: Final = ("nix", "settings", "extra-trusted-public-keys")

CHECKS: Final[list[DoctorCheck]] = []


def _workers(ctx: DoctorContext) -> list[SystemView] | Verdict:
    views = ctx.worker_views
    if not views:
        return unchecked_verdict(f"{ctx.worker_module} (the workers' module) not found")
    broken = [str(p) for v in views for p in v.broken]
    if broken:
        return unchecked_verdict(f"{', '.join(broken)} does not parse (see nix-parse)")
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
            return [], "", f"{'.'.join(path)} is {describe(value)}"
    return items, ", ".join(w for w in where if w), None


@check(CHECKS, "worker-substituter", "Worker VM 配置: workers substitute from the cache")
def check_worker_substituter(ctx: DoctorContext) -> Verdict:
    views = _workers(ctx)
    if isinstance(views, Verdict):
        return views
    url = ctx.target.url
    note = f" [{ctx.target.assumed}]" if ctx.target.assumed else ""
    missing, by_ip, fine = [], [], []
    for view in views:
        items, where, undecided = _merged(view, SUBSTITUTERS, EXTRA_SUBSTITUTERS)
        if undecided:
            return unchecked_verdict(f"{view.name}: {undecided}")
        strings = [i for i in items if isinstance(i, str)]
        if url.rstrip("/") in {i.rstrip("/") for i in strings}:
            fine.append(f"{view.name} ({where})")
        elif any(isinstance(i, Opaque) for i in items):
            return unchecked_verdict(f"{view.name}: substituters hold expressions ({where})")
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
        is_ip(parts.hostname or "")
        and parts.path.strip("/") == target.name
        and (parts.port or 80) == target.port
    )


@check(
    CHECKS,
    "worker-mdns",
    "架构, Worker VM 配置: workers resolve the cache's .local name (avahi with nssmdns4)",
)
def check_worker_mdns(ctx: DoctorContext) -> Verdict:
    """A `.local` name resolves on NixOS only through avahi's NSS module: services.avahi.enable
    and services.avahi.nssmdns4 (nixpkgs nixos/modules/services/networking/avahi-daemon.nix)."""
    host = ctx.target.host
    if not host.endswith(".local"):
        return ok(f"the cache's host {host} is not an mDNS (.local) name: no avahi needed")
    views = _workers(ctx)
    if isinstance(views, Verdict):
        return views
    note = f" [{ctx.target.assumed}]" if ctx.target.assumed else ""
    lacking: list[str] = []
    fine: list[str] = []
    for view in views:
        values = mdns_resolution(view)
        if any(isinstance(v, Undecided | Opaque) for v in values.values()):
            shown = "; ".join(f"{k}: {describe(v)}" for k, v in values.items())
            return unchecked_verdict(f"{view.name}: {shown}")
        off = [f"{k} is {describe(v)}" for k, v in values.items() if v is not True]
        (lacking if off else fine).append(f"{view.name} ({', '.join(off) or 'avahi + nssmdns4'})")
    if lacking:
        return Verdict(
            Status.WARN,
            f"{host} does not resolve on {', '.join(lacking)}: substituting from "
            f"{ctx.target.url} fails there{note}",
            "nothing to do if the runbook sets up the workers (notebook 07 adds them with the "
            "substituter); by hand set `services.avahi.enable = true;` and "
            f"`services.avahi.nssmdns4 = true;` in {ctx.worker_module}",
        )
    return ok(f"{', '.join(fine)} resolve {host}{note}")


@check(CHECKS, "worker-trusted-key", "Worker VM 配置: workers trust the cache's current key")
def check_worker_trusted_key(ctx: DoctorContext) -> Verdict:
    views = _workers(ctx)
    if isinstance(views, Verdict):
        return views
    name = ctx.target.name
    fix = (
        f"add the key `attic cache info {name}` shows ({name}:…) to "
        f"nix.settings.trusted-public-keys in {ctx.worker_module}"
    )
    trusted: dict[str, list[str]] = {}  # worker -> the keys of the cache's name it trusts
    for view in views:
        items, where, undecided = _merged(view, TRUSTED_KEYS, EXTRA_TRUSTED_KEYS)
        if undecided:
            return unchecked_verdict(f"{view.name}: {undecided}")
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
        trusted[view.name] = keys
    shown = ", ".join(sorted({k for keys in trusted.values() for k in keys}))
    live, reason = live_cache_key(ctx)
    if live is None:
        return ok(f"the workers trust {shown}; live comparison unchecked: {reason}")
    # Nix checks a signer's name against the FIRST key of that name (NixOS/nix
    # src/libstore/keys.cc, `getDefaultPublicKeys`): a stale key listed first wins
    stale = {w: keys[0] for w, keys in trusted.items() if keys[0] != live}
    if not stale:
        return ok(f"the workers trust {shown}, the live cache's key")
    said = "; ".join(f"{w} trusts {k}" for w, k in stale.items())
    finding = (
        f"{said}, but the cache at {ctx.target.url} signs with {live} (a recreated cache or "
        f"a regenerated keypair: Nix there silently builds locally) [{ctx.worker_module}]"
    )
    if "07" in ctx.deploy_runs:  # this deploy's notebook 07 writes the live key there
        return Verdict(
            Status.WARN,
            f"{finding}; 07 replaces it in this deploy",
            "nothing to do: notebook 07 of this deploy trusts the live key and switches the "
            "workers",
        )
    return Verdict(
        Status.FAIL,
        finding,
        f'replace the key with "{live}" in {ctx.worker_module} (or deploy with notebook 07)',
    )


def _is_public_key(key: str) -> bool:
    try:
        parse_public_key(key)
    except InputError:
        return False
    return True
