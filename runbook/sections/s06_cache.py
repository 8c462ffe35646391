"""06 Attic 缓存管理 / 初始化 2-3: admin token, `attic login`, create the cache, make it
public, push the store; the cache's public key is kept for the workers (07) and checks (08).

Commands come from `runbook.cache.attic` (attic.md §3-4); they run as root through sudo with the
script on bash's stdin (lesson 5), and the token is a registered secret, masked everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runbook.cache import attic, keys
from runbook.core.errors import CommandError, RunbookError
from runbook.core.models import Result
from runbook.core.params import VM
from runbook.core.secrets import Secret
from runbook.engine.steps import TODO, Check, Context, Step
from runbook.sections.common import host_label, remote_script
from runbook.transport.commands import FilePut, RemoteScript

NOTEBOOK: Final = "06-cache"
SERVER: Final = "local"
ENDPOINT: Final = "http://localhost:8080"


def public_key_file(ctx: Context) -> Path:
    return ctx.state_dir / "cache-public-key"


def _token(ctx: Context) -> Secret | None:
    return ctx.store.get(ctx.dep.cache.admin_token)


def _token_valid(ctx: Context, name: str | None = None) -> Check:
    """Done when the stored token (the admin token, or `name`) verifies with the stored
    secret's key and has not expired."""
    name = name or ctx.dep.cache.admin_token
    token, secret = ctx.store.get(name), ctx.store.get(ctx.dep.cache.token_secret)
    if token is None or secret is None:
        return TODO
    if not keys.token_signed_by(token.reveal(), secret.reveal()):
        print("      the stored token was minted with another secret or expired: a new one")
        return TODO
    return Check(True, f"{name} in the store is signed by this secret")


MAKE_TOKEN: Final = "admin token (atticd-atticadm make-token)"


def mint(ctx: Context, vm: VM, argv: list[str]) -> RemoteScript:
    """`atticd-atticadm make-token ...` on the cache VM; stdin closed, so it reads nothing."""
    return remote_script(ctx, vm, shlex.join(argv) + " </dev/null", sudo=True)


def make_token(ctx: Context, vm: VM) -> Step:
    cmd = mint(ctx, vm, attic.make_token_argv())

    def make() -> str:
        out = ctx.execute(cmd)
        ctx.store.put(ctx.dep.cache.admin_token, attic.parse_make_token_output(out.stdout))
        return f"admin token kept in the secret store as {ctx.dep.cache.admin_token!r}"

    return Step(
        MAKE_TOKEN,
        host_label(ctx, vm),
        [cmd],
        probe=lambda: _token_valid(ctx),
        action=make,
    )


# The workers' token (issue 15: a warm cache): push and pull on this cache only, so a
# worker's root can add its system to the cache and nothing else (no create, configure,
# delete or destroy). Kept in the secret store; the workers' client config holds it (0600).
WORKER_TOKEN: Final = "attic-worker-push-token"
MAKE_WORKER_TOKEN: Final = "push token for the workers (atticd-atticadm make-token)"


def worker_token_permissions(cache: str) -> attic.TokenPermissions:
    return attic.TokenPermissions(
        pull=(cache,),
        push=(cache,),
        create_cache=(),
        configure_cache=(),
        configure_cache_retention=(),
        destroy_cache=(),
    )


def make_worker_token(ctx: Context, vm: VM) -> Step:
    """A push-only token for the workers, minted on the cache VM as the admin token is."""
    permissions = worker_token_permissions(ctx.dep.cache.name)
    cmd = mint(ctx, vm, attic.make_token_argv("workers", permissions=permissions))

    def make() -> str:
        out = ctx.execute(cmd)
        ctx.store.put(WORKER_TOKEN, attic.parse_make_token_output(out.stdout))
        return f"push token (push + pull on {ctx.dep.cache.name} only) kept as {WORKER_TOKEN!r}"

    return Step(
        MAKE_WORKER_TOKEN,
        host_label(ctx, vm),
        [cmd],
        probe=lambda: _token_valid(ctx, WORKER_TOKEN),
        action=make,
        remote=True,  # minted on the cache VM: a plan does not connect to it
    )


def config_path_query(ctx: Context, vm: VM) -> RemoteScript:
    return remote_script(ctx, vm, attic.CLIENT_CONFIG_PATH_SCRIPT, sudo=True)


def client_config_path(ctx: Context, vm: VM) -> str:
    """The config file root's attic client reads on `vm`, resolved there (attic.md §4)."""
    out = ctx.execute(config_path_query(ctx, vm))
    path = out.stdout.strip()
    if not path.startswith("/") or "\n" in path:
        raise RunbookError(f"{vm.name}: the attic client's config path came out as {path!r}")
    return path


