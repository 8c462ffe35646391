"""02 部署流程速查 2 + 关键经验 4, 8: set the live ISO's root password on the console, find the IP.

The password is typed on the VM's console with the params' backend (lesson 4: UTM `input scan
code`, Hammerspoon raw key events, Quartz, or the serial port) and never shown: plans print
`*****`, `passwd` does not echo, and with a serial console each prompt is waited for so nothing
is typed ahead of it. It is the runbook's own: the one in the secret store (params
`bootstrap.password_secret`) or RUNBOOK_ROOT_PASSWORD when the user set one, else a random one
made here (Python `secrets`) and stored 0600 before anything types it, so a run that stops after
typing still has it, and a resumed run types and logs in with the same one. The address is
resolved now (lesson 8: mDNS, `utmctl ip-address`, ARP by MAC after a sweep of the bridged
subnet, the console read back or a typed call-back, then the params' address); on the live
ISO (no avahi, no guest agent, nothing in ARP yet) a fresh VM may not be found before
anything is typed, so the check then says "not found yet" and the password is typed first.
The step passes only when a fresh SSH login as root with that password works there. The address found is kept in the run's record (`addresses.json`) for notebooks
03-09 of the same run, instead of the params' one; a later run finds it again.
"""

from __future__ import annotations

import math
import os
import secrets
import string
import threading
from typing import Final

from runbook.core.errors import ConnectError, HostKeyChangedError, RunbookError
from runbook.core.masking import MASK
from runbook.core.params import VM
from runbook.core.secrets import Secret
from runbook.engine.steps import TODO, Check, Context, Step, record_address
from runbook.mac.discover import CALLBACK_COMMAND, AddressNotFoundError, callback_command
from runbook.sections.vm_console import (
    LazyConsole,
    VmConsole,
    mac_side,
    open_console,
    resolve,
    save_screen,
    type_value,
    typing,
    watching,
)
from runbook.transport.commands import ConsoleTyping, RemoteScript
from runbook.transport.remote import Connection

NOTEBOOK: Final = "02-console-ip"
# shadow's passwd prompts (the NixOS ISO and Debian ship the same shadow-utils wording).
NEW_PROMPT: Final = r"[Nn]ew password:\s*$"
RETYPE_PROMPT: Final = r"[Rr]etype new password:\s*$"
PASSWD_DONE: Final = (
    r"password updated successfully|passwd: [^\n]*(?:unchanged|error|failure)[^\n]*"
)
READY_MARK: Final = "RUNBOOK-ROOT-READY"


# The password the runbook makes when the user set none (issue 15): lowercase letters and
# digits only. Each is an unshifted key of the US table every backend types from
# (runbook.mac.console.keymap: scan codes, raw key events, serial bytes), so a Shift event lost
# or mistimed cannot change it; none is special to fish, bash, sudo, passwd or a tty's line
# editing ($ ! ' " \ # ~ space, erase and kill keys). y and z are left out: a QWERTZ keymap swaps
# them. 26 of 34 symbols: 132 bits, more than a 128-bit key.
LIVE_ALPHABET: Final = "".join(c for c in string.ascii_lowercase + string.digits if c not in "yz")
LIVE_LENGTH: Final = 26
LIVE_BITS: Final = LIVE_LENGTH * math.log2(len(LIVE_ALPHABET))
_making = threading.Lock()  # 02 types on its VMs in parallel: one password for all of them


def new_live_password(name: str) -> Secret:
    """A fresh random live-ISO root password, registered for masking as it is made."""
    return Secret("".join(secrets.choice(LIVE_ALPHABET) for _ in range(LIVE_LENGTH)), name)


def stored_live_password(ctx: Context) -> Secret | None:
    """The live ISO's root password the user or an earlier run set: the secret store's
    (params `bootstrap.password_secret`), else ${bootstrap.password_env}; None without one."""
    b = ctx.dep.bootstrap
    stored = ctx.store.get(b.password_secret)
    if stored:  # an empty file is none
        return stored
    value = os.environ.get(b.password_env)
    return Secret(value, b.password_secret) if value else None


def live_password(ctx: Context) -> Secret:
    """The live ISO's root password: the user's (store or environment) when set, else a new
    random one, put in the secret store (0600) before it is returned, so before anything can
    type it. Plan mode never makes one."""
    b = ctx.dep.bootstrap
    with _making:
        found = stored_live_password(ctx)
        if found is not None:
            return found
        if ctx.planning:
            raise RunbookError("plan mode makes no password")
        return ctx.store.put(b.password_secret, new_live_password(b.password_secret))


def password_stored(ctx: Context) -> Step:
    b = ctx.dep.bootstrap
    path = ctx.store.path(b.password_secret)

    def probe() -> Check:
        if ctx.store.get(b.password_secret):
            return Check(True, f"stored in {path}")
        if os.environ.get(b.password_env):
            return Check(True, f"from ${b.password_env}")
        return Check(False, "none set: the runbook makes one")

    def action() -> str:
        live_password(ctx)
        return (
            f"none was set: made a random one ({LIVE_LENGTH} characters, {LIVE_BITS:.0f} bits) "
            f"and stored it 0600 in {path}; it is typed on each console and used for bootstrap0"
        )

    why = f"# unless stored already or ${b.password_env} is set, the runbook makes one"
    made = f"secrets.choice({LIVE_ALPHABET!r}) x {LIVE_LENGTH} ({LIVE_BITS:.0f} bits)"
    return Step(
        f"live root password in the secret store ({b.password_secret})",
        "localhost",
        [f"{why} (never shown):", f"{made} -> {path} (0600, before anything types it)"],
        probe=probe,
        action=action,
    )


