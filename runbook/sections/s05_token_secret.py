"""05 Attic 缓存管理 / 初始化 1 + 关键经验 2, 6: the atticd token secret.

The RSA-4096 key is made here with `cryptography` (no openssl on the VM: lesson 6), checked
the way atticd decodes it (lesson 2), kept in the secret store, and installed over SSH as
/var/lib/atticd/env, 0600 from the first byte. A valid secret is kept: rotating it
invalidates every token, so only `cache.rotate_token_secret: true` makes a new one.
The cache VM then runs its configuration (`services.atticd` with that environmentFile, and
the attic client notebook 06 runs: `services.atticd` installs only `atticd-atticadm`, so
pkgs.attic-client is added to the cache's configuration where it lacks it), and atticd is
restarted only after the secret passed atticd's decode chain here.
"""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Final

from runbook.cache import keys
from runbook.core.errors import InputError, RunbookError
from runbook.core.params import VM
from runbook.core.secrets import Secret
from runbook.engine.steps import TODO, Check, Context, Step
from runbook.sections.common import (
    ATTICD_ENV,
    config_present,
    copy_and_switch,
    host_label,
    remote_script,
    user_switch,
)
from runbook.transport.commands import FilePut

if TYPE_CHECKING:
    from runbook.nix.nixcfg import Change

NOTEBOOK: Final = "05-token-secret"
GENERATE: Final = "generate the token secret locally (lessons 2, 6)"
INSTALL: Final = "install /var/lib/atticd/env (0600)"
SYSTEM: Final = "the cache VM runs services.atticd and has the attic client"
CLIENT: Final = "install the attic client in the cache's configuration (pkgs.attic-client)"
# `attic` on root's PATH (notebook 06 runs it through sudo)
CLIENT_PROBE: Final = "command -v attic"
HEALTH_TIMEOUT: Final = 15.0


def _stored(ctx: Context) -> Secret | None:
    return ctx.store.get(ctx.dep.cache.token_secret)


def generate(ctx: Context) -> Step:
    name = ctx.dep.cache.token_secret

    def probe() -> Check:
        current = _stored(ctx)
        if current is None or (ctx.dep.cache.rotate_token_secret and GENERATE not in ctx.changed):
            return TODO
        keys.validate_token_secret(current.reveal())  # a bad stored value fails here, named
        return Check(True, f"{name} in the store loads as atticd would load it; kept")

    def make() -> str:
        ctx.store.put(name, keys.generate_token_secret(4096))
        return f"RSA-4096, PKCS#8 PEM, base64 without newlines -> {ctx.store.path(name)} (0600)"

    cmd = f"runbook.cache.keys.generate_token_secret(4096) -> secret store {name!r} ({ctx.store.path(name)}, 0600)"
    return Step(GENERATE, "localhost", [cmd], probe, make)


def _validate_stored(ctx: Context) -> None:
    """atticd's decode chain over the stored secret (TokenSecretError names the stage)."""
    stored = _stored(ctx)
    keys.validate_token_secret(stored.reveal() if stored is not None else "")


def _env_content(ctx: Context) -> Secret:
    secret = _stored(ctx)
    if secret is None:
        raise RunbookError(
            f"no {ctx.dep.cache.token_secret} in the secret store: run the step above"
        )
    return Secret(keys.env_line(secret).reveal() + "\n", "atticd env")


def install_env(ctx: Context, vm: VM) -> Step:
    check = remote_script(ctx, vm, f"stat -c %a {ATTICD_ENV} && sha256sum {ATTICD_ENV}", sudo=True)
    mkdir = remote_script(ctx, vm, "install -d -m 0700 /var/lib/atticd", sudo=True)

    env_file = FilePut(
        ctx.dep.host(vm),
        ATTICD_ENV,
        None,  # the secret, read from the store only when it is put
        mode=0o600,
        owner="root",
        shows=f"{keys.TOKEN_SECRET_VAR}=<the store's {ctx.dep.cache.token_secret}>",
    )

    def probe() -> Check:
        want = hashlib.sha256(_env_content(ctx).reveal().encode()).hexdigest()
        got = ctx.execute(check, check=False)
        lines = got.stdout.split("\n")
        ok = got.ok and lines[0].strip() == "600" and lines[1].split()[:1] == [want]
        return Check(True, f"{ATTICD_ENV} holds this secret, mode 0600") if ok else TODO

    def put() -> str:
        _validate_stored(ctx)
        ctx.execute(mkdir)
        ctx.execute(env_file.with_content(_env_content(ctx)))
        return f"{ATTICD_ENV} written, mode 0600 from the first byte"

    return Step(INSTALL, host_label(ctx, vm), [check, mkdir, env_file], probe, put, remote=True)


