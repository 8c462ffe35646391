"""08 Attic 缓存管理 / 当前缓存信息: verify the cache as Nix would (nix-cache-info, signatures),
check that each worker's running Nix trusts the key the cache signs with now, and make a
worker really substitute a path from it.

The key is the live cache's (`GET /_api/v1/cache-config/{cache}`), never the checkout's: a
regenerated keypair makes the key 07 gave the workers stale, and only the workers' own
settings (`nix show-config --json` over SSH) tell whether they follow. The path is the cache
VM's own system (`/nix/var/nix/profiles/system`): it was pushed in 06 and no worker builds it,
so a worker can only get it from the cache. Nix checks the narinfo's signature against
`trusted-public-keys` itself; its log names the substituter.
"""

from __future__ import annotations

import shlex
from typing import Final

from runbook.cache import attic
from runbook.core.errors import RunbookError
from runbook.core.params import VM
from runbook.engine.steps import TODO, Check, Context, Step
from runbook.sections.common import host_label, remote_script, render
from runbook.sections.s06_cache import api_base, system_path, system_query
from runbook.transport.commands import RemoteScript

NOTEBOOK: Final = "08-verify"
SAMPLE_PATH_SCRIPT: Final = "readlink -f /nix/var/nix/profiles/system"


def live_key(ctx: Context) -> str:
    """The key the cache signs with now, from its cache-config (a public cache answers
    anonymously; the admin token is sent when the store has one, for a private cache)."""
    c = ctx.dep.cache
    config = attic.get_cache_config(api_base(ctx), c.name, ctx.store.get(c.admin_token))
    if not config.public_key:
        raise RunbookError(f"{api_base(ctx)}_api/v1/cache-config/{c.name} gives no public_key")
    return config.public_key


def _config_url(ctx: Context) -> str:
    return f"{api_base(ctx)}_api/v1/cache-config/{ctx.dep.cache.name}"


def sample_query(ctx: Context) -> RemoteScript:
    """The path 08 substitutes: the cache VM's system (pushed by 06)."""
    return remote_script(ctx, ctx.dep.cache_vm, SAMPLE_PATH_SCRIPT)


def is_valid(ctx: Context, vm: VM, path: str) -> RemoteScript:
    return remote_script(ctx, vm, shlex.join(["nix-store", "--check-validity", path]))


def realise(ctx: Context, vm: VM, path: str) -> RemoteScript:
    """`nix-store -r PATH` on `vm`: substituted from the cache (a transfer, judged by progress)."""
    return remote_script(ctx, vm, shlex.join(["nix-store", "-r", path]), transfer=True)


def _sample_path(ctx: Context) -> str:
    """The cache VM's system, read once per notebook: the workers' steps run in parallel and
    all substitute this one path."""
    with ctx.memo_lock:
        if "08-sample-path" not in ctx.memo:
            path = ctx.execute(sample_query(ctx)).stdout.strip()
            if not path.startswith("/nix/store/"):
                raise RunbookError(f"{ctx.dep.cache.vm}: {SAMPLE_PATH_SCRIPT} gave {path!r}")
            ctx.memo["08-sample-path"] = path
        return ctx.memo["08-sample-path"]


def verify(ctx: Context) -> Step:
    url = ctx.dep.cache.url

    def check() -> str:
        key, path = live_key(ctx), _sample_path(ctx)
        attic.verify_cache(url, key, [path]).raise_for_failures()
        return f"nix-cache-info fields and the signature of {path} check out with {key}"

    return Step(
        f"verify {url}",
        f"localhost -> {ctx.dep.cache.host}",
        [
            f"GET {_config_url(ctx)} (its public_key: the key it signs with now), from here",
            sample_query(ctx),
            "# then, from here, what `"
            + render(["runbook", "verify-cache", url, "--public-key", "K", "--store-path", "P"])
            + "` checks: nix-cache-info, and that path's narinfo signed with K",
        ],
        probe=lambda: Check(True, check()),  # a check only: when it passes, nothing to do
        action=check,
        remote=True,
    )


SHOW_CONFIG: Final = shlex.join(attic.NIX_SHOW_CONFIG_ARGV)


def show_config(ctx: Context, worker: VM) -> RemoteScript:
    """What the worker's Nix runs with (root's view, the nix-daemon's)."""
    return remote_script(ctx, worker, SHOW_CONFIG, sudo=True)


