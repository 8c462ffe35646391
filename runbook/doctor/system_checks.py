"""The checks every VM's configuration (cache and workers) answers alike: logging in after
the switch (root, and the user with the deployment's key), the login shell, sudo, DHCP on
the NIC and the guest agent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

from runbook.doctor.context import NO_PARAMS, DoctorContext, describe, parse_public_key, where_set
from runbook.doctor.model import DoctorCheck, Status, Verdict, check, ok, unchecked_verdict
from runbook.nix.nixcfg import NixPath, Opaque, SystemView, Undecided
from runbook.nix.nixfile import DYNAMIC

logger: Final = logging.getLogger(__name__)

CHECKS: Final[list[DoctorCheck]] = []


def _each_system(ctx: DoctorContext, judge: Callable[[SystemView], Verdict]) -> Verdict:
    """The worst verdict over the cache and worker systems (all of them named in it)."""
    views = ctx.all_views
    if not views:
        why = f" ({NO_PARAMS})" if ctx.deployment is None else ""
        return unchecked_verdict(f"no VM configuration found{why}")
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
def check_root_login_after_switch(ctx: DoctorContext) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("services", "openssh", "settings", "PermitRootLogin")
        permit, mutable = view.value(path), view.value(("users", "mutableUsers"))
        if isinstance(permit, Undecided | Opaque) or isinstance(mutable, Undecided | Opaque):
            return unchecked_verdict(
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
            "nothing to do: after vm/switch the runbook logs in as the user with the key "
            "(user-key-authorized checks that the configuration authorizes it)",
        )

    return _each_system(ctx, judge)


def _user_of(ctx: DoctorContext, view: SystemView) -> str | None:
    """The user the runbook logs in as: params `user`, else the one the flake's mkSystem
    names for this system, else the only normal user the modules define."""
    if ctx.user:
        return ctx.user
    if view.user:
        return view.user
    users = [u for u in view.names_under(("users", "users")) if u != "root"]
    return users[0] if len(users) == 1 else None


def _undefined(view: SystemView, user: str) -> Verdict | None:
    """Unchecked when the modules do not define `user` (user-key-authorized fails for it)."""
    names = view.names_under(("users", "users"))
    if user in names:
        return None
    if DYNAMIC in names:
        return unchecked_verdict(f"users.users.${{…}}: which user {view.name} defines is not read")
    return unchecked_verdict(f"users.users.{user} is not defined (see user-key-authorized)")


def _root_gone(view: SystemView) -> bool:
    """PermitRootLogin is not "yes" and users are immutable: after the switch root has no
    password login and no key the runbook holds."""
    permit = view.value(("services", "openssh", "settings", "PermitRootLogin"))
    return permit != "yes" and view.value(("users", "mutableUsers")) is False


def _locked_out(view: SystemView) -> str:
    if _root_gone(view):
        return (
            'with PermitRootLogin not "yes" and users.mutableUsers = false the switch leaves '
            "only the console"
        )
    return "the runbook's login after the switch (04) fails"


AUTHORIZED: Final = ("openssh", "authorizedKeys")


def _authorized_keys(
    ctx: DoctorContext, view: SystemView, user: str
) -> tuple[list[tuple[tuple[str, str], str]], str | None]:
    """The keys the configuration authorizes for `user`, each with where it comes from, and
    why the list is not all known (a value this reader does not evaluate), if it is not."""
    base = ("users", "users", user, *AUTHORIZED)
    found: list[tuple[tuple[str, str], str]] = []
    for d in view.winners((*base, "keys")):
        if d.conditional:
            return found, f"authorizedKeys.keys is under mkIf at {d.where}"
        items = d.value if isinstance(d.value, list) else [d.value]
        for item in items:
            key = parse_public_key(item) if isinstance(item, str) else None
            if isinstance(item, Opaque):
                return found, f"authorizedKeys.keys has {item.text} at {d.where}"
            if key is not None:
                found.append((key, d.where))
    for d in view.winners((*base, "keyFiles")):
        items = d.value if isinstance(d.value, list) else [d.value]
        for item in items:
            if not isinstance(item, NixPath):
                return found, f"authorizedKeys.keyFiles has {describe(item)} at {d.where}"
            rel = Path(d.rel.parent, item.text)
            try:
                text = (ctx.root / rel).read_text()
            except OSError as exc:
                return found, f"keyFiles {item.text} ({d.where}): {exc.strerror}"
            for number, line in enumerate(text.splitlines(), 1):
                key = parse_public_key(line) if not line.lstrip().startswith("#") else None
                if key is not None:
                    found.append((key, f"{rel.as_posix()}:{number}"))
    return found, None


@check(CHECKS, "user-key-authorized", "lesson 7: after the switch only the user's key logs in")
def check_user_key_authorized(ctx: DoctorContext) -> Verdict:
    identity = ctx.identity_key

    def judge(view: SystemView) -> Verdict:
        user = _user_of(ctx, view)
        if user is None:
            return unchecked_verdict("no user found (" + NO_PARAMS + ")")
        if view.name == str(ctx.worker_module):  # no system to read, only the worker module
            return unchecked_verdict(f"no VM configuration the checkout builds, only {view.name}")
        defined = view.names_under(("users", "users"))
        if user not in defined:
            if DYNAMIC in defined:
                at = view.where(("users", "users", DYNAMIC)) or "an interpolated name"
                return unchecked_verdict(
                    f"users.users.${{…}} at {at}: which user it defines is not read"
                )
            named = f" (the flake builds it for user {view.user})" if view.user else ""
            return Verdict(
                Status.FAIL,
                f"users.users.{user} is not defined{named}: nobody logs in as {user}; "
                f"{_locked_out(view)}",
                f"set user: in params to the configuration's user, or define users.users.{user}"
                f" with openssh.authorizedKeys.keys in users/{user}/nixos.nix (and user = "
                f'"{user}"; in flake.nix\'s mkSystem call)',
            )
        keys, unknown = _authorized_keys(ctx, view, user)
        where = ", ".join(sorted({w for _, w in keys}))
        if isinstance(identity, tuple) and identity in [k for k, _ in keys]:
            at = next(w for k, w in keys if k == identity)
            return ok(f"{user} authorizes the identity's key ({at})")
        if unknown is not None:
            return unchecked_verdict(f"{user}'s keys: {unknown}")
        if isinstance(identity, str):
            return unchecked_verdict(identity)
        if identity is None:  # no params: which key the runbook uses is not known
            if keys:
                return ok(f"{user} has {len(keys)} authorized key(s) ({where}); {NO_PARAMS}")
            return Verdict(
                Status.WARN,
                f"{user} has no authorized key: after the switch the runbook cannot log in "
                f"as {user}; {_locked_out(view)}",
                f"add your public key to users.users.{user}.openssh.authorizedKeys.keys",
            )
        shown = f"{identity[0]} …{identity[1][-12:]}"
        has = f"the {len(keys)} it has ({where})" if keys else "it has none"
        public = ctx.deployment.identity if ctx.deployment else "identity"
        return Verdict(
            Status.FAIL,
            f"the key is not authorized for {user}: identity's {shown} is not among "
            f"users.users.{user}.openssh.authorizedKeys ({has}); {_locked_out(view)}",
            f"add the line of {public}.pub to users.users.{user}.openssh.authorizedKeys.keys"
            f" (users/{view.user or user}/nixos.nix; `runbook doctor PARAMS --fix` does this)",
        )

    return _each_system(ctx, judge)


@check(CHECKS, "login-shell-fish", "lesson 5: fish parses what ssh sends")
def check_login_shell_fish(ctx: DoctorContext) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        user = _user_of(ctx, view)
        if user is None:
            return unchecked_verdict("no user found (" + NO_PARAMS + ")")
        if (undefined := _undefined(view, user)) is not None:
            return undefined
        path: tuple[str, ...] = ("users", "users", user, "shell")
        shell = view.value(path)
        if shell is None:
            path = ("users", "defaultUserShell")
            shell = view.value(path)
        if isinstance(shell, Undecided):
            return unchecked_verdict(f"{user}'s shell: {shell.reason}")
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
def check_sudo_nopasswd(ctx: DoctorContext) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        user = _user_of(ctx, view)
        if user is None:
            return unchecked_verdict("no user found (" + NO_PARAMS + ")")
        if (undefined := _undefined(view, user)) is not None:
            return undefined
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
            return unchecked_verdict(f"wheelNeedsPassword {describe(needs)}")
        return Verdict(
            Status.WARN,
            f"security.sudo.wheelNeedsPassword is {describe(needs)}: sudo asks {user}'s password",
            "set `security.sudo.wheelNeedsPassword = false;`, or give the runbook the sudo "
            "password (secret store)",
        )

    return _each_system(ctx, judge)


@check(CHECKS, "nic-name-pinned", "lesson 8: DHCP only on a named interface")
def check_nic_name_pinned(ctx: DoctorContext) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("networking", "useDHCP")
        global_dhcp = view.value(path)
        if global_dhcp is not False:
            if isinstance(global_dhcp, Undecided | Opaque):
                return unchecked_verdict(f"networking.useDHCP {describe(global_dhcp)}")
            return ok(f"DHCP on every interface (networking.useDHCP {describe(global_dhcp)})")
        nics = view.names_under(("networking", "interfaces"))
        pinned = [
            f"{nic}{where_set(view, ('networking', 'interfaces', nic, 'useDHCP'))}"
            for nic in nics
            if view.value(("networking", "interfaces", nic, "useDHCP")) is True
        ]
        if not pinned:
            return _no_address(view, nics, where_set(view, path))
        return Verdict(
            Status.WARN,
            f"networking.useDHCP = false{where_set(view, path)}, DHCP only on "
            f"{', '.join(pinned)}: a NIC named otherwise gets no address after the switch",
            "check the name with `ip link` on the VM's console; or set "
            "`networking.useDHCP = true;` (lesson 8: the runbook finds the VM by mDNS)",
        )

    return _each_system(ctx, judge)


def _no_address(view: SystemView, nics: list[str], where: str) -> Verdict:
    """useDHCP is off and no interface has DHCP: an address must come from somewhere else
    (a static one, NetworkManager, systemd-networkd), or the VM has none after the switch."""
    static = [
        nic
        for nic in nics
        if view.value(("networking", "interfaces", nic, "ipv4", "addresses")) not in (None, [])
    ]
    manager = view.value(("networking", "networkmanager", "enable"))
    networks = view.names_under(("systemd", "network", "networks"))
    if static or manager is True or networks:
        how = ", ".join(
            [f"static {', '.join(static)}"] * bool(static)
            + ["NetworkManager"] * (manager is True)
            + [f"systemd.network.networks {', '.join(networks)}"] * bool(networks)
        )
        return ok(f"networking.useDHCP = false{where}; addresses from {how}")
    if isinstance(manager, Undecided | Opaque):
        return unchecked_verdict(f"networking.networkmanager.enable {describe(manager)}")
    return Verdict(
        Status.FAIL,
        f"networking.useDHCP = false{where} and no interface has DHCP or an address: the VM "
        "has no network after the switch",
        "pin the NIC in the machine file: `networking.interfaces.<name>.useDHCP = true;` "
        "(the name from `ip link` on the VM's console), or set `networking.useDHCP = true;`",
    )


@check(CHECKS, "guest-agent", "lesson 8: utmctl ip-address needs the QEMU guest agent")
def check_guest_agent(ctx: DoctorContext) -> Verdict:
    def judge(view: SystemView) -> Verdict:
        path = ("services", "qemuGuest", "enable")
        value = view.value(path)
        if value is True:
            return ok(f"services.qemuGuest.enable{where_set(view, path)}")
        if isinstance(value, Undecided | Opaque):
            return unchecked_verdict(f"services.qemuGuest.enable {describe(value)}")
        return Verdict(
            Status.WARN,
            f"services.qemuGuest.enable is {describe(value)}: `utmctl ip-address` cannot answer",
            "set `services.qemuGuest.enable = true;` if you want utmctl ip-address; the "
            "runbook finds the VM by mDNS and ARP anyway (utm-makefile-keys.md §7)",
        )

    return _each_system(ctx, judge)
