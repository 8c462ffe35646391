"""Lesson 3 for real in the lab: the lab's nixos-config is a flake this machine's Nix evaluates
and builds offline, and notebook 00's own `nix build` of a toplevel runs on it. No lab host
is started (this machine's nix only), so no lab lock is needed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import need

TEMPLATE = Path(__file__).resolve().parents[1] / "runbook" / "lab" / "nixos-config"


if TYPE_CHECKING:
    from runbook.engine.steps import Context


def _context(tmp_path: Path, config: Path) -> Context:
    from runbook.core.params import load
    from runbook.core.secrets import SecretStore
    from runbook.engine.steps import Context, Mode
    from runbook.lab.environment import LOCAL_NIX_CONFIG

    key = tmp_path / "id_ed25519"
    key.touch()
    params = tmp_path / "params.yaml"
    nix_conf = "".join(f"  {line}\n" for line in LOCAL_NIX_CONFIG.splitlines())
    params.write_text(
        f"deployment: flaketest\nnixos_config: {config}\nidentity: {key}\n"
        "vms:\n  - {name: vm-aarch64-utm-cache, role: cache, address: 127.0.0.1}\n"
        "cache: {vm: vm-aarch64-utm-cache, host: 127.0.0.1}\n"
        f"local_nix_config: |\n{nix_conf}"
    )
    ctx = Context(
        "00-architecture-preflight", load(params), Mode.DEPLOY, False, SecretStore(tmp_path / "s")
    )
    ctx.sink = lambda _record: None
    return ctx


@pytest.fixture
def config(tmp_path: Path) -> Path:
    need(shutil.which("nix") is not None, "needs nix (Debian's nix-bin)")
    need(
        Path("/nix/store").is_dir() and os.access("/nix/store", os.W_OK),
        "needs a writable /nix/store",
    )
    dest = tmp_path / "nixos-config"
    shutil.copytree(TEMPLATE, dest)
    return dest


def test_00_builds_the_lab_toplevel_then_finds_it_built(tmp_path: Path, config: Path) -> None:
    from runbook.engine.steps import Outcome
    from runbook.sections import s00_preflight

    ctx = _context(tmp_path, config)
    vm = ctx.dep.cache_vm
    assert ctx.run(s00_preflight.toplevel_build(ctx, vm)) in (Outcome.DONE, Outcome.ALREADY)
    built = ctx.records[-1]["reason"]
    assert "/nix/store/" in built and "nixos-system-nixos-utm-cache-lab" in built, built
    out = Path(built.split()[-1])
    assert '"hostName":"nixos-utm-cache"' in (out / "config.json").read_text()
    # the same configuration evaluates to the same path: already built, nothing run again
    assert ctx.run(s00_preflight.toplevel_build(ctx, vm)) is Outcome.ALREADY


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (("machines/vm-shared.nix", "[ git gnumake rsync ]", "[ git gnumake rsync no-such-package ]"),
         "undefined variable 'no-such-package'"),
        (("machines/vm-aarch64-utm-cache.nix", 'networking.hostName = "nixos-utm-cache";',
          'networking.hostName = "nixos-utm-cache"; networking.hostName = "other";'),
         "attribute 'networking.hostName' already defined"),
        (("modules/attic.nix", "enable = true;", "enable = true"), "syntax error"),
    ],
)  # fmt: skip
def test_a_configuration_that_does_not_evaluate_stops_the_run(
    tmp_path: Path, config: Path, edit: tuple[str, str, str], says: str
) -> None:
    from runbook.engine.steps import StepFailed
    from runbook.sections import s00_preflight

    rel, old, new = edit
    text = (config / rel).read_text()
    assert old in text
    (config / rel).write_text(text.replace(old, new, 1))
    ctx = _context(tmp_path, config)
    vm = ctx.dep.cache_vm
    with pytest.raises(StepFailed, match="nix build") as failed:
        ctx.run(s00_preflight.toplevel_build(ctx, vm))
    assert says in str(failed.value) or says in failed.value.error, failed.value


def test_conflicting_definitions_are_refused_like_the_module_system(
    tmp_path: Path, config: Path
) -> None:
    """Two modules giving one option different plain values: nixpkgs
    (lib/options.nix mergeEqualOption) says 'has conflicting definition values'; mkDefault yields."""
    from runbook.engine.steps import StepFailed
    from runbook.sections import s00_preflight

    extra = config / "machines" / "vm-aarch64-utm-cache.nix"
    extra.write_text(
        extra.read_text().replace(
            "../modules/attic.nix", "../modules/attic.nix\n    ./other-name.nix"
        )
    )
    (config / "machines" / "other-name.nix").write_text('{ ... }: { networking.hostName = "x"; }\n')
    ctx = _context(tmp_path, config)
    with pytest.raises(StepFailed, match="conflicting definition values"):
        ctx.run(s00_preflight.toplevel_build(ctx, ctx.dep.cache_vm))
