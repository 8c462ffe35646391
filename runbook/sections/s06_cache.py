"""06 Attic 缓存管理 / 初始化 2-3: admin token, `attic login`, create the cache, make it
public, push the store; the cache's public key is kept for the workers (07) and checks (08).

Commands come from `runbook.attic` (attic.md §3-4); they run as root through sudo with the
script on bash's stdin (lesson 5), and the token is a registered secret, masked everywhere.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runbook import attic, keys
from runbook.errors import CommandError, RunbookError
from runbook.models import Elevate
from runbook.params import VM
from runbook.secrets import Secret
from runbook.sections.common import host_label, ssh_render
from runbook.steps import TODO, Check, Context, Step

NOTEBOOK: Final = "06-cache"
SERVER: Final = "local"
ENDPOINT: Final = "http://localhost:8080"
PLACEHOLDER: Final = Secret("<admin token from the store>", "placeholder")


def public_key_file(ctx: Context) -> Path:
    return ctx.state_dir / "cache-public-key"


def _token(ctx: Context) -> Secret | None:
    return ctx.store.get(ctx.dep.cache.admin_token)


def _token_valid(ctx: Context) -> Check:
    """Done when the stored token verifies with the stored secret's key and has not expired."""
    token, secret = _token(ctx), ctx.store.get(ctx.dep.cache.token_secret)
    if token is None or secret is None:
        return TODO
    if not keys.token_signed_by(token.reveal(), secret.reveal()):
        print("      the stored token was minted with another secret or expired: a new one")
        return TODO
    return Check(True, f"{ctx.dep.cache.admin_token} in the store is signed by this secret")


def make_token(ctx: Context, vm: VM) -> Step:
    argv = attic.make_token_argv()

    def make() -> str:
        out = ctx.connection(vm).run(argv, elevate=Elevate.SUDO)
        ctx.store.put(ctx.dep.cache.admin_token, attic.parse_make_token_output(out.stdout))
        return f"admin token kept in the secret store as {ctx.dep.cache.admin_token!r}"

    return Step(
        "admin token (atticd-atticadm make-token)",
        host_label(ctx, vm),
        [ssh_render(ctx, vm, shlex.join(argv) + " </dev/null", sudo=True)],
        probe=lambda: _token_valid(ctx),
        action=make,
    )


def login(ctx: Context, vm: VM) -> Step:
    def argv() -> list[str]:
        return attic.login_argv(SERVER, ENDPOINT, _token(ctx) or PLACEHOLDER, set_default=True)

    def apply() -> str:
        ctx.connection(vm).run(argv(), elevate=Elevate.SUDO)
        return f"root's attic client logged in to {ENDPOINT} as {SERVER!r}"

    return Step(
        "attic login",
        host_label(ctx, vm),
        [ssh_render(ctx, vm, shlex.join(argv()), sudo=True)],
        probe=_cache_info_ok(ctx, vm),
        action=apply,
        remote=True,
    )


def _cache_info_ok(ctx: Context, vm: VM) -> Callable[[], Check]:
    def probe() -> Check:
        argv = attic.cache_info_argv(ctx.dep.cache.name)
        result = ctx.connection(vm).run(argv, elevate=Elevate.SUDO, check=False)
        return Check(result.ok, f"cache {ctx.dep.cache.name} answers")

    return probe


def create(ctx: Context, vm: VM) -> Step:
    argv = attic.cache_create_argv(ctx.dep.cache.name)

    def apply() -> str:
        result = ctx.connection(vm).run(argv, elevate=Elevate.SUDO, check=False)
        if not result.ok and not attic.is_cache_exists_error(result.stderr):
            raise CommandError(
                host=vm.name,
                command=result.command,
                exit_code=result.exit_code,
                stderr=result.stderr,
            )
        return f"cache {ctx.dep.cache.name} created"

    return Step(
        f"create cache {ctx.dep.cache.name}",
        host_label(ctx, vm),
        [ssh_render(ctx, vm, shlex.join(argv), sudo=True)],
        _cache_info_ok(ctx, vm),
        apply,
        remote=True,
    )


def make_public(ctx: Context, vm: VM) -> Step:
    name = ctx.dep.cache.name
    argv = attic.cache_configure_argv(name, public=True)

    def probe() -> Check:
        out = ctx.connection(vm).run(attic.cache_info_argv(name), elevate=Elevate.SUDO)
        info = attic.parse_cache_info(out.stderr)
        public_key_file(ctx).parent.mkdir(parents=True, exist_ok=True)
        public_key_file(ctx).write_text(info.public_key + "\n")
        return Check(info.public, f"public; key {info.public_key}")

    def apply() -> str:
        ctx.connection(vm).run(argv, elevate=Elevate.SUDO)
        return probe().reason

    return Step(
        f"make {name} public",
        host_label(ctx, vm),
        [ssh_render(ctx, vm, shlex.join(argv), sudo=True)],
        probe,
        apply,
        remote=True,
    )


PATHS_SCRIPT: Final = "nix path-info --all --sigs"


