"""The lab's system has `attic` only when its configuration installs pkgs.attic-client, as a
NixOS system does: `services.atticd` adds only `atticd-atticadm` to environment.systemPackages
(nixpkgs nixos/modules/services/networking/atticd.nix). The lab's own nixos-config does not
hide this: its cache gets the client from notebook 05's edit of modules/attic.nix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from runbook.lab import activate, nixconfig, system
from runbook.lab.standins import nixos_rebuild
from runbook.nix.nixcfg import ConfigTree, edit_sequentially, plan_package

LAB_CONFIG = Path(__file__).resolve().parents[1] / "runbook" / "lab" / "nixos-config"
CACHE = "vm-aarch64-utm-cache"


def evaluate(root: Path, name: str = CACHE) -> system.SystemConfig:
    files = nixos_rebuild.system_files(root, name)
    return activate.system_config(activate.evaluate_files(files), "installed", "fallback")


def test_the_lab_cache_has_no_client_until_notebook_05_adds_it(tmp_path: Path) -> None:
    before = evaluate(LAB_CONFIG)
    assert "attic-client" not in before.packages and "git" in before.packages
    copy = tmp_path / "nixos-config"
    shutil.copytree(LAB_CONFIG, copy)
    module = Path("modules/attic.nix")
    nix = ConfigTree(copy).get(module)
    (copy / module).write_bytes(edit_sequentially(nix, [plan_package]))
    assert "attic-client" in evaluate(copy).packages
    assert "attic-client" not in evaluate(copy, "vm-aarch64-utm").packages  # the worker


@pytest.mark.parametrize(
    "value",
    [
        "lib.optionals true [ pkgs.attic-client ]",
        "myPackages",
        "lib.mkIf true [ pkgs.attic-client ]",
    ],
)
def test_forms_the_lab_cannot_evaluate_are_refused(tmp_path: Path, value: str) -> None:
    copy = tmp_path / "nixos-config"
    shutil.copytree(LAB_CONFIG, copy)
    module = copy / "modules" / "attic.nix"
    module.write_text(module.read_text().replace("  services.atticd = {", f"  environment.systemPackages = {value};\n  services.atticd = {{"))  # fmt: skip
    with pytest.raises(nixconfig.EvalError, match=r"environment\.systemPackages"):
        evaluate(copy)


def test_a_switch_links_attic_only_with_its_package(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cfg = system.SystemConfig(hostname="h", phase="installed", packages=("git",))
    system.write_state(root, cfg)
    assert system.absent_programs(root) == {"attic"}
    system.link_programs(bin_dir, system.absent_programs(root))
    linked = {p.name for p in bin_dir.iterdir()}
    assert "attic" not in linked and {"atticd", "atticd-atticadm", "nixos-rebuild"} <= linked
    assert os.path.realpath(bin_dir / "atticd") == str(system.LAB_BIN / "atticd")
    system.write_state(root, system.SystemConfig("h", "installed", packages=("attic-client",)))
    system.link_programs(bin_dir, system.absent_programs(root))
    assert (bin_dir / "attic").is_symlink()
    system.write_state(root, cfg)  # removed again: the next switch takes it away
    system.link_programs(bin_dir, system.absent_programs(root))
    assert not (bin_dir / "attic").exists()


def test_a_host_without_state_has_no_attic(tmp_path: Path) -> None:
    assert system.absent_programs(tmp_path) == {"attic"}
