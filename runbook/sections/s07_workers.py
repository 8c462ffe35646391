"""07 Worker VM 配置: the cache as substituter + its key as trusted in `machines/vm-shared.nix`,
then `vm/copy` + `vm/switch` on every worker as the user (lesson 7).

The edit is a splice at the parser's byte ranges (`runbook.nixcfg.plan_list_item`), so the
file's formatting and comments survive.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Final

from runbook.params import VM
from runbook.sections import s06_cache
from runbook.sections.common import (
    config_present,
    copy_and_switch,
    host_label,
    switched_probe,
    user_switch,
)
from runbook.sections.s06_cache import public_key_file
from runbook.steps import TODO, Check, Context, Step, unchecked

NOTEBOOK: Final = "07-workers"
SUBSTITUTERS: Final = ("nix", "settings", "substituters")
TRUSTED_KEYS: Final = ("nix", "settings", "trusted-public-keys")


def _public_key(ctx: Context) -> str | None:
    path = public_key_file(ctx)
    return path.read_text().strip() if path.is_file() else None


def configure(ctx: Context) -> Step:
    rel = ctx.dep.worker_config
    url = ctx.dep.cache.url

    def changes() -> list[object]:
        from runbook.nixcfg import ConfigTree, Plan, Problem, plan_list_item

        tree = ConfigTree(ctx.dep.nixos_config)
        nix = tree.get(Path(rel))
        plan = Plan()
        for path, item in ((SUBSTITUTERS, url), (TRUSTED_KEYS, _public_key(ctx) or "")):
            edit = plan_list_item(nix, path, item, first=True)
            if edit is not None:
                plan.add(Problem(Path(rel), 0, f"{'.'.join(path)} lacks {item}", True), edit)
        return list(tree.changes(plan))

    def probe() -> Check:
        if (missing := config_present(ctx)) is not None:
            return missing
        if _public_key(ctx) is None:
            return unchecked("the cache's public key is not known yet (notebook 06 records it)")
        pending = changes()
        for change in pending:
            print(change.diff(rel), end="")  # type: ignore[attr-defined]
        return TODO if pending else Check(True, f"{rel} already trusts the cache")

    def apply() -> str:
        from runbook.nixcfg import write_changes

        write_changes(changes())  # type: ignore[arg-type]
        return f"{rel}: substituter {url} and its key added"

    key = _public_key(ctx) or "<public key from notebook 06>"
    cmds = [
        f'edit {rel}: nix.settings.substituters += [ "{url}" ]',
        f'edit {rel}: nix.settings.trusted-public-keys += [ "{key}" ]',
    ]
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
        action=lambda: copy_and_switch(ctx, vm, how),
        remote=True,
    )


def switched_vms(ctx: Context) -> list[VM]:
    """Every VM whose configuration imports the edited module: the workers and the cache VM."""
    return [ctx.dep.cache_vm, *ctx.dep.workers] if ctx.dep.workers else []


def push_new_system(ctx: Context) -> Step:
    """The cache VM's switch made new store paths (its new system): push them too, so the
    workers find the cache's current system in the cache (08 substitutes it)."""
    step = s06_cache.push(ctx, ctx.dep.cache_vm)
    return replace(step, name=step.name.replace("push the store", "push the new system"))


def steps(ctx: Context) -> list[Step]:
    if not ctx.dep.workers:
        return []
    return [
        configure(ctx),
        *(deploy_worker(ctx, vm) for vm in switched_vms(ctx)),
        push_new_system(ctx),
    ]
