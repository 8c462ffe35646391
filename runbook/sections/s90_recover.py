"""90 关键经验 3: sshd lost its host keys after a half-finished switch; recover via the console.

A last resort: the step checks a fresh SSH login first and only types on the console when
that fails (`ssh-keygen -A`, `systemctl restart sshd`, lesson 3's fix).
"""

from __future__ import annotations

from typing import Final

from runbook.params import VM
from runbook.sections.common import host_label, keystroke, login_works
from runbook.steps import Context, Step

NOTEBOOK: Final = "90-recover-host-keys"


def recover(ctx: Context, vm: VM) -> Step:
    return Step(
        f"recover sshd host keys on {vm.name}",
        host_label(ctx, vm),
        [keystroke(vm, "ssh-keygen -A"), keystroke(vm, "systemctl restart sshd")],
        probe=lambda: login_works(ctx, vm),
        remote=True,
        plan_only="the console typing helper lands in a later issue",
    )


def steps(ctx: Context) -> list[Step]:
    return [recover(ctx, vm) for vm in ctx.dep.vms]