@dataclass(frozen=True)
class ClientLogin:
    """Whose attic client is logged in where: root's on `vm`, at `endpoint`, with the token
    the store keeps as `token_name`, redone when `minted_by` made a new one in this run."""

    endpoint: str
    token_name: str
    minted_by: str


def _cache_login(ctx: Context) -> ClientLogin:
    return ClientLogin(ENDPOINT, ctx.dep.cache.admin_token, MAKE_TOKEN)


def worker_login_of(ctx: Context) -> ClientLogin:
    """A worker's client: the cache by the address the workers use, the push token."""
    return ClientLogin(api_base(ctx), WORKER_TOKEN, MAKE_WORKER_TOKEN)


def _stored_token(ctx: Context, name: str) -> Secret:
    token = ctx.store.get(name)
    if token is None:
        who = "the cache's deployment" if not ctx.dep.owns(ctx.dep.cache_vm) else "this one"
        raise RunbookError(
            f"no {name} in the secret store: notebook 06 of {who} mints it on "
            f"{ctx.dep.cache.vm} (deploy it with this secret store)"
        )
    return token


def _client_config(ctx: Context, how: ClientLogin | None = None) -> Secret:
    how = how or _cache_login(ctx)
    return attic.client_config(SERVER, how.endpoint, _stored_token(ctx, how.token_name))


def _prove_token(ctx: Context, how: ClientLogin | None = None) -> str:
    """An authenticated call only a valid token passes (attic.token_authorized); atticd
    ignoring the token (401/403) fails with why: it runs with another token secret."""
    how = how or _cache_login(ctx)
    try:
        return attic.token_authorized(
            api_base(ctx), ctx.dep.cache.name, _stored_token(ctx, how.token_name)
        )
    except attic.AtticApiError as exc:
        if exc.status in (401, 403):
            raise RunbookError(
                f"atticd refuses {how.token_name} (HTTP {exc.status} {exc.error}): it "
                "runs with another token secret than the store's; run notebook 05 (restart)"
            ) from None
        raise


def login(ctx: Context, vm: VM, how: ClientLogin | None = None) -> Step:
    """`attic login` without the token in any argv: the config file the client writes
    (client/src/config.rs, 0600) is written with `put`, as 05 writes the env file, and the
    login is proven by an authenticated call. It is redone whenever the file does not hold the
    stored token: after a rotation (`cache.rotate_token_secret`) or any new token, the old one
    stays in the file and a public cache answers reads anyway, so only the hash tells.
    `how`: root's client on the cache VM (the admin token) unless a worker's is given."""
    how = how or _cache_login(ctx)

    def probe() -> Check:
        if how.minted_by in ctx.changed:
            return TODO
        path = client_config_path(ctx, vm)
        want = hashlib.sha256(_client_config(ctx, how).reveal().encode()).hexdigest()
        got = ctx.execute(config_check(path), check=False)
        lines = got.stdout.split("\n")
        if not (got.ok and lines[0].strip() == "600" and lines[1].split()[:1] == [want]):
            print(f"      {path} does not hold the stored token (mode 0600): logging in")
            return TODO
        return Check(True, f"{path} holds the stored token; {_prove_token(ctx, how)}")

    def apply() -> str:
        path = client_config_path(ctx, vm)
        ctx.execute(config_put(path).with_content(_client_config(ctx, how)))
        return f"{path} written (0600, root; no token in any argv); {_prove_token(ctx, how)}"

    def config_check(path: str) -> RemoteScript:
        q = shlex.quote(path)
        return remote_script(ctx, vm, f"stat -c %a {q} && sha256sum {q}", sudo=True)

    def config_put(path: str) -> FilePut:
        host = ctx.dep.host(vm)
        mode, shows = attic.CLIENT_CONFIG_MODE, attic.client_config_shown(SERVER, how.endpoint)
        return FilePut(host, path, None, mode=mode, owner="root", shows=shows)

    body = json.dumps({"cache": ctx.dep.cache.name, "store_path_hashes": []})
    proof_url = f"{api_base(ctx)}_api/v1/get-missing-paths"
    proof = "proves the token: needs push permission"
    whose = (
        "" if how.token_name == ctx.dep.cache.admin_token else f" on {vm.name} ({how.token_name})"
    )
    return Step(
        f"attic login{whose}",
        host_label(ctx, vm),
        [
            config_path_query(ctx, vm),
            "# the client's config.toml is at that path:",
            config_check("<that path>"),
            config_put("<that path>"),
            f"curl -sf -H 'Authorization: Bearer <token>' -d '{body}' {proof_url}   # {proof}",
        ],
        probe=probe,
        action=apply,
        remote=True,
    )


