"""00 架构 + 关键经验 1: the deployment's shape, and a preflight on this machine.

Lesson 1 (the attic flake breaks the client build) is found with `runbook.doctor` and fixed
by splicing the flake; lesson 3's prevention (build the toplevel locally first) is here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from runbook import local
from runbook.errors import RunbookError
from runbook.params import VM, check_paths
from runbook.sections.common import config_present, in_lab, render
from runbook.steps import DONE, TODO, Check, Context, Step, unchecked

if TYPE_CHECKING:
    from runbook.nixcfg import Change

NOTEBOOK: Final = "00-architecture-preflight"
HOST_TOOLS: Final = ("nix", "ssh", "rsync", "make")
LESSON_1_CHECKS: Final = frozenset({"attic-flake-input", "attic-module-import"})
FIXED_HERE: Final = LESSON_1_CHECKS  # attic_flake (the step after the doctor) fixes these


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
        from runbook.errors import InputError

        if problems := missing():
            raise InputError("; ".join(problems))
        return ""

    return Step("files the deployment needs", "localhost", probe=probe, action=require)


def host_tools(ctx: Context) -> Step:
    def absent() -> list[str]:
        tools = [t for t in HOST_TOOLS if local.which(t) is None]
        if not ctx.dep.utm.utmctl.exists() and not in_lab(ctx):  # the lab plays UTM's VMs
            tools.append(str(ctx.dep.utm.utmctl))
        return tools

    def probe() -> Check:
        gone = absent()
        return unchecked("not on this machine: " + ", ".join(gone)) if gone else DONE

    def require() -> str:
        from runbook.errors import InputError

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

        findings = run_checks(ctx.dep, ctx.dep.nixos_config)
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


def _go_on(ctx: Context) -> str:
    return f"go on anyway with `runbook deploy {ctx.loaded.path} --force-checks`"


def attic_flake(ctx: Context) -> Step:
    """Lesson 1: drop the attic flake input and module; `nix flake lock` cleans the lock."""
    config = ctx.dep.nixos_config

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
        from runbook.nixcfg import write_changes

        write_changes(changes())
        local.run(["nix", "flake", "lock"], cwd=config, on_line=lambda _s, ln: print(f"      {ln}"))
        return "flake.nix and lib/mksystem.nix use nixpkgs' attic; lock refreshed"

    cmds = [
        render(["runbook", "doctor", str(ctx.loaded.path), "--fix"])
        + "   # removes attic.url and inputs.attic.nixosModules.atticd",
        f"cd {config} && nix flake lock",
    ]
    return Step("use nixpkgs' attic, not the attic flake (lesson 1)", "localhost", cmds, probe, fix)


def toplevel_argv(vm: VM) -> list[str]:
    attr = f'.#nixosConfigurations."{vm.name}".config.system.build.toplevel'
    return ["nix", "build", "--print-out-paths", attr, "--no-link", "--impure"]


def lab_evaluation(ctx: Context, vm: VM) -> Step:
    """The lab's stand-in for the local build: its flake's inputs (nixpkgs from GitHub) are
    not fetched here, so the configuration is evaluated the way the lab's nixos-rebuild
    evaluates it (every .nix file parsed, machine + user files and imports read)."""

    def evaluate() -> str:
        from runbook.lab import activate
        from runbook.lab.standins.nixos_rebuild import system_files

        files = system_files(ctx.dep.nixos_config, vm.name)
        cfg = activate.system_config(activate.evaluate_files(files), "installed", vm.name)
        services = ", ".join(sorted(cfg.services))
        return f"{vm.name} evaluates: {len(files)} entry files, services {services}"

    cmd = (
        f"nixos-rebuild build --flake {ctx.dep.nixos_config}#{vm.name}   # as the lab evaluates it"
    )

    def probe() -> Check:  # a read: when it evaluates, there is nothing to do
        return config_present(ctx) or Check(True, evaluate())

    return Step(f"evaluate {vm.name} first (lesson 3, lab)", "localhost", [cmd], probe, evaluate)


def toplevel_build(ctx: Context, vm: VM) -> Step:
    """Lesson 3's prevention: a configuration that does not build never reaches a VM."""
    if in_lab(ctx):
        return lab_evaluation(ctx, vm)
    argv = toplevel_argv(vm)

    def probe() -> Check:
        if (missing := config_present(ctx)) is not None:
            return missing
        if local.which("nix") is None:
            return unchecked("nix is not on this machine")
        return TODO  # nix build is itself idempotent: a built toplevel is a cache hit

    def build() -> str:
        result = local.run(argv, cwd=ctx.dep.nixos_config)
        return f"built {result.stdout.strip()}"

    cmd = f"cd {ctx.dep.nixos_config} && {render(argv)}"
    return Step(f"build {vm.name} locally first (lesson 3)", "localhost", [cmd], probe, build)


def steps(ctx: Context) -> list[Step]:
    return [
        architecture(ctx),
        paths(ctx),
        host_tools(ctx),
        doctor_report(ctx),  # the panel's: force_checks is the notebook's parameter
        attic_flake(ctx),
        *(toplevel_build(ctx, vm) for vm in ctx.dep.owned_vms),
    ]