def _api_base(ctx: Context) -> str:
    c = ctx.dep.cache
    return f"http://{c.host}:{c.port}/"


def _admin_token(ctx: Context) -> Secret:
    token = _token(ctx)
    if token is None:
        raise RunbookError("no admin token in the secret store: run the step above")
    return token


@dataclass(frozen=True)
class _PushPlan:
    config: attic.CacheConfig
    eligible: list[str]
    upstream: list[str]


def _push_plan(ctx: Context, vm: VM) -> _PushPlan:
    """The cache VM's store paths that `attic push` would send: those not signed by one of
    the cache's own `upstream_cache_key_names` (read from the server, as the client does)."""
    config = attic.get_cache_config(_api_base(ctx), ctx.dep.cache.name, _admin_token(ctx))
    out = ctx.connection(vm).run(PATHS_SCRIPT, elevate=Elevate.SUDO).stdout
    eligible, upstream = attic.split_upstream(
        attic.parse_path_info_sigs(out),
        config.upstream_cache_key_names,
        ignore_filter=not ctx.dep.cache.upstream_filter,
    )
    return _PushPlan(config, eligible, upstream)


def _missing(ctx: Context, plan: _PushPlan) -> list[str]:
    return attic.get_missing_paths(
        plan.config.api_endpoint, ctx.dep.cache.name, plan.eligible, _admin_token(ctx)
    )


def push(ctx: Context, vm: VM) -> Step:
    c = ctx.dep.cache
    argv = attic.push_argv(c.name, jobs=c.push_jobs, ignore_upstream_filter=not c.upstream_filter)
    # .drv files are left out: workers substitute outputs, never derivations
    script = f"nix path-info --all | grep -v '\\.drv$' | {shlex.join(argv)}"
    filt = "on (paths signed by the cache's upstream keys skipped)" if c.upstream_filter else "off"

    def probe() -> Check:
        plan = _push_plan(ctx, vm)
        if not plan.eligible or _missing(ctx, plan):
            return TODO  # with nothing eligible, the push step says why
        return Check(
            True,
            f"all {len(plan.eligible)} paths are in {c.name}; "
            f"{len(plan.upstream)} skipped as in upstream",
        )

    def apply() -> str:
        plan = _push_plan(ctx, vm)
        result = ctx.connection(vm).run(script, elevate=Elevate.SUDO, check=False)
        try:
            verdict = attic.judge_push(
                cache=c.name,
                exit_code=result.exit_code,
                output=result.stderr + result.stdout,
                eligible=plan.eligible,
                upstream=len(plan.upstream),
                upstream_keys=plan.config.upstream_cache_key_names,
                missing_after=_missing(ctx, plan) if result.ok else [],
            )
        except attic.PushFailedError as exc:
            if result.ok:
                raise
            raise CommandError(
                host=vm.name,
                command=result.command,
                exit_code=result.exit_code,
                stderr=result.stderr,
                reason=str(exc),
            ) from None
        return verdict.summary()

    return Step(
        f"push the store to {c.name} (-j {c.push_jobs}, upstream filter {filt})",
        host_label(ctx, vm),
        [ssh_render(ctx, vm, script, sudo=True)],
        probe,
        apply,
        remote=True,
    )


def read_cache(ctx: Context, vm: VM) -> Step:
    """For a deployment that only references the cache VM (workers): read the live cache's
    configuration over HTTP and keep its public key for 07, changing nothing on the VM. The
    cache's own deployment makes it; until then this step fails and says so."""
    c = ctx.dep.cache
    url = f"{_api_base(ctx)}_api/v1/cache-config/{c.name}"

    def probe() -> Check:
        try:
            config = attic.get_cache_config(_api_base(ctx), c.name, _token(ctx))
        except attic.AtticApiError as exc:
            return Check(False, f"the cache cannot be read yet: {exc}")
        if not config.public_key:
            return Check(False, f"{c.name} gives no public key")
        public_key_file(ctx).parent.mkdir(parents=True, exist_ok=True)
        public_key_file(ctx).write_text(config.public_key + "\n")
        return Check(True, f"read only; key {config.public_key}")

    def action() -> str:
        raise RunbookError(
            f"{vm.name} is only referenced here ({probe().reason}): deploy the cache with its "
            "own params first (params/cache.yaml), then run this deployment again"
        )

    return Step(
        f"read cache {c.name} on {vm.name} (referenced: nothing changes there)",
        host_label(ctx, vm),
        [f"curl -sf {shlex.quote(url)}   # public_key, kept for 07"],
        probe,
        action,
        remote=True,
    )


def steps(ctx: Context) -> list[Step]:
    vm = ctx.dep.cache_vm
    if not ctx.dep.owns(vm):  # a worker deployment: the cache is read, never changed
        return [read_cache(ctx, vm)]
    return [
        make_token(ctx, vm),
        login(ctx, vm),
        create(ctx, vm),
        make_public(ctx, vm),
        push(ctx, vm),
    ]