def cache_info(ctx: Context, vm: VM) -> RemoteScript:
    return remote_script(ctx, vm, shlex.join(attic.cache_info_argv(ctx.dep.cache.name)), sudo=True)


def _cache_info_ok(ctx: Context, vm: VM) -> Callable[[], Check]:
    def probe() -> Check:
        result = ctx.execute(cache_info(ctx, vm), check=False)
        return Check(result.ok, f"cache {ctx.dep.cache.name} answers")

    return probe


def create(ctx: Context, vm: VM) -> Step:
    cmd = remote_script(ctx, vm, shlex.join(attic.cache_create_argv(ctx.dep.cache.name)), sudo=True)

    def apply() -> str:
        result = ctx.execute(cmd, check=False)
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
        [cache_info(ctx, vm), cmd],
        _cache_info_ok(ctx, vm),
        apply,
        remote=True,
    )


def make_public(ctx: Context, vm: VM) -> Step:
    name = ctx.dep.cache.name
    cmd = remote_script(
        ctx, vm, shlex.join(attic.cache_configure_argv(name, public=True)), sudo=True
    )
    info_cmd = cache_info(ctx, vm)

    def probe() -> Check:
        out = ctx.execute(info_cmd)
        info = attic.parse_cache_info(out.stderr)
        public_key_file(ctx).parent.mkdir(parents=True, exist_ok=True)
        public_key_file(ctx).write_text(info.public_key + "\n")
        return Check(info.public, f"public; key {info.public_key}")

    def apply() -> str:
        ctx.execute(cmd)
        return probe().reason

    return Step(
        f"make {name} public",
        host_label(ctx, vm),
        [info_cmd, cmd],
        probe,
        apply,
        remote=True,
    )


PATHS_SCRIPT: Final = "nix path-info --all --sigs"


def api_base(ctx: Context) -> str:
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


def store_paths(ctx: Context, vm: VM) -> RemoteScript:
    return remote_script(ctx, vm, PATHS_SCRIPT, sudo=True)


def _push_plan(ctx: Context, vm: VM) -> _PushPlan:
    """The cache VM's store paths that `attic push` would send: those not signed by one of
    the cache's own `upstream_cache_key_names` (read from the server, as the client does)."""
    config = attic.get_cache_config(api_base(ctx), ctx.dep.cache.name, _admin_token(ctx))
    out = ctx.execute(store_paths(ctx, vm)).stdout
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


