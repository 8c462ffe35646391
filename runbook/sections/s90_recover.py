"""90 关键经验 3: sshd lost its host keys after a half-finished switch; recover via the console.

A last resort. The step first tries a fresh SSH login (the installed user with the key, else
root with the live password) at the VM's address found now (lesson 8). Only when sshd does not
get as far as its banner (`sshd: no hostkeys available -- exiting` on the VM; the client says
`kex_exchange_identification: Connection closed by remote host`) does it type the handbook's fix
on the console: `ssh-keygen -A`, `systemctl restart sshd`. With a console that answers, the new
public keys are read there and pinned in known_hosts (the console is the trusted channel); the
step passes only when a fresh SSH connection then succeeds.
"""

from __future__ import annotations

import logging
from typing import Final

from runbook.core.errors import ConnectError, HostKeyChangedError, RunbookError
from runbook.core.params import VM
from runbook.engine.steps import Check, Context, Step
from runbook.sections.vm_console import (
    LazyConsole,
    VmConsole,
    exit_status,
    key_fingerprint,
    marked,
    parse_public_keys,
    pin_host_keys,
    resolve,
    run_marked,
    save_screen,
    sshd_banner,
    watching,
)
from runbook.transport.commands import ConsoleTyping, RemoteScript
from runbook.transport.hostkeys import KnownHosts, entry_name
from runbook.transport.remote import Connection

logger: Final = logging.getLogger(__name__)

NOTEBOOK: Final = "90-recover-host-keys"
FIX: Final = ("ssh-keygen -A", "systemctl restart sshd")  # the handbook's lesson 3
SHOW_KEYS: Final = "cat /etc/ssh/ssh_host_*_key.pub"
FIX_TAGS: Final = tuple((command, f"FIX{i}") for i, command in enumerate(FIX))


def fix_lines(ctx: Context, vm: VM) -> list[ConsoleTyping]:
    """What 90 types: each fix between markers (its exit status read back), then the keys."""
    return [marked(ctx, vm, c, tag) for c, tag in FIX_TAGS] + [marked(ctx, vm, SHOW_KEYS, "KEYS")]


def login_check(ctx: Context, vm: VM, address: str | None = None) -> RemoteScript:
    """`true` on a fresh login to `vm` at `address` (found on every run, lesson 8)."""
    at = address or f"<{vm.name}'s address now>"
    return RemoteScript(ctx.dep.host(vm, address=at), "true")


def fresh_login(ctx: Context, vm: VM, address: str) -> Check:
    """A new SSH connection logs in: the installed user + key, else root + the live password."""
    notes = []
    b = ctx.dep.bootstrap
    for installed in (True, False):
        password = None if installed else ctx.secret(b.password_secret, b.password_env)
        if not installed and password is None:
            continue
        host = ctx.dep.host(vm, installed=installed, address=address)
        try:
            with Connection(host, password=password) as conn:
                if conn.run(login_check(ctx, vm, address).script, check=False).ok:
                    return Check(True, f"a fresh SSH login as {host.label} works")
        except HostKeyChangedError as exc:
            return Check(False, str(exc))
        except ConnectError as exc:
            notes.append(str(exc))
    return Check(False, "; ".join(notes))


def recover_on_console(ctx: Context, con: VmConsole, address: str) -> str:
    """Type the fix; with a console that answers, check it and pin the new keys."""
    with watching(con) as watch:
        for (command, tag), line in zip(FIX_TAGS, fix_lines(ctx, con.vm), strict=False):
            out = run_marked(con, watch, line, tag)
            if out is not None and exit_status(out, tag) != 0:
                raise RunbookError(f"`{command}` failed on {con.label}: {out.strip()[-300:]}")
        shown = run_marked(con, watch, fix_lines(ctx, con.vm)[-1], "KEYS")
    keys = parse_public_keys(shown or "")
    if keys:
        pin_host_keys(ctx.dep.known_hosts_path, address, con.vm.port, keys)
        prints = ", ".join(f"{kind} {key_fingerprint(blob)}" for kind, blob in keys)
        return f"new host keys read on the console and pinned: {prints}"
    # Without a readable console the new key can only be learned on first use: say so.
    KnownHosts(ctx.dep.known_hosts_path).forget(entry_name(address, con.vm.port))
    return (
        "the console cannot be read back, so the new host key is learned on first use: "
        f"compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on {con.vm.name}"
    )


def recover(ctx: Context, vm: VM) -> Step:
    console = LazyConsole(ctx, vm)
    state: dict[str, str] = {}  # the address the probe found, for the action

    def address() -> str:
        mac, con = console()
        return resolve(mac, vm, con, sshd_may_be_down=True).address

    def probe() -> Check:
        try:
            where = address()
        finally:
            console.close()  # one client at a time on a serial console: leave it
        state["address"] = where
        return fresh_login(ctx, vm, where)

    def action() -> str:
        _, con = console()
        try:
            where = state.get("address") or address()
            banner = sshd_banner(where, vm.port)
            if banner is not None:
                why = fresh_login(ctx, vm, where).reason
                raise RunbookError(
                    f"sshd on {vm.name} ({where}) answers ({banner}), so its host keys are "
                    f"there; logins fail for another reason: {why}"
                )
            try:
                pinned = recover_on_console(ctx, con, where)
            finally:
                save_screen(ctx, con, "90-host-keys")
        finally:
            console.close()
        after = fresh_login(ctx, vm, where)
        if not after.done:
            raise RunbookError(f"after {' and '.join(FIX)} on {con.label}: {after.reason}")
        return f"sshd on {where} had no host keys; typed {', '.join(FIX)}; {pinned}; {after.reason}"

    return Step(
        f"recover sshd host keys on {vm.name}",
        f"{vm.name} (console)",
        [
            login_check(ctx, vm),
            "# only if that fails, on the console:",
            *fix_lines(ctx, vm),
        ],
        probe=probe,
        action=action,
        remote=True,
    )
