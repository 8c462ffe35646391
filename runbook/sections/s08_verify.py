"""08 Attic 缓存管理 / 当前缓存信息: verify the cache as Nix would (nix-cache-info, signatures)
and make a worker really substitute a path from it.
"""

from __future__ import annotations

from typing import Final

from runbook import attic
from runbook.params import VM
from runbook.sections.common import host_label, render, ssh_render
from runbook.sections.s06_cache import public_key_file
from runbook.steps import Context, Step

NOTEBOOK: Final = "08-verify"
SAMPLE_PATH_SCRIPT: Final = "readlink -f /run/current-system/sw"


def _key(ctx: Context) -> str:
    path = public_key_file(ctx)
    return path.read_text().strip() if path.is_file() else "<public key from notebook 06>"


def verify(ctx: Context) -> Step:
    url = ctx.dep.cache.url

    def apply() -> str:
        report = attic.verify_cache(url, _key(ctx))
        report.raise_for_failures()
        return f"{url}: nix-cache-info and signatures check out"

    return Step(
        f"verify {url}",
        f"localhost -> {ctx.dep.cache.host}",
        [
            f"curl -sf {url}/nix-cache-info",
            render(["runbook", "verify-cache", url, "--public-key", _key(ctx)]),
        ],
        action=apply,
        remote=True,
    )


def substitute(ctx: Context, worker: VM) -> Step:
    url = ctx.dep.cache.url
    cache_vm = ctx.dep.cache_vm

    def apply() -> str:
        path = ctx.connection(cache_vm).run(SAMPLE_PATH_SCRIPT).stdout.strip()
        ctx.connection(worker).run(["nix", "copy", "--from", url, path])
        return f"{worker.name} substituted {path} from {url} (signature checked by nix)"

    return Step(
        f"substitute a path on {worker.name}",
        host_label(ctx, worker),
        [
            ssh_render(ctx, cache_vm, SAMPLE_PATH_SCRIPT),
            ssh_render(ctx, worker, f"nix copy --from {url} <that path>"),
        ],
        probe=None,
        action=apply,
        remote=True,
    )


def steps(ctx: Context) -> list[Step]:
    return [verify(ctx), *(substitute(ctx, w) for w in ctx.dep.workers)]