def trust(ctx: Context, worker: VM) -> Step:
    """What the worker's Nix runs with (root's view, the nix-daemon's: `nix show-config`
    through sudo), compared with the live cache: its URL among the substituters and the live
    key the one trusted for the cache's name; then the sample path's signature checked with
    that key. A key drift (the cache's keypair regenerated, 07 not rerun) fails here, naming
    the worker, the key it trusts and the key the cache signs with."""
    url = ctx.dep.cache.url

    def check() -> str:
        shown = ctx.execute(show_config(ctx, worker))
        settings = attic.parse_nix_show_config(shown.stdout)
        key = live_key(ctx)
        said = attic.judge_trust(worker.name, settings, url, key)
        path = _sample_path(ctx)
        held = str(attic.effective_keys(settings.trusted_public_keys)[key.split(":", 1)[0]])
        attic.verify_cache(url, held, [path]).raise_for_failures()
        return f"{said}; the signature of {path} checks out with the key {worker.name} holds"

    return Step(
        f"{worker.name} trusts the key {ctx.dep.cache.name} signs with now",
        host_label(ctx, worker),
        [
            show_config(ctx, worker),
            f"GET {_config_url(ctx)} (its public_key), from here",
            "# the worker's substituters must list the cache and its trusted key be that one",
            sample_query(ctx),
            f"GET {url}/<that path's hash>.narinfo: its signature checked with the worker's key",
        ],
        probe=lambda: Check(True, check()),  # a check only, as verify
        action=check,
        remote=True,
    )


def substitute(ctx: Context, worker: VM) -> Step:
    url = ctx.dep.cache.url

    def probe() -> Check:
        path = _sample_path(ctx)
        has = ctx.execute(is_valid(ctx, worker, path), check=False)
        return Check(True, f"{worker.name} has {path} (from the cache)") if has.ok else TODO

    def apply() -> str:
        path = _sample_path(ctx)
        result = ctx.execute(realise(ctx, worker, path))
        log = result.stdout + result.stderr
        want = f"copying path '{path}' from '{url}'"
        if want not in log:
            raise RunbookError(f"{worker.name} realised {path} but not from {url}: {log[-300:]}")
        return f"{worker.name}: {want} (signature checked by nix)"

    return Step(
        f"substitute the cache VM's system on {worker.name}",
        host_label(ctx, worker),
        [
            sample_query(ctx),
            is_valid(ctx, worker, "<that path>"),
            realise(ctx, worker, "<that path>"),
        ],
        probe=probe,
        action=apply,
        remote=True,
    )


def substitute_peer(ctx: Context, first: VM, second: VM) -> Step:
    """A warm cache (issue 15): `second` realises `first`'s system, which 07 pushed from
    `first` and `second` never built, so only the cache can give it; Nix's log names the
    substituter and Nix checks the signature with the key `second` trusts."""
    url = ctx.dep.cache.url

    def probe() -> Check:
        path = system_path(ctx, first)
        if system_path(ctx, second) == path:  # one configuration for both: one store path
            return Check(True, f"{second.name} runs {first.name}'s system {path} itself")
        has = ctx.execute(is_valid(ctx, second, path), check=False)
        if has.ok:
            return Check(True, f"{second.name} has {first.name}'s system {path}")
        return TODO

    def apply() -> str:
        path = system_path(ctx, first)
        result = ctx.execute(realise(ctx, second, path))
        log = result.stdout + result.stderr
        want = f"copying path '{path}' from '{url}'"
        if want not in log:
            raise RunbookError(
                f"{second.name} realised {first.name}'s system {path} but not from {url}: "
                f"{log[-300:]}"
            )
        copied = log.count(f"from '{url}'")
        return (
            f"{second.name} substituted {first.name}'s system from {url}: {want} "
            f"({copied} paths copied from the cache, signatures checked by nix)"
        )

    return Step(
        f"{second.name} substitutes {first.name}'s system (a warm cache)",
        host_label(ctx, second),
        [
            system_query(ctx, first),
            system_query(ctx, second),
            "# unless both run that one system:",
            is_valid(ctx, second, "<that path>"),
            realise(ctx, second, "<that path>"),
        ],
        probe=probe,
        action=apply,
        remote=True,
    )


def peers(ctx: Context) -> list[tuple[VM, VM]]:
    """(first, second) worker: the second substitutes the first's system; none with one."""
    workers = ctx.dep.workers
    return [(workers[0], workers[1])] if len(workers) > 1 else []
