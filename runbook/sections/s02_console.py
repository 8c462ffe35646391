"""02 部署流程速查 2 + 关键经验 4, 8: set the live ISO's root password on the console, find the IP.

The console helper (typing through UTM `input keystroke`, Hammerspoon raw key events) and
address discovery (mDNS, ARP by MAC, utmctl ip-address) land in later issues; the steps
render the exact commands (utm-makefile-keys.md §3, §7) and say they are plan-only.
"""

from __future__ import annotations

from typing import Final

from runbook.params import VM
from runbook.sections.common import keystroke, render, utmctl
from runbook.steps import DONE, TODO, Check, Context, Step, unchecked

NOTEBOOK: Final = "02-console-ip"


def password_stored(ctx: Context) -> Step:
    b = ctx.dep.bootstrap

    def probe() -> Check:
        return DONE if ctx.secret(b.password_secret, b.password_env) else TODO

    cmd = f"install -m 600 /dev/stdin {ctx.store.path(b.password_secret)}   # or export {b.password_env}"
    return Step(
        f"live root password in the secret store ({b.password_secret})",
        "localhost",
        [cmd],
        probe=probe,
        plan_only="choose the password and store it yourself",
    )


def set_root_password(ctx: Context, vm: VM) -> Step:
    b = ctx.dep.bootstrap
    password = ctx.secret(b.password_secret, b.password_env) or "<password from the store>"
    cmds = [
        keystroke(vm, "sudo su"),
        keystroke(vm, "passwd"),
        keystroke(vm, password),
        keystroke(vm, password),
    ]
    return Step(
        f"set root's password on {vm.name}'s console (lesson 4)",
        f"{vm.name} (console)",
        cmds,
        probe=lambda: unchecked("the console is only reachable through UTM on the Mac"),
        plan_only="the console typing helper lands in a later issue",
    )


def find_address(ctx: Context, vm: VM) -> Step:
    mac = (vm.mac or "<MAC from UTM>").lower()
    # ARP by MAC: lowercase, leading zeros stripped per octet, as `arp -an` prints (§7.3).
    arp_mac = ":".join(o.lstrip("0") or "0" for o in mac.split(":")) if vm.mac else mac
    cmds = [
        render([utmctl(ctx), "ip-address", vm.name]) + "   # needs the guest agent: not on the ISO",
        f"arp -an | grep -i ' {arp_mac} '",
        f"dns-sd -G v4 {vm.address}" if vm.address.endswith(".local") else f"ping -c1 {vm.address}",
        keystroke(vm, "ip -4 -brief addr show"),
    ]
    return Step(
        f"find {vm.name}'s address (lesson 8)",
        "localhost",
        cmds,
        probe=lambda: unchecked(
            f"discovery helper not here yet; using {vm.address} from the params"
        ),
        plan_only="the discovery helper lands in a later issue",
    )


def steps(ctx: Context) -> list[Step]:
    out = [password_stored(ctx)]
    for vm in ctx.dep.vms:
        out += [set_root_password(ctx, vm), find_address(ctx, vm)]
    return out