def root_login(ctx: Context, vm: VM, address: str, password: Secret) -> tuple[bool, str]:
    """A fresh SSH connection as root with `password` at `address` (the live ISO's identity)."""
    host = ctx.dep.host(vm, installed=False, address=address)
    try:
        with Connection(host, password=password) as conn:
            result = conn.run("id -u", check=False)
    except HostKeyChangedError:
        raise  # never read as "no password yet": only bootstrap0 (03) replaces a key
    except ConnectError as exc:
        return False, str(exc)
    ok = result.ok and result.stdout.strip() == "0"
    return ok, f"fresh SSH login as {host.label} with the password works" if ok else result.stderr


def installed_login(ctx: Context, vm: VM, address: str) -> bool:
    """The installed identity (user + key) logs in: the ISO phase is over (lesson 7)."""
    try:
        with Connection(ctx.dep.host(vm, installed=True, address=address)) as conn:
            return conn.run("true", check=False).ok
    except HostKeyChangedError:
        raise
    except (ConnectError, OSError):
        return False


def password_lines(ctx: Context, vm: VM, password: Secret | str) -> list[ConsoleTyping]:
    """`sudo su`, `passwd`, the password twice: each after its prompt when the console answers
    (`password` is `*****` in a plan, which makes none)."""
    return [
        typing(ctx, vm, "sudo su"),
        # the marker is split so only its output matches, not the echoed command line
        typing(ctx, vm, "echo RUNBOOK-ROOT-''READY", READY_MARK + r"\s"),
        typing(ctx, vm, "passwd", NEW_PROMPT),
        typing(ctx, vm, password, RETYPE_PROMPT),
        typing(ctx, vm, password, PASSWD_DONE),
    ]


def type_password(ctx: Context, con: VmConsole, password: Secret) -> None:
    with watching(con) as watch:
        said = ""
        for line in password_lines(ctx, con.vm, password):
            said = type_value(con, watch, line)
        if said and "successfully" not in said:
            raise RunbookError(f"passwd on {con.vm.name}'s console said: {said.strip()}")


def set_root_password(ctx: Context, vm: VM) -> Step:
    console = LazyConsole(ctx, vm)

    def probe() -> Check:
        # A check types nothing: without avahi, a guest agent or ARP traffic (the live ISO),
        # a fresh VM may not be found yet, and then the password is typed first (lesson 8).
        mac, con = console()
        try:
            where = resolve(mac, vm, con, typing=False).address
        except AddressNotFoundError as exc:
            return Check(False, f"not found yet, so the password is typed first ({exc})")
        finally:
            console.close()
        password = stored_live_password(ctx)  # a check makes none
        if password is not None:
            ok, detail = root_login(ctx, vm, where, password)
            if ok:
                return Check(True, detail)
        if installed_login(ctx, vm, where):
            return Check(True, f"{vm.name} is installed: {ctx.dep.user} logs in with the key")
        return TODO

    def action() -> str:
        password = live_password(ctx)  # stored (0600) before a key is typed
        mac, con = console()
        try:
            try:
                type_password(ctx, con, password)
            finally:
                save_screen(ctx, con, "02-root-password")
            # now the VM may be found by what it answers on its console (lesson 8)
            where = resolve(mac, vm, con).address
        finally:
            console.close()
        ok, detail = root_login(ctx, vm, where, password)
        if not ok:
            raise RunbookError(f"typed the password on {con.label}, but SSH still fails: {detail}")
        return f"typed on {con.label}; {detail}"

    return Step(
        f"set root's password on {vm.name}'s console (lesson 4)",
        f"{vm.name} (console)",
        [
            *password_lines(ctx, vm, MASK),
            "# then a fresh root login with it:",
            RemoteScript(
                ctx.dep.host(vm, installed=False, address=f"<{vm.name}'s address now>"), "id -u"
            ),
        ],
        probe=probe,
        action=action,
        remote=True,
    )


def find_address(ctx: Context, vm: VM) -> Step:
    def action() -> str:
        mac = mac_side(ctx)
        try:
            con: VmConsole | None = open_console(ctx, mac, vm)
        except RunbookError:
            con = None
        try:
            found = resolve(mac, vm, con)
        finally:
            if con is not None:
                con.close()
        moved = "" if found.address == vm.address else f" (params say {vm.address})"
        # 03-09 of this run use it (runbook.engine.steps.with_run_addresses); never a later run
        record_address(ctx.record_dir, vm.name, found.address, found.method)
        return f"{found.address}{moved}, found by {found.method}; tried: {'; '.join(found.tried)}"

    mac_of = vm.mac.lower() if vm.mac else f"<MAC of {vm.name} in UTM's configuration>"
    where = ctx.dep.utm.bridged_subnet or f"{ctx.dep.utm.host_interface}'s subnet"
    hello = callback_command(f"<{ctx.dep.utm.host_interface}'s address>", "<port>", "<nonce>")
    return Step(
        f"find {vm.name}'s address (lesson 8)",
        "localhost",
        [
            f"# mDNS: {vm.address}" if not vm.address[0].isdigit() else "# mDNS: params give an IP",
            f"utmctl ip-address {vm.name}   # needs the guest agent: not on the ISO",
            f"# ARP knows a VM only after traffic: port {vm.port} across {where} (a /24 at most)",
            f"arp -an | grep -i ' {mac_of} '",
            f"[{vm.name} console] {CALLBACK_COMMAND} ⏎   # read back on a serial console",
            f"[{vm.name} console] {hello} ⏎   # any backend: the caller's address is the VM's",
        ],
        action=action,
        remote=True,
    )
