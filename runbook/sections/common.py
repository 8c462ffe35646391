"""Helpers the section modules share: rendering commands as planned, make targets, probes."""

from __future__ import annotations

import re
import shlex
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runbook.core.errors import (
    CommandError,
    ConnectError,
    HostKeyChangedError,
    InputError,
    RunbookError,
)
from runbook.core.models import Elevate, Result
from runbook.core.params import VM
from runbook.core.secrets import Secret, write_private
from runbook.engine.step_output import line_printer
from runbook.engine.steps import DONE, TODO, Check, Context, unchecked
from runbook.transport import local
from runbook.transport.commands import Command, FilePut, LocalCommand, RemoteScript

# The nixos-config Makefile's variables (utm-makefile-keys.md §1): NIXADDR, NIXPORT, NIXUSER, NIXNAME.
ATTICD_ENV: Final = "/var/lib/atticd/env"


def host_label(ctx: Context, vm: VM, *, installed: bool = True) -> str:
    return f"{vm.name} ({ctx.dep.host(vm, installed=installed).label})"


def remote_script(
    ctx: Context,
    vm: VM,
    script: str,
    *,
    installed: bool = True,
    sudo: bool = False,
    transfer: bool = False,
    password: Secret | None = None,
) -> RemoteScript:
    """`script` for `vm` as the installed user (or root before the switch), as a value the plan
    renders and `ctx.execute` runs: bash reads it on stdin, so fish never parses it (lesson 5)."""
    host = ctx.dep.host(vm, installed=installed)
    return RemoteScript(
        host, script, sudo=sudo, installed=installed, transfer=transfer, password=password
    )


def ssh_render(
    ctx: Context, vm: VM, script: str, *, installed: bool = True, sudo: bool = False
) -> str:
    """How `remote_script` shows in a plan."""
    return remote_script(ctx, vm, script, installed=installed, sudo=sudo).render()


def make_argv(
    ctx: Context, target: str, vm: VM, *, user: str | None = None, name: bool = True
) -> list[str]:
    """`[env NIXUSER=...] make -C <nixos-config> <target> NIXADDR=... [NIXPORT=...] [NIXNAME=...]
    SSH_OPTIONS=...`: the one argv the plan shows and the step runs.

    NIXUSER goes in make's environment, never on its command line: a command-line variable
    would override the `NIXUSER=root $(MAKE) vm/copy` inside vm/bootstrap (§1). SSH_OPTIONS
    goes on the command line for exactly that reason: it replaces the Makefile's
    `SSH_OPTIONS=-o PubkeyAuthentication=no -o UserKnownHostsFile=/dev/null ...` (an ordinary
    `=` assignment; GNU make manual, "Overriding Variables"), in sub-makes too (MAKEFLAGS).
    """
    argv = ["env", f"NIXUSER={user}"] if user else []
    argv += ["make", "-C", str(ctx.dep.nixos_config), target, f"NIXADDR={vm.address}"]
    if vm.port != 22:
        argv.append(f"NIXPORT={vm.port}")
    if name:
        argv.append(f"NIXNAME={vm.name}")
    argv.append(f"SSH_OPTIONS={ssh_options(ctx, key=user == ctx.dep.user)}")
    return argv


# make hands SSH_OPTIONS to sh and to rsync's -e unquoted: a path in it must be one plain word
_PLAIN_PATH: Final = re.compile(r"^[A-Za-z0-9_./@%+=:,-]+$")


def _plain(key: str, path: Path) -> str:
    if not _PLAIN_PATH.match(str(path)):
        raise InputError(
            f"key {key}: {str(path)!r}: expected a path without spaces or shell characters "
            "(make passes it to ssh through sh and rsync -e)"
        )
    return str(path)


def ssh_options(ctx: Context, *, key: bool) -> str:
    """The Makefile's SSH_OPTIONS as the runbook runs it: the host key checked against the
    deployment's known_hosts (the Makefile checks none), and as the installed user the
    identity only, never a password (BatchMode: no prompt). root before the switch has no
    key yet (the live ISO, then bootstrap0's `initialPassword`): password only, as upstream."""
    known = _plain("known_hosts", ctx.dep.known_hosts_path)
    checked = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
    if key:
        identity = _plain("identity", ctx.dep.identity)
        return f"-i {identity} -o IdentitiesOnly=yes {checked} -o BatchMode=yes"
    return f"-o PubkeyAuthentication=no {checked}"


