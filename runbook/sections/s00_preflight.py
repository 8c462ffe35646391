"""00 架构 + 关键经验 1: the deployment's shape, and a preflight on this machine.

Lesson 1 (the attic flake breaks the client build) is found with `runbook.doctor` and fixed
by splicing the flake; lesson 3's prevention (build the toplevel locally first) is here too.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Final

from runbook.core.errors import CommandError, RunbookError
from runbook.core.params import VM, check_paths
from runbook.engine.steps import DONE, TODO, Check, Context, Step, unchecked
from runbook.sections.common import config_present, render
from runbook.transport import local
from runbook.transport.commands import Command, LocalCommand

if TYPE_CHECKING:
    from runbook.nix.nixcfg import Change

NOTEBOOK: Final = "00-architecture-preflight"
HOST_TOOLS: Final = ("nix", "ssh", "rsync", "make")
LESSON_1_CHECKS: Final = frozenset({"attic-flake-input", "attic-module-import"})
FIXED_HERE: Final = LESSON_1_CHECKS  # attic_flake (the step after the doctor) fixes these
BUILD_PROBE_TIMEOUT: Final = 300.0  # evaluating a real nixpkgs system takes a while
# A plan runs no `nix eval`: every Nix copies a path flake into /nix/store to evaluate it
# (2.8 libfetchers/path.cc fetch: addToStoreFromDump, whatever --read-only says), writes each
# derivation it meets (.drv files) unless --read-only, and current Nix writes its fetcher
# cache under ~/.cache/nix (libfetchers/fetch-to-store.cc) even then.
PLAN_EVALUATES_NOTHING: Final = (
    "a plan evaluates nothing (nix would copy the checkout into /nix/store); "
    "a deploy runs `{eval}` and builds unless that path is here"
)


def architecture(ctx: Context) -> Step:
    def show() -> str:
        dep = ctx.dep
        print("    macOS host")
        for vm in dep.vms:
            print(f"    ├── {vm.name:<28} {vm.role!s:<7} {vm.address}:{vm.port}")
        print(f"    cache: {dep.cache.url} (atticd on {dep.cache.vm})")
        return f"{len(dep.vms)} VM(s), cache {dep.cache.url}"

    return Step("architecture", "localhost", action=show, readonly=True)


def paths(ctx: Context) -> Step:
    def missing() -> list[str]:
        return [f"{c.key} {c.path}: {c.problem}" for c in check_paths(ctx.dep) if c.problem]

    def probe() -> Check:
        problems = missing()
        return unchecked("not on this machine: " + "; ".join(problems)) if problems else DONE

    def require() -> str:
        from runbook.core.errors import InputError

        if problems := missing():
            raise InputError("; ".join(problems))
        return ""

    return Step("files the deployment needs", "localhost", probe=probe, action=require)


def host_tools(ctx: Context) -> Step:
    def absent() -> list[str]:
        tools = [t for t in HOST_TOOLS if local.which(t) is None]
        if not ctx.dep.utm.utmctl.exists():
            tools.append(str(ctx.dep.utm.utmctl))
        return tools

    def probe() -> Check:
        gone = absent()
        return unchecked("not on this machine: " + ", ".join(gone)) if gone else DONE

    def require() -> str:
        from runbook.core.errors import InputError

        if gone := absent():
            raise InputError("host tools missing: " + ", ".join(gone))
        return ""

    return Step(
        "host tools (make, nix, ssh, rsync, utmctl)", "localhost", probe=probe, action=require
    )


def doctor_report(ctx: Context, force_checks: bool = False) -> Step:
    """The doctor's table; a check that fails stops a deploy here, before anything is touched
    (the wipe is in 03), unless `force_checks` (`runbook deploy --force-checks`). The lesson-1
    failures do not stop it: the next step of this notebook fixes them."""
    cmd = render(["runbook", "doctor", str(ctx.loaded.path)])
    blocking: list[str] = []

    def probe() -> Check:
        if (missing := config_present(ctx)) is not None:
            return missing
        from runbook.doctor import Status, render_text, run_checks

        findings = run_checks(ctx.dep, ctx.dep.nixos_config, deploy_runs=_later_notebooks(ctx))
        for line in render_text(findings).splitlines():
            print(f"      {line}")
        fails = [f for f in findings if f.status is Status.FAIL]
        blocking[:] = [f.check for f in fails if f.check not in FIXED_HERE]
        fixed = [f.check for f in fails if f.check in FIXED_HERE]
        later = f"; {', '.join(fixed)} fixed by the next step" if fixed else ""
        if not blocking:
            return Check(True, f"no check fails{later}")
        names = ", ".join(blocking)
        if force_checks:
            return Check(True, f"failing: {names}; going on as --force-checks asks{later}")
        if ctx.planning:
            print(f"      a deploy stops here: {names} fail; {_go_on(ctx)}")
            return Check(True, f"failing: {names} (a deploy stops here){later}")
        return TODO

    def stop() -> str:
        raise RunbookError(
            f"runbook doctor: {', '.join(blocking)} fail (the table above says why and how to "
            f"fix). Nothing was touched: fix the configuration or the params, or {_go_on(ctx)}"
        )

    return Step("check the nixos-config (runbook doctor)", "localhost", [cmd], probe, stop)


def _later_notebooks(ctx: Context) -> frozenset[str]:
    """The notebooks ("07", ...) this run goes on to, from its record's manifest (the runner
    writes it before 00 starts); none when 00 runs on its own (no record)."""
    from runbook.notebook.records import read_manifest

    if ctx.record_dir is None or not (ctx.record_dir / "manifest.json").is_file():
        return frozenset()
    try:
        listed = read_manifest(ctx.record_dir)["notebooks"]
    except RunbookError:
        return frozenset()
    return frozenset(nb["notebook"][:2] for nb in listed if nb["notebook"][:2] > "00")


def _go_on(ctx: Context) -> str:
    return f"go on anyway with `runbook deploy {ctx.loaded.path} --force-checks`"


def attic_flake(ctx: Context) -> Step:
    """Lesson 1: drop the attic flake input and module; `nix flake lock` cleans the lock."""
    config = ctx.dep.nixos_config
    lock = LocalCommand.of(["nix", "flake", "lock"], cwd=config)

    def changes() -> list[Change]:
        from runbook.doctor import planned_changes

        return planned_changes(ctx.dep, config, LESSON_1_CHECKS)

    def probe() -> Check:
        if (missing := config_present(ctx)) is not None:
            return missing
        pending = changes()
        for change in pending:
            print(change.diff(str(change.path.relative_to(config))), end="")
        return TODO if pending else Check(True, "no attic flake input or module")

    def fix() -> str:
        from runbook.nix.nixcfg import write_changes

        write_changes(changes())
        local.run(list(lock.argv), cwd=lock.cwd, on_line=lambda _s, ln: print(f"      {ln}"))
        return "flake.nix and lib/mksystem.nix use nixpkgs' attic; lock refreshed"

    cmds: list[Command | str] = [
        "# what `"
        + render(["runbook", "doctor", str(ctx.loaded.path), "--fix"])
        + "` does, from here: removes attic.url and inputs.attic.nixosModules.atticd",
        lock,
    ]
    return Step("use nixpkgs' attic, not the attic flake (lesson 1)", "localhost", cmds, probe, fix)


def toplevel_attr(vm: VM) -> str:
    return f'.#nixosConfigurations."{vm.name}".config.system.build.toplevel'


def toplevel_argv(vm: VM) -> list[str]:
    """`nix build --json --no-link` of the VM's toplevel. The store path is read from the JSON
    (`[{"drvPath", "outputs": {"out": PATH}}]`), which every Nix since 2.4 prints; 2.8 (Debian's)
    has no `--print-out-paths`. `--impure`: a configuration may read the builder's system."""
    return ["nix", "build", "--json", "--no-link", "--impure", toplevel_attr(vm)]


def toplevel_out_path_argv(vm: VM) -> list[str]:
    """`nix eval --raw` of the toplevel's out path: evaluation only, nothing is built."""
    return ["nix", "eval", "--raw", "--impure", toplevel_attr(vm) + ".outPath"]


def built_path(stdout: str) -> str:
    """The toplevel's store path from `nix build --json`; CommandError when there is none."""
    try:
        out = str(json.loads(stdout)[0]["outputs"]["out"])
    except (ValueError, LookupError, TypeError):
        out = ""
    if not out.startswith("/nix/store/"):
        raise CommandError(
            host="localhost",
            command="nix build --json",
            exit_code=0,
            reason=f"printed no store path ({stdout.strip()[:200]!r})",
        )
    return out


def nix_error(stderr: str) -> str:
    """What nix says is wrong and where: its first `error:` line and the first `at FILE:L:C`
    after it (the checkout's own path, not the store copy nix evaluated); else its last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    first = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), None)
    if first is None:
        return lines[-1][:300] if lines else "no message"
    where = next((ln for ln in lines[first + 1 :] if ln.startswith("at ")), "")
    where = re.sub(r"/nix/store/[a-z0-9]{32}-source/", "", where)
    return f"{lines[first][:300]} {where[:200]}".strip()


def local_nix_env(ctx: Context) -> dict[str, str]:
    """NIX_CONFIG for this machine's own nix calls: params `local_nix_config` after what the
    environment already sets (nix reads NIX_CONFIG as nix.conf lines, the later ones winning)."""
    extra = ctx.dep.local_nix_config.strip()
    if not extra:
        return {}
    before = os.environ.get("NIX_CONFIG", "").strip()
    return {"NIX_CONFIG": f"{before}\n{extra}" if before else extra}


def toplevel_build(ctx: Context, vm: VM) -> Step:
    """Lesson 3's prevention: a configuration that does not build never reaches a VM."""
    # the environment goes on nix's own words, where a shell would apply it too
    shown = "NIX_CONFIG=<params local_nix_config>" if ctx.dep.local_nix_config.strip() else ""
    config, env = ctx.dep.nixos_config, local_nix_env(ctx)
    build_cmd = LocalCommand.of(toplevel_argv(vm), cwd=config, env=env, env_shown=shown)
    evaluate = LocalCommand.of(
        toplevel_out_path_argv(vm),
        timeout=BUILD_PROBE_TIMEOUT,
        cwd=config,
        env=env,
        env_shown=shown,
    )

    def probe() -> Check:
        if (missing := config_present(ctx)) is not None:
            return missing
        if local.which("nix") is None:
            return unchecked("nix is not on this machine")
        if ctx.planning:  # evaluating a flake writes the Nix store and its database
            return unchecked(PLAN_EVALUATES_NOTHING.format(eval=evaluate.render()))
        # built already when the configuration evaluates to a store path this machine has
        # (a configuration that does not evaluate is left to the build, which says why)
        try:
            found = ctx.execute(evaluate, check=False)
        except RunbookError:  # e.g. the evaluation timed out: the build will tell
            return TODO
        out = found.stdout.strip()
        if found.ok and out.startswith("/nix/store/") and os.path.exists(out):
            return Check(True, f"already built: {out}")
        return TODO

    def build() -> str:
        result = ctx.execute(build_cmd, check=False)
        if not result.ok:  # nix says what is wrong first, then where: that is its tail
            raise CommandError(
                host="localhost",
                command=build_cmd.render(),
                exit_code=result.exit_code,
                stderr=nix_error(result.stderr),
            )
        return f"built {built_path(result.stdout)}"

    return Step(f"build {vm.name} locally first (lesson 3)", "localhost", [build_cmd], probe, build)
