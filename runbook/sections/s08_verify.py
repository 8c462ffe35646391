"""08 Attic 缓存管理 / 当前缓存信息: verify the cache as Nix would (nix-cache-info, signatures)
and make a worker really substitute a path from it.

The path is the cache VM's own system (`/nix/var/nix/profiles/system`): it was pushed in 06
and no worker builds it, so a worker can only get it from the cache. Nix checks the
narinfo's signature against `trusted-public-keys` itself; its log names the substituter.
"""

from __future__ import annotations

import shlex
from typing import Final

from runbook import attic
from runbook.errors import RunbookError
from runbook.params import VM
from runbook.sections.common import host_label, render, ssh_render
from runbook.sections.s06_cache import public_key_file
from runbook.steps import TODO, Check, Context, Step

NOTEBOOK: Final = "08-verify"
SAMPLE_PATH_SCRIPT: Final = "readlink -f /nix/var/nix/profiles/system"


def _key(ctx: Context) -> str:
    path = public_key_file(ctx)
    return path.read_text().strip() if path.is_file() else "<public key from notebook 06>"


def _sample_path(ctx: Context) -> str:
    path = ctx.connection(ctx.dep.cache_vm).run(SAMPLE_PATH_SCRIPT).stdout.strip()
    if not path.startswith("/nix/store/"):
        raise RunbookError(f"{ctx.dep.cache.vm}: {SAMPLE_PATH_SCRIPT} gave {path!r}")
    return path


def verify(ctx: Context) -> Step:
    url = ctx.dep.cache.url

    def check() -> str:
        path = _sample_path(ctx)
        report = attic.verify_cache(url, _key(ctx), [path])
        report.raise_for_failures()
        return f"nix-cache-info fields and the signature of {path} check out with {_key(ctx)}"

    return Step(
        f"verify {url}",
        f"localhost -> {ctx.dep.cache.host}",
        [
            f"curl -sf {url}/nix-cache-info",
            render(
                ["runbook", "verify-cache", url, "--public-key", _key(ctx), "--store-path", "P"]
            ),
        ],
        probe=lambda: Check(True, check()),  # a check only: when it passes, nothing to do
        action=check,
        remote=True,
    )


def substitute(ctx: Context, worker: VM) -> Step:
    url = ctx.dep.cache.url

    def probe() -> Check:
        path = _sample_path(ctx)
        has = ctx.connection(worker).run(["nix-store", "--check-validity", path], check=False)
        return Check(True, f"{worker.name} has {path} (from the cache)") if has.ok else TODO

    def apply() -> str:
        path = _sample_path(ctx)
        result = ctx.connection(worker).run(["nix-store", "-r", path])
        log = result.stdout + result.stderr
        want = f"copying path '{path}' from '{url}'"
        if want not in log:
            raise RunbookError(f"{worker.name} realised {path} but not from {url}: {log[-300:]}")
        return f"{worker.name}: {want} (signature checked by nix)"

    return Step(
        f"substitute the cache VM's system on {worker.name}",
        host_label(ctx, worker),
        [
            ssh_render(ctx, ctx.dep.cache_vm, SAMPLE_PATH_SCRIPT),
            ssh_render(ctx, worker, f"nix-store -r {shlex.quote('<that path>')}"),
        ],
        probe=probe,
        action=apply,
        remote=True,
    )


def steps(ctx: Context) -> list[Step]:
    return [verify(ctx), *(substitute(ctx, w) for w in ctx.dep.workers)]
