"""05 Attic 缓存管理 / 初始化 1 + 关键经验 2, 6: the atticd token secret.

The RSA-4096 key is made here with `cryptography` (no openssl on the VM: lesson 6), checked
the way atticd decodes it (lesson 2), kept in the secret store, and installed over SSH as
/var/lib/atticd/env, 0600 from the first byte.
"""

from __future__ import annotations

import hashlib
from typing import Final

from runbook import keys
from runbook.models import Elevate
from runbook.params import VM
from runbook.secrets import Secret
from runbook.sections.common import ATTICD_ENV, host_label, ssh_render
from runbook.steps import DONE, TODO, Check, Context, Step

NOTEBOOK: Final = "05-token-secret"
GENERATE: Final = "generate the token secret locally (lessons 2, 6)"
INSTALL: Final = "install /var/lib/atticd/env (0600)"


def _stored(ctx: Context) -> Secret | None:
    return ctx.store.get(ctx.dep.cache.token_secret)


def generate(ctx: Context) -> Step:
    name = ctx.dep.cache.token_secret

    def probe() -> Check:
        current = _stored(ctx)
        if current is None or (ctx.dep.cache.rotate_token_secret and GENERATE not in ctx.changed):
            return TODO
        keys.validate_token_secret(current.reveal())
        return Check(True, f"{name} in the store loads as atticd would load it")

    def make() -> str:
        ctx.store.put(name, keys.generate_token_secret(4096))
        return f"RSA-4096, PKCS#8 PEM, base64 without newlines -> {ctx.store.path(name)} (0600)"

    cmd = f"runbook.keys.generate_token_secret(4096) -> secret store {name!r} ({ctx.store.path(name)}, 0600)"
    return Step(GENERATE, "localhost", [cmd], probe, make)


def _env_content(ctx: Context) -> Secret:
    secret = _stored(ctx)
    if secret is None:
        from runbook.errors import RunbookError

        raise RunbookError(
            f"no {ctx.dep.cache.token_secret} in the secret store: run the step above"
        )
    return Secret(keys.env_line(secret).reveal() + "\n", "atticd env")


def install_env(ctx: Context, vm: VM) -> Step:
    def probe() -> Check:
        want = hashlib.sha256(_env_content(ctx).reveal().encode()).hexdigest()
        got = ctx.connection(vm).run(["sha256sum", ATTICD_ENV], elevate=Elevate.SUDO, check=False)
        return DONE if got.ok and got.stdout.split()[:1] == [want] else TODO

    def put() -> str:
        conn = ctx.connection(vm)
        conn.run(["install", "-d", "-m", "0700", "/var/lib/atticd"], elevate=Elevate.SUDO)
        conn.put(ATTICD_ENV, _env_content(ctx), mode=0o600, owner="root")
        return f"{ATTICD_ENV} written, mode 0600"

    secret = _stored(ctx)
    shown = f"{keys.TOKEN_SECRET_VAR}={secret if secret else '<from the store>'}"
    cmds = [
        ssh_render(ctx, vm, "install -d -m 0700 /var/lib/atticd", sudo=True),
        f"put {ATTICD_ENV} (mode 0600, owner root): {shown}",
    ]
    return Step(INSTALL, host_label(ctx, vm), cmds, probe, put, remote=True)


def restart(ctx: Context, vm: VM) -> Step:
    def probe() -> Check:
        if INSTALL in ctx.changed:
            return TODO
        active = ctx.connection(vm).run(["systemctl", "is-active", "atticd"], check=False)
        return Check(active.ok, "atticd is active with this env file")

    def apply() -> str:
        conn = ctx.connection(vm)
        conn.run(["systemctl", "restart", "atticd"], elevate=Elevate.SUDO)
        conn.run(["systemctl", "is-active", "atticd"])
        return "atticd restarted and active"

    return Step(
        "restart atticd",
        host_label(ctx, vm),
        [ssh_render(ctx, vm, "systemctl restart atticd && systemctl is-active atticd", sudo=True)],
        probe,
        apply,
        remote=True,
    )


def steps(ctx: Context) -> list[Step]:
    vm = ctx.dep.cache_vm
    return [generate(ctx), install_env(ctx, vm), restart(ctx, vm)]
