"""The checks every VM's configuration (cache and workers) answers alike: logging in after
the switch, the login shell, sudo, DHCP on the NIC and the guest agent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from runbook.doctor.context import NO_PARAMS, Context, describe, where_set
from runbook.doctor.model import Check, Status, Verdict, check, ok, unchecked
from runbook.nixcfg import Opaque, SystemView, Undecided

logger: Final = logging.getLogger(__name__)

CHECKS: Final[list[Check]] = []


def _each_system(ctx: Context, judge: Callable[[SystemView], Verdict]) -> Verdict:
    """The worst verdict over the cache and worker systems (all of them named in it)."""
    views = ctx.all_views
    if not views:
        why = f" ({NO_PARAMS})" if ctx.deployment is None else ""
        return unchecked(f"no VM configuration found{why}")
    verdicts = [(view.name, judge(view)) for view in views]
    order = [Status.FAIL, Status.UNCHECKED, Status.WARN, Status.OK]
    worst = min((v for _, v in verdicts), key=lambda v: order.index(v.status))
    by_finding: dict[str, list[str]] = {}
    for name, verdict in verdicts:
        if verdict.status is worst.status:
            by_finding.setdefault(verdict.finding, []).append(name)
    shown = "; ".join(f"{', '.join(names)}: {text}" for text, names in by_finding.items())
    return Verdict(worst.status, shown, worst.fix)


@check(CHECKS, "root-login-after-switch", "lesson 7: root cannot log in after vm/switch")
def check_root_login_after_switch(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("services", "openssh", "settings", "PermitRootLogin")
        permit, mutable = view.value(path), view.value(("users", "mutableUsers"))
        if isinstance(permit, Undecided | Opaque) or isinstance(mutable, Undecided | Opaque):
            return unchecked(
                f"PermitRootLogin {describe(permit)}, mutableUsers {describe(mutable)}"
            )
        reasons = []
        if permit != "yes":
            shown = (
                describe(permit) if permit is not None else 'not set (NixOS: "prohibit-password")'
            )
            reasons.append(f"PermitRootLogin {shown}{where_set(view, path)}")
        if mutable is False:
            reasons.append(
                f"users.mutableUsers = false{where_set(view, ('users', 'mutableUsers'))}"
            )
        if not reasons:
            return ok("root keeps its password login")
        return Verdict(
            Status.WARN,
            f"{', '.join(reasons)}: root's password login is gone after the switch",
            "nothing to do: after vm/switch the runbook logs in as the user with the key; make "
            "sure users.users.<user>.openssh.authorizedKeys.keys has it",
        )

    return _each_system(ctx, judge)


def _user_of(ctx: Context, view: SystemView) -> str | None:
    if view.user:
        return view.user
    users = [u for u in view.names_under(("users", "users")) if u != "root"]
    return ctx.user or (users[0] if len(users) == 1 else None)


@check(CHECKS, "login-shell-fish", "lesson 5: fish parses what ssh sends")
def check_login_shell_fish(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        user = _user_of(ctx, view)
        if user is None:
            return unchecked("no user found (" + NO_PARAMS + ")")
        path: tuple[str, ...] = ("users", "users", user, "shell")
        shell = view.value(path)
        if shell is None:
            path = ("users", "defaultUserShell")
            shell = view.value(path)
        if isinstance(shell, Undecided):
            return unchecked(f"{user}'s shell: {shell.reason}")
        if shell is not None and "fish" in describe(shell):
            return Verdict(
                Status.WARN,
                f"{user}'s login shell is fish{where_set(view, path)}",
                "nothing to do: the runbook sends every remote command as bash on stdin; by "
                "hand wrap commands in `bash -c '…'`",
            )
        return ok(f"{user}'s shell is {describe(shell)}")

    return _each_system(ctx, judge)


@check(CHECKS, "sudo-nopasswd", "lesson 7: sudo without a password for wheel")
def check_sudo_nopasswd(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        user = _user_of(ctx, view)
        if user is None:
            return unchecked("no user found (" + NO_PARAMS + ")")
        groups = view.value(("users", "users", user, "extraGroups"))
        if (
            isinstance(groups, list)
            and "wheel" not in groups
            and not any(isinstance(g, Opaque) for g in groups)
        ):
            return Verdict(
                Status.FAIL,
                f"{user} is not in wheel{where_set(view, ('users', 'users', user, 'extraGroups'))}: no sudo",
                f'add "wheel" to users.users.{user}.extraGroups',
            )
        path = ("security", "sudo", "wheelNeedsPassword")
        needs = view.value(path)
        if needs is False:
            return ok(f"wheelNeedsPassword = false{where_set(view, path)}")
        if isinstance(needs, Undecided | Opaque):
            return unchecked(f"wheelNeedsPassword {describe(needs)}")
        return Verdict(
            Status.WARN,
            f"security.sudo.wheelNeedsPassword is {describe(needs)}: sudo asks {user}'s password",
            "set `security.sudo.wheelNeedsPassword = false;`, or give the runbook the sudo "
            "password (secret store)",
        )

    return _each_system(ctx, judge)


@check(CHECKS, "nic-name-pinned", "lesson 8: DHCP only on a named interface")
def check_nic_name_pinned(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("networking", "useDHCP")
        global_dhcp = view.value(path)
        if global_dhcp is not False:
            if isinstance(global_dhcp, Undecided | Opaque):
                return unchecked(f"networking.useDHCP {describe(global_dhcp)}")
            return ok(f"DHCP on every interface (networking.useDHCP {describe(global_dhcp)})")
        pinned = [
            f"{nic}{where_set(view, ('networking', 'interfaces', nic, 'useDHCP'))}"
            for nic in view.names_under(("networking", "interfaces"))
            if view.value(("networking", "interfaces", nic, "useDHCP")) is True
        ]
        what = f"only on {', '.join(pinned)}" if pinned else "on no interface"
        return Verdict(
            Status.WARN,
            f"networking.useDHCP = false{where_set(view, path)}, DHCP {what}: a NIC "
            "named otherwise gets no address after the switch",
            "check the name with `ip link` on the VM's console; or set "
            "`networking.useDHCP = true;` (lesson 8: the runbook finds the VM by mDNS)",
        )

    return _each_system(ctx, judge)


@check(CHECKS, "guest-agent", "lesson 8: utmctl ip-address needs the QEMU guest agent")
def check_guest_agent(ctx: Context) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("services", "qemuGuest", "enable")
        value = view.value(path)
        if value is True:
            return ok(f"services.qemuGuest.enable{where_set(view, path)}")
        if isinstance(value, Undecided | Opaque):
            return unchecked(f"services.qemuGuest.enable {describe(value)}")
        return Verdict(
            Status.WARN,
            f"services.qemuGuest.enable is {describe(value)}: `utmctl ip-address` cannot answer",
            "set `services.qemuGuest.enable = true;` if you want utmctl ip-address; the "
            "runbook finds the VM by mDNS and ARP anyway (utm-makefile-keys.md §7)",
        )

    return _each_system(ctx, judge)
