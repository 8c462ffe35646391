"""01 部署流程速查 1: create each VM in UTM (bridged network, booting the NixOS ISO).

UTM has no helper in runbook/ yet: the steps render the AppleScript and utmctl commands
(utm-makefile-keys.md §2-3) and check what `utmctl status` says when UTM is installed.
"""

from __future__ import annotations

from typing import Final

from runbook.params import VM
from runbook.sections.common import osascript, render, utm_status_probe, utmctl
from runbook.steps import Context, Step

NOTEBOOK: Final = "01-create-vm"
PLAN_ONLY: Final = "the UTM helper (runbook.utm) lands in a later issue"


def create(ctx: Context, vm: VM) -> Step:
    iso = ctx.dep.utm.iso or "/path/to/nixos-minimal-aarch64.iso"
    # The cheat-sheet's create, plus the display and bridged network a NixOS VM needs (§3):
    # without `displays` there is no SPICE window to type into (lesson 4).
    script = [
        'tell application "UTM"',
        f'set iso to POSIX file "{iso}"',
        (
            "set vm to make new virtual machine with properties {backend:qemu, configuration:"
            f'{{name:"{vm.name}", architecture:"aarch64", '
            "drives:{{removable:true, source:iso}, {guest size:65536}}, "
            f"network interfaces:{{{{index:0, mode:{ctx.dep.utm.network}}}}}, "
            'displays:{{hardware:"virtio-ramfb"}}}}'
        ),
        "end tell",
    ]
    return Step(
        f"create {vm.name} in UTM",
        "localhost (UTM)",
        [osascript(script), render([utmctl(ctx), "list"])],
        probe=utm_status_probe(ctx, vm, {"stopped", "starting", "started", "paused"}),
        plan_only=PLAN_ONLY,
    )


def start(ctx: Context, vm: VM) -> Step:
    return Step(
        f"start {vm.name} from the ISO",
        "localhost (UTM)",
        [render([utmctl(ctx), "start", vm.name]), render([utmctl(ctx), "status", vm.name])],
        probe=utm_status_probe(ctx, vm, {"started"}),
        plan_only=PLAN_ONLY,
    )


def steps(ctx: Context) -> list[Step]:
    return [s for vm in ctx.dep.vms for s in (create(ctx, vm), start(ctx, vm))]
