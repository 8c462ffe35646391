"""07 Worker VM 配置: the cache as substituter + its key as trusted in `machines/vm-shared.nix`,
then `vm/copy` + `vm/switch` on every worker as the user (lesson 7); then a warm cache: each
worker pushes its own system closure (only what the cache lacks), logged in with the workers'
push-only token (06 mints it), so the next worker and the next update substitute.

A cache named `<host>.local` resolves on NixOS only through avahi's NSS module, so the same
edit turns on `services.avahi.enable` and `services.avahi.nssmdns4` where the workers lack them
(nixpkgs nixos/modules/services/networking/avahi-daemon.nix).

The edits are splices at the parser's byte ranges (`runbook.nix.nixcfg.plan_list_item`,
`plan_setting`), so the file's formatting and comments survive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from runbook.core.params import VM
from runbook.engine.steps import TODO, Check, Context, Step, unchecked
from runbook.sections import s06_cache
from runbook.sections.common import (
    config_present,
    copy_and_switch,
    host_label,
    switched_probe,
    user_switch,
)
from runbook.sections.s06_cache import public_key_file

if TYPE_CHECKING:
    from runbook.nix.nixcfg import Change, ConfigTree
    from runbook.nix.nixfile import Edit, NixFile

NOTEBOOK: Final = "07-workers"
SUBSTITUTERS: Final = ("nix", "settings", "substituters")
TRUSTED_KEYS: Final = ("nix", "settings", "trusted-public-keys")


def _public_key(ctx: Context) -> str | None:
    path = public_key_file(ctx)
    return path.read_text().strip() if path.is_file() else None


def _needs_mdns(ctx: Context) -> bool:
    return ctx.dep.cache.host.lower().endswith(".local")


def _planners(ctx: Context, tree: ConfigTree) -> list[Callable[[NixFile], Edit | None]]:
    """The worker module's edits, each planned on the file as the previous one left it: the
    substituter and its key, and (for a `.local` cache) avahi's mDNS resolution unless every
    worker system resolves `.local` already."""
    from runbook.nix.nixcfg import (
        AVAHI_ENABLE,
        AVAHI_NSS,
        plan_list_item,
        plan_package,
        plan_setting,
    )

    url, key = ctx.dep.cache.url, _public_key(ctx) or ""
    planners: list[Callable[[NixFile], Edit | None]] = [
        lambda nix: plan_list_item(nix, SUBSTITUTERS, url, first=True),
        lambda nix: plan_list_item(nix, TRUSTED_KEYS, key, first=True),
        # the workers push their closures (warm_push): `attic` is in pkgs.attic-client
        plan_package,
    ]
    if _needs_mdns(ctx) and not _workers_resolve_mdns(ctx, tree):
        planners += [
            lambda nix: plan_setting(nix, AVAHI_ENABLE, "true"),
            lambda nix: plan_setting(nix, AVAHI_NSS, "true"),
        ]
    return planners


def _workers_resolve_mdns(ctx: Context, tree: ConfigTree) -> bool:
    from runbook.nix.nixcfg import mdns_resolution, system_view

    views = [system_view(tree, vm.name, ctx.dep.user) for vm in ctx.dep.workers]
    return bool(views) and all(
        all(v is True for v in mdns_resolution(view).values()) for view in views
    )


def configure(ctx: Context) -> Step:
    rel = ctx.dep.worker_config
    url = ctx.dep.cache.url

    def changes() -> list[Change]:
        from runbook.nix.nixcfg import Change, ConfigTree, edit_sequentially

        tree = ConfigTree(ctx.dep.nixos_config)
        nix = tree.get(Path(rel))
        after = edit_sequentially(nix, _planners(ctx, tree))
        return [Change(tree.root / rel, nix.source, after)] if after != nix.source else []

    def probe() -> Check:
        if (missing := config_present(ctx)) is not None:
            return missing
        if _public_key(ctx) is None:
            return unchecked("the cache's public key is not known yet (notebook 06 records it)")
        pending = changes()
        for change in pending:
            print(change.diff(rel), end="")
        return (
            TODO
            if pending
            else Check(True, f"{rel} already trusts the cache and installs the attic client")
        )

    def apply() -> str:
        from runbook.nix.nixcfg import write_changes

        pending = changes()
        write_changes(pending)
        change = pending[0] if pending else None
        added = change is not None and change.after.count(b"nssmdns4") > change.before.count(
            b"nssmdns4"
        )
        mdns = " and avahi's mDNS resolution (nssmdns4)" if added else ""
        return f"{rel}: substituter {url}, its key, pkgs.attic-client{mdns} added"

    key = _public_key(ctx) or "<public key from notebook 06>"
    cmds = [
        f'edit {rel}: nix.settings.substituters += [ "{url}" ]',
        f'edit {rel}: nix.settings.trusted-public-keys += [ "{key}" ]',
        f"edit {rel}: environment.systemPackages += [ pkgs.attic-client ]   # for the warm push",
    ]
    if _needs_mdns(ctx):
        cmds.append(f"edit {rel}: services.avahi.enable = true; services.avahi.nssmdns4 = true;")
    return Step(f"trust the cache in {rel}", "localhost", cmds, probe, apply)


def deploy_worker(ctx: Context, vm: VM) -> Step:
    """vm/copy + vm/switch as the user. The cache VM imports the shared module too, so it is
    switched with the workers (it then substitutes from itself, as the handbook's VMs do)."""
    how = user_switch(ctx, vm)
    return Step(
        f"copy + switch {vm.name} as {ctx.dep.user} (lesson 7)",
        host_label(ctx, vm),
        how.commands,
        probe=lambda: switched_probe(ctx, vm),
        # several VMs at once (Context.run_parallel): output kept per VM, printed in order
        action=lambda: copy_and_switch(ctx, how),
        remote=True,
    )


def switched_vms(ctx: Context) -> list[VM]:
    """Every VM whose configuration imports the edited module: the workers and the cache VM."""
    vms = [ctx.dep.cache_vm, *ctx.dep.workers] if ctx.dep.workers else []
    return [vm for vm in vms if ctx.dep.owns(vm)]  # a referenced cache is not switched here


def push_new_system(ctx: Context) -> Step:
    """The cache VM's switch made new store paths (its new system): push them too, so the
    workers find the cache's current system in the cache (08 substitutes it)."""
    step = s06_cache.push(ctx, ctx.dep.cache_vm)
    return replace(step, name=step.name.replace("push the store", "push the new system"))


def warm_vms(ctx: Context) -> list[VM]:
    """The workers this deployment switched: each pushes its own system closure."""
    return [vm for vm in ctx.dep.workers if ctx.dep.owns(vm)]


def worker_login(ctx: Context, vm: VM) -> Step:
    """Root's attic client on the worker, logged in with the workers' push token: the config
    file put 0600 (no token in any argv), as 06 logs root in on the cache VM."""
    return s06_cache.login(ctx, vm, s06_cache.worker_login_of(ctx))


def warm_push(ctx: Context, vm: VM) -> Step:
    return s06_cache.push_closure(ctx, vm)