def make_command(
    ctx: Context, target: str, vm: VM, *, user: str | None = None, name: bool = True
) -> LocalCommand:
    """`make_argv` as the value the plan renders and `run_make` runs."""
    return LocalCommand.of(make_argv(ctx, target, vm, user=user, name=name))


def make_target(argv: Sequence[str]) -> str:
    return argv[argv.index("-C") + 2]


def render(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def config_present(ctx: Context) -> Check | None:
    """None when the nixos-config checkout is here, else the unchecked reason."""
    if (ctx.dep.nixos_config / "flake.nix").is_file():
        return None
    return unchecked(f"nixos-config checkout {ctx.dep.nixos_config} is not on this machine")


def remote_probe(
    ctx: Context,
    vm: VM,
    script: str,
    *,
    installed: bool = True,
    sudo: bool = False,
    password: Secret | None = None,
) -> Callable[[], Check]:
    """Done when `script` exits 0 on `vm` (as root with `password` when given, see
    Context.connection)."""

    def probe() -> Check:
        conn = ctx.connection(vm, installed=installed, password=password)
        result = conn.run(script, elevate=Elevate.SUDO if sudo else Elevate.NONE, check=False)
        return DONE if result.ok else TODO

    return probe


def fresh_login_check(ctx: Context, vm: VM) -> RemoteScript:
    """What a fresh login as the installed user with the key runs: passwordless sudo (lesson 7)."""
    return remote_script(ctx, vm, "sudo -n true")


def login_works(ctx: Context, vm: VM) -> Check:
    """`fresh_login_check` on a new connection (never the pooled one: a fresh login is the point)."""
    from runbook.transport.remote import Connection

    cmd = fresh_login_check(ctx, vm)
    with Connection(cmd.host) as conn:
        ok = conn.run(cmd.script, elevate=cmd.elevate, check=False).ok
    return Check(ok, f"{ctx.dep.user} logs in with the key and sudo works" if ok else "")


@contextmanager
def askpass_env(password: Secret | None) -> Iterator[dict[str, str]]:
    """SSH_ASKPASS for root's password-only ssh before the switch (ssh_options)."""
    if password is None:
        yield {}
        return
    askpass = Path(__file__).resolve().parent.parent / "askpass"
    with tempfile.TemporaryDirectory(prefix="runbook-askpass-") as tmp:
        secret_file = Path(tmp) / "password"
        write_private(secret_file, password.reveal().encode())
        yield {
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "RUNBOOK_ASKPASS_FILE": str(secret_file),
            "DISPLAY": ":0",
        }


def run_make(command: LocalCommand | list[str], password: Secret | None) -> str:
    argv = list(command.argv) if isinstance(command, LocalCommand) else command
    result = make_result(argv, password)
    if result.exit_code != 0:
        raise CommandError(
            host="localhost", command=result.command, exit_code=result.exit_code,
            stderr=result.stderr or result.stdout,
        )  # fmt: skip
    return f"{make_target(argv)} finished in {result.duration:.1f}s"


def make_result(
    command: LocalCommand | list[str], password: Secret | None, *, check: bool = False
) -> Result:
    """Run a make target, its lines printed as they come; the result, whatever its exit
    (a host key ssh refused is its own error, whatever `check`)."""
    argv = list(command.argv) if isinstance(command, LocalCommand) else command
    refuse_overridden_options(argv)
    # the lines arrive on local.run's reader threads: bound to this step's output here
    echo = line_printer()
    with askpass_env(password) as env:
        result = local.run(
            argv, env=env, check=check, on_line=lambda _s, line: echo(f"      {line}")
        )
    if result.exit_code != 0:
        host_key_refused(argv, result)
    return result


def _arg(argv: Sequence[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")), None)


def refuse_overridden_options(argv: Sequence[str]) -> None:
    """`override SSH_OPTIONS = ...` in the checkout would ignore the runbook's SSH_OPTIONS:
    then ssh would ask a password and check no host key. Refused before make runs."""
    from runbook.nix.makefile import Makefile

    if _arg(argv, "SSH_OPTIONS") is None:
        return
    path = Path(argv[argv.index("-C") + 1]) / "Makefile"
    if path.is_file() and (var := Makefile.read(path).overridden("SSH_OPTIONS")) is not None:
        raise RunbookError(
            f"{path}:{var.line}: `override SSH_OPTIONS` keeps the Makefile's ssh options against "
            "the runbook's (key, host key checked): drop `override` there"
        )


_HOST_KEY_CHANGED: Final = "REMOTE HOST IDENTIFICATION HAS CHANGED"
_HOST_KEY_FAILED: Final = "Host key verification failed."


def host_key_refused(argv: Sequence[str], result: Result) -> None:
    """Raise when ssh under make refused the host key (StrictHostKeyChecking=yes)."""
    out = result.stdout + "\n" + result.stderr
    if _HOST_KEY_FAILED not in out:
        return
    options = _arg(argv, "SSH_OPTIONS") or ""
    known = next(
        (o.split("=", 1)[1] for o in options.split() if o.startswith("UserKnownHostsFile=")),
        "known_hosts",
    )
    where = f"{make_target(argv)} to {_arg(argv, 'NIXADDR')}"
    if _HOST_KEY_CHANGED in out:
        raise HostKeyChangedError(
            f"{where}: ssh refused the host key: it is not the one {known} has for this "
            "address; check the VM's keys on its console before trusting new ones"
        )
    raise ConnectError(f"{where}: ssh refused the host key: {known} has none for this address")


_MAKE_ERROR: Final = re.compile(r"^make(?:\[\d+\])?: \*\*\* \[[^\]]*\] Error (\d+)$", re.MULTILINE)


def recipe_exit(result: Result) -> int | None:
    """The exit code of the recipe command that failed (GNU make's `*** [...] Error N`)."""
    found = _MAKE_ERROR.findall(result.stdout + "\n" + result.stderr)
    return int(found[-1]) if found else None


# vm/bootstrap0 installs `users.users.root.initialPassword = "root"` (utm-makefile-keys.md §1):
# from then until the switch, root logs in with that password, not the live ISO's (lesson 7).
_INITIAL_ROOT: Final = re.compile(r'users\.users\.root\.initialPassword\s*=\s*\\?"([^"\\]*)\\?"')
UPSTREAM_INITIAL_ROOT: Final = "root"


def installed_root_password(ctx: Context) -> Secret:
    """root's password on the system bootstrap0 installed: the one the checkout's Makefile
    writes into configuration.nix (read from its vm/bootstrap0 recipe), else upstream's."""
    from runbook.nix.makefile import Makefile

    value = UPSTREAM_INITIAL_ROOT
    path = ctx.dep.nixos_config / "Makefile"
    if path.is_file():
        recipe = "\n".join(line for _, line in Makefile.read(path).recipes.get("vm/bootstrap0", ()))
        if (found := _INITIAL_ROOT.search(recipe)) is not None:
            value = found[1]
    return Secret(value, "bootstrap0 root password")


def known_fingerprints(known_hosts: Path, name: str) -> list[str]:
    """`type SHA256:...` of each key known_hosts holds for `name` (plain, unhashed entries)."""
    import base64
    import hashlib

    found = []
    try:
        lines = known_hosts.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and name in fields[0].split(","):
            digest = hashlib.sha256(base64.b64decode(fields[2])).digest()
            found.append(f"{fields[1]} SHA256:{base64.b64encode(digest).decode().rstrip('=')}")
    return found


def utmctl(ctx: Context) -> str:
    return str(ctx.dep.utm.utmctl)


def utm_status_probe(ctx: Context, vm: VM, wanted: set[str]) -> Callable[[], Check]:
    """Done when `utmctl status VM` prints one of `wanted` (status is one word, §2)."""

    def probe() -> Check:
        if not ctx.dep.utm.utmctl.exists():
            return unchecked(f"UTM is not on this machine ({ctx.dep.utm.utmctl} not found)")
        # utmctl's exit code is not reliable: read what it printed (§2).
        result = local.run([utmctl(ctx), "status", vm.name], check=False, timeout=30)
        status = result.stdout.strip()
        if "not found" in result.stderr:
            return TODO
        return Check(status in wanted, f"utmctl status: {status}")

    return probe


def osascript(lines: Sequence[str]) -> str:
    argv = ["osascript"]
    for line in lines:
        argv += ["-e", line]
    return render(argv)


def keystroke(vm: VM, text: str | Secret) -> str:
    """UTM's `input keystroke` (UTM >= 4.7.2, §3): SPICE input, no window focus (lesson 4)."""
    shown = str(text) if isinstance(text, Secret) else text.replace('"', '\\"')
    return osascript(
        [
            (
                f'tell application "UTM" to input keystroke of virtual machine named "{vm.name}" '
                f'text "{shown}\\n"'
            )
        ]
    )


# -- parallel hosts, config digests --

MAKEFILE_EXCLUDES: Final = ("vendor", ".git", ".git-crypt", ".jj", "iso")  # vm/copy's rsync
CONFIG_MARKER: Final = "/var/lib/runbook/switched-config"  # digest of the last switched copy


def config_files(root: Path) -> dict[str, str]:
    """sha256 of every file vm/copy sends (relative path -> hex), the Makefile's excludes out."""
    import hashlib

    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in MAKEFILE_EXCLUDES or not path.is_file() or path.is_symlink():
            continue
        found[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def config_digest(files: dict[str, str]) -> str:
    import hashlib

    text = "".join(f"{h}  {p}\n" for p, h in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def switched_probe(ctx: Context, vm: VM) -> Check:
    """Done when the VM's /nix-config holds this checkout and its last switch was from it
    (the digest the runbook leaves in CONFIG_MARKER after a successful switch)."""
    if (missing := config_present(ctx)) is not None:
        return missing
    files = config_files(ctx.dep.nixos_config)
    want = config_digest(files)
    script = (
        f"cat {CONFIG_MARKER} 2>/dev/null; echo; cd /nix-config 2>/dev/null && "
        f"sha256sum -- {' '.join(shlex.quote(p) for p in sorted(files))} 2>/dev/null"
    )
    out = ctx.connection(vm).run(script, elevate=Elevate.SUDO, check=False).stdout
    marker, _, sums = out.partition("\n")
    remote = {}
    for line in sums.splitlines():
        digest, _, rel = line.partition("  ")
        if rel:
            remote[rel] = digest
    if marker.strip() == want and remote == files:
        return Check(True, f"{vm.name} runs this nixos-config ({want[:12]})")
    return TODO


def switched_marker(ctx: Context, vm: VM) -> FilePut:
    """The marker that says `vm` runs this checkout (`running_this_config` reads it)."""
    digest = config_digest(config_files(ctx.dep.nixos_config))
    return FilePut(ctx.dep.host(vm), CONFIG_MARKER, digest + "\n", mode=0o644, owner="root")


def mark_switched(ctx: Context, vm: VM) -> None:
    ctx.execute(switched_marker(ctx, vm))


@dataclass(frozen=True)
class UserSwitch:
    """The handbook's routine update as the user (lesson 7): `make vm/copy` + `vm/switch`.
    The runbook's own login first: the key works and the host key is known (learned on first
    use) before make's ssh checks it strictly; the marker last."""

    login: RemoteScript
    copy: LocalCommand
    switch: LocalCommand
    marker: FilePut

    @property
    def commands(self) -> list[Command]:
        return [self.login, self.copy, self.switch, self.marker]


def user_switch(ctx: Context, vm: VM) -> UserSwitch:
    return UserSwitch(
        remote_script(ctx, vm, "true"),
        make_command(ctx, "vm/copy", vm, user=ctx.dep.user, name=False),
        make_command(ctx, "vm/switch", vm, user=ctx.dep.user),
        switched_marker(ctx, vm),
    )


def copy_and_switch(ctx: Context, how: UserSwitch) -> str:
    """Run `how`: both targets as the user with the key (no password: SSH_OPTIONS)."""
    ctx.execute(how.login)
    run_make(how.copy, None)
    detail = run_make(how.switch, None)
    ctx.execute(how.marker)
    return detail