def judged(
    vm: VM,
    result: Result,
    cache: str,
    eligible: list[str],
    upstream: list[str],
    config: attic.CacheConfig,
    missing: Callable[[], list[str]],
) -> attic.PushVerdict:
    """An `attic push` judged by its exit code, its `❌` lines, then what the cache still
    lacks (asked only when it exited 0); a failed one is a CommandError naming the host."""
    try:
        return attic.judge_push(
            cache=cache,
            exit_code=result.exit_code,
            output=result.stderr + result.stdout,
            eligible=eligible,
            upstream=len(upstream),
            upstream_keys=config.upstream_cache_key_names,
            missing_after=missing() if result.ok else [],
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


def push(ctx: Context, vm: VM) -> Step:
    c = ctx.dep.cache
    argv = attic.push_argv(c.name, jobs=c.push_jobs, ignore_upstream_filter=not c.upstream_filter)
    # .drv files are left out: workers substitute outputs, never derivations
    script = f"nix path-info --all | grep -v '\\.drv$' | {shlex.join(argv)}"
    # judged by progress, not wall time: a first push of a whole store takes long
    upload = remote_script(ctx, vm, script, sudo=True, transfer=True)
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
        result = ctx.execute(upload, check=False)
        missing = functools.partial(_missing, ctx, plan)
        return judged(
            vm, result, c.name, plan.eligible, plan.upstream, plan.config, missing
        ).summary()

    return Step(
        f"push the store to {c.name} (-j {c.push_jobs}, upstream filter {filt})",
        host_label(ctx, vm),
        [
            f"GET {api_base(ctx)}_api/v1/cache-config/{c.name} (its upstream keys), from here",
            store_paths(ctx, vm),
            upload,
            "POST <its api-endpoint>_api/v1/get-missing-paths: none may be left, from here",
        ],
        probe,
        apply,
        remote=True,
    )


SYSTEM_SCRIPT: Final = "readlink -f /nix/var/nix/profiles/system"


def system_query(ctx: Context, vm: VM) -> RemoteScript:
    return remote_script(ctx, vm, SYSTEM_SCRIPT)


def system_path(ctx: Context, vm: VM) -> str:
    """The system `vm` runs now (its profile's store path)."""
    path = ctx.execute(system_query(ctx, vm)).stdout.strip()
    if not keys.is_store_path(path):
        raise RunbookError(f"{vm.name}: {SYSTEM_SCRIPT} gave {path!r}")
    return path


def closure_argv(path: str) -> list[str]:
    return ["nix", *attic.NIX_SHOW_CONFIG_ARGV[1:3], "path-info", "--json", "-r", path]


def closure_query(ctx: Context, vm: VM, system: str) -> RemoteScript:
    """`system`'s closure with each path's NAR size (`nix path-info --json -r`)."""
    return remote_script(ctx, vm, shlex.join(closure_argv(system)))


@dataclass(frozen=True)
class _ClosurePlan:
    system: str
    config: attic.CacheConfig
    infos: list[attic.PathInfo]
    eligible: list[str]
    upstream: list[str]


def _closure_plan(ctx: Context, vm: VM) -> _ClosurePlan:
    """`vm`'s system closure and what of it `attic push` would send (as `_push_plan`), with
    each path's NAR size, for the bytes the record gives."""
    token = _stored_token(ctx, WORKER_TOKEN)
    config = attic.get_cache_config(api_base(ctx), ctx.dep.cache.name, token)
    system = system_path(ctx, vm)
    out = ctx.execute(closure_query(ctx, vm, system)).stdout
    infos = attic.parse_path_info_json(out)
    eligible, upstream = attic.split_upstream(
        infos, config.upstream_cache_key_names, ignore_filter=not ctx.dep.cache.upstream_filter
    )
    return _ClosurePlan(system, config, infos, eligible, upstream)


def push_closure(ctx: Context, vm: VM) -> Step:
    """A warm cache (issue 15): `vm`'s system closure pushed from `vm` itself, where the
    paths are, by root's client logged in with the workers' push token (`login` with
    `worker_login_of`). `attic push --stdin` takes the closure of what it reads and sends
    only what the cache lacks; judged as 06's push is (exit code, `❌` lines, then
    get-missing-paths), and the record says how many paths and bytes it sent."""
    c = ctx.dep.cache
    argv = attic.push_argv(c.name, jobs=c.push_jobs, ignore_upstream_filter=not c.upstream_filter)
    upload = remote_script(
        ctx, vm, f"{SYSTEM_SCRIPT} | {shlex.join(argv)}", sudo=True, transfer=True
    )

    def token() -> Secret:
        return _stored_token(ctx, WORKER_TOKEN)

    def missing(plan: _ClosurePlan) -> list[str]:
        return attic.get_missing_paths(plan.config.api_endpoint, c.name, plan.eligible, token())

    def probe() -> Check:
        plan = _closure_plan(ctx, vm)
        if not plan.eligible or missing(plan):
            return TODO
        return Check(
            True,
            f"all {len(plan.eligible)} paths of {vm.name}'s system {plan.system} are in "
            f"{c.name}; {len(plan.upstream)} skipped as in upstream",
        )

    def apply() -> str:
        plan = _closure_plan(ctx, vm)
        result = ctx.execute(upload, check=False)
        output = result.stderr + result.stdout
        left = functools.partial(missing, plan)
        verdict = judged(vm, result, c.name, plan.eligible, plan.upstream, plan.config, left)
        sent = attic.push_sent(attic.parse_push_lines(output), plan.infos)
        return f"{vm.name}'s system {plan.system}: {sent.summary()}; {verdict.summary()}"

    return Step(
        f"push {vm.name}'s system closure to {c.name} (only what it lacks)",
        host_label(ctx, vm),
        [
            system_query(ctx, vm),
            closure_query(ctx, vm, "<that system>"),
            upload,
        ],
        probe,
        apply,
        remote=True,
    )


def read_cache(ctx: Context, vm: VM) -> Step:
    """For a deployment that only references the cache VM (workers): read the live cache's
    configuration over HTTP and keep its public key for 07, changing nothing on the VM. The
    cache's own deployment makes it; until then this step fails and says so."""
    c = ctx.dep.cache
    url = f"{api_base(ctx)}_api/v1/cache-config/{c.name}"

    def probe() -> Check:
        try:
            config = attic.get_cache_config(api_base(ctx), c.name, _token(ctx))
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