def _client_changes(ctx: Context, vm: VM) -> tuple[list[Change], str]:
    """The edit that installs pkgs.attic-client in the cache's configuration (in the file that
    enables services.atticd), none when a module installs it; and where it is or goes."""
    from runbook.nix.nixcfg import (
        Change,
        ConfigTree,
        cache_module,
        edit_sequentially,
        find_attic_client,
        plan_package,
        system_view,
    )

    tree = ConfigTree(ctx.dep.nixos_config)
    view = system_view(tree, vm.name, ctx.dep.user)
    found = find_attic_client(view).where
    if found is not None:
        return [], found
    rel = cache_module(view)
    if not (tree.root / rel).is_file():
        raise InputError(f"{tree.root / rel}: the cache VM {vm.name}'s configuration is not there")
    nix = tree.get(rel)
    after = edit_sequentially(nix, [plan_package])
    return ([Change(tree.root / rel, nix.source, after)] if after != nix.source else []), str(rel)


def attic_client(ctx: Context, vm: VM) -> Step:
    """`services.atticd` puts only `atticd-atticadm` on the system (nixpkgs
    nixos/modules/services/networking/atticd.nix): notebook 06's `attic login` needs the
    client, so the cache's configuration gets `environment.systemPackages = [
    pkgs.attic-client ];` (the step below switches the VM to it)."""

    def probe() -> Check:
        if (missing := config_present(ctx)) is not None:
            return missing
        pending, where = _client_changes(ctx, vm)
        for change in pending:
            print(change.diff(where), end="")
        return TODO if pending else Check(True, f"the cache's configuration installs it ({where})")

    def apply() -> str:
        from runbook.nix.nixcfg import write_changes

        pending, where = _client_changes(ctx, vm)
        write_changes(pending)
        return f"{where}: environment.systemPackages += [ pkgs.attic-client ]"

    cmd = "edit the cache's atticd module: environment.systemPackages += [ pkgs.attic-client ]"
    return Step(CLIENT, "localhost", [cmd], probe, apply)


def atticd_system(ctx: Context, vm: VM) -> Step:
    """After vm/bootstrap the cache VM runs its configuration already (atticd failed there
    for want of the env file); a VM that runs another one, or lacks the attic client the
    step above added, is switched to it, as the user."""
    how = user_switch(ctx, vm)
    status = remote_script(ctx, vm, "systemctl status atticd")
    client = remote_script(ctx, vm, CLIENT_PROBE, sudo=True)

    def probe() -> Check:
        if CLIENT in ctx.changed:
            return TODO
        if "; enabled;" not in ctx.execute(status, check=False).stdout:
            return TODO
        if not ctx.execute(client, check=False).ok:
            print("      `attic` is not on the cache VM's PATH yet: switching")
            return TODO
        return Check(True, "atticd.service is part of the system; `attic` is installed")

    return Step(
        SYSTEM,
        host_label(ctx, vm),
        [status, client, *how.commands],
        probe,
        lambda: copy_and_switch(ctx, how),
        remote=True,
    )


def _health(ctx: Context, deadline: float) -> str | None:
    """None when atticd answers `GET /` with 200 (attic.md §5: the health probe), else why."""
    url = f"http://{ctx.dep.cache.host}:{ctx.dep.cache.port}/"
    why = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                if resp.status == 200:
                    return None
                why = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            why = str(getattr(exc, "reason", exc))
        if time.monotonic() > deadline:
            return f"GET {url}: {why}"
        time.sleep(0.1)


def restart(ctx: Context, vm: VM) -> Step:
    url = f"http://{ctx.dep.cache.host}:{ctx.dep.cache.port}/"

    active = remote_script(ctx, vm, "systemctl is-active atticd")
    restart_atticd = remote_script(ctx, vm, "systemctl restart atticd", sudo=True)

    def probe() -> Check:
        if {INSTALL, GENERATE} & ctx.changed:
            return TODO
        if not ctx.execute(active, check=False).ok or _health(ctx, time.monotonic()) is not None:
            return TODO
        return Check(True, f"atticd is active with this env file; GET {url} 200")

    def apply() -> str:
        # atticd's decode chain, here, before the restart: a bad secret never reaches it
        _validate_stored(ctx)
        ctx.execute(restart_atticd)
        ctx.execute(active)
        if (problem := _health(ctx, time.monotonic() + HEALTH_TIMEOUT)) is not None:
            raise RunbookError(f"atticd restarted but does not answer: {problem}")
        return f"atticd restarted and active; GET {url} 200"

    return Step(
        "validate the secret, restart atticd, GET / 200",
        host_label(ctx, vm),
        [
            "runbook.cache.keys.validate_token_secret(<secret>)   # atticd's decode chain, here",
            restart_atticd,
            active,
            f"GET {url} from here until 200, at most {HEALTH_TIMEOUT:.0f} s (atticd's health probe)",
        ],
        probe,
        apply,
        remote=True,
    )
