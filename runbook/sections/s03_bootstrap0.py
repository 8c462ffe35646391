"""03 部署流程速查 3-4: `make vm/bootstrap0` partitions and installs (wipes the disk), then
remove the ISO and boot from disk. The wipe is dangerous: a deploy needs --yes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from runbook.errors import RunbookError
from runbook.params import VM
from runbook.sections.common import (
    host_label,
    login_works,
    make_argv,
    osascript,
    remote_probe,
    render,
    run_make,
    utmctl,
)
from runbook.steps import Check, Context, Step

NOTEBOOK: Final = "03-bootstrap0"
MAKEFILE_DISK: Final = (
    "/dev/sda"  # hard-coded in vm/bootstrap0 since 91ea7bd (utm-makefile-keys.md §1)
)
# Installed, not the live ISO: the ISO has /iso mounted; an installed NixOS has /etc/NIXOS. [infer]
INSTALLED_SCRIPT: Final = "test -e /etc/NIXOS && ! test -e /iso"


def installed_probe(ctx: Context, vm: VM) -> Callable[[], Check]:
    """Installed already? First as the installed user + key (after vm/bootstrap root cannot
    log in any more, lesson 7), then as root on the live ISO."""
    live = remote_probe(ctx, vm, INSTALLED_SCRIPT, installed=False)

    def probe() -> Check:
        try:
            if (check := login_works(ctx, vm)).done:
                return Check(True, f"installed: {check.reason}")
        except RunbookError:
            pass  # no user yet: the live ISO (or nothing) answers
        return live()

    return probe


def bootstrap0(ctx: Context, vm: VM) -> Step:
    argv = make_argv(ctx, "vm/bootstrap0", vm)
    disk = vm.disk_interface.device
    note = f"wipes {disk} on {vm.name}"
    cmds = [render(argv)]
    if disk != MAKEFILE_DISK:
        cmds.insert(
            0,
            f"# the Makefile partitions {MAKEFILE_DISK}; this VM's disk is {disk}: "
            f"runbook doctor {ctx.dep.nixos_config} --fix first",
        )
    b = ctx.dep.bootstrap
    return Step(
        f"bootstrap0 {vm.name}",
        host_label(ctx, vm, installed=False),
        cmds,
        probe=installed_probe(ctx, vm),
        action=lambda: run_make(argv, ctx.secret(b.password_secret, b.password_env)),
        remote=True,
        dangerous=True,
        note=note,
    )


def remove_iso(ctx: Context, vm: VM) -> Step:
    # update configuration needs a stopped VM and drops every drive left out (§3).
    script = [
        'tell application "UTM"',
        f'set vm to virtual machine named "{vm.name}"',
        "set config to configuration of vm",
        "set drives of config to (items 2 thru -1 of drives of config)",
        "update configuration of vm with config",
        "end tell",
    ]
    return Step(
        f"remove the ISO from {vm.name} and boot from disk",
        "localhost (UTM)",
        [
            render([utmctl(ctx), "stop", vm.name]),
            osascript(script),
            render([utmctl(ctx), "start", vm.name]),
        ],
        probe=installed_probe(ctx, vm),
        remote=True,
        # runbook.utm.remove_iso can do it, but this check (installed?) cannot tell whether the
        # ISO is still attached, so a rerun could not say "already done": by hand until it can
        plan_only="its check cannot see UTM's drives yet (runbook.utm.remove_iso does the removal)",
    )


def steps(ctx: Context) -> list[Step]:
    return [s for vm in ctx.dep.vms for s in (bootstrap0(ctx, vm), remove_iso(ctx, vm))]
