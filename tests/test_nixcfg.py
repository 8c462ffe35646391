"""runbook.nix.nixcfg on a handbook-shaped nixos-config (tests/fixtures/nixos-config)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from runbook.core.errors import InputError, RunbookError
from runbook.nix.nixcfg import (
    Change,
    ConfigTree,
    NixPath,
    Opaque,
    Undecided,
    attic_inputs,
    declared_inputs,
    flake_systems,
    is_attic_url,
    lock_text,
    modules_view,
    plan_attic_flake_removal,
    plan_list_item,
    prune_lock,
    read_lock,
    system_view,
    write_changes,
)
from runbook.nix.nixfile import NixFile, apply_edits
from tests.conftest import need

FIXTURE = Path(__file__).parent / "fixtures" / "nixos-config" / "handbook"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "nixos-config"
    shutil.copytree(FIXTURE, target)
    return target


def nix_instantiate(*args: str, cwd: Path | None = None) -> str:
    need(
        shutil.which("nix-instantiate") is not None,
        "nix-instantiate (Debian nix-bin) not installed",
    )
    return subprocess.run(
        ["nix-instantiate", *args], capture_output=True, text=True, check=True, cwd=cwd
    ).stdout


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("github:zhaofengli/attic", True),
        ("github:zhaofengli/attic/main", True),
        ("github:someone/attic?ref=fix", True),
        ("git+https://github.com/zhaofengli/attic.git", True),
        ("https://github.com/zhaofengli/attic/archive/main.tar.gz", True),
        ("github:nixos/nixpkgs/nixos-26.05", False),
        ("github:zhaofengli/attic-fork", False),
        ("path:/home/me/attic", False),
    ],
)
def test_is_attic_url(url, expected):
    assert is_attic_url(url) is expected


def test_the_attic_input_is_found_however_it_is_declared():
    assert attic_inputs(NixFile(b'{ inputs.cache.url = "github:zhaofengli/attic"; }')) == {
        "cache": "github:zhaofengli/attic"
    }
    assert set(
        attic_inputs(
            NixFile(b'{ inputs = { attic = { type = "github"; owner = "z"; repo = "attic"; }; }; }')
        )
    ) == {"attic"}
    assert attic_inputs(NixFile(b'{ inputs.nixpkgs.url = "github:nixos/nixpkgs"; }')) == {}


def test_declared_inputs_include_outputs_arguments():
    flake = NixFile(b'{ inputs.a.url = "x"; outputs = { self, a, b, ... }: { }; }')
    assert declared_inputs(flake) == {"a", "b"}


def test_removing_the_attic_flake_keeps_everything_else(config: Path):
    tree = ConfigTree(config)
    plan = plan_attic_flake_removal(tree)
    assert [(str(p.file), p.line, p.fixable) for p in plan.problems] == [
        ("flake.nix", 14, True),
        ("flake.nix", 20, True),
        ("lib/mksystem.nix", 17, True),
        ("machines/vm-shared.nix", 23, True),
    ]
    write_changes(tree.changes(plan))
    flake = (config / "flake.nix").read_text()
    assert "attic" not in flake.replace("# Binary cache server and client", "")
    assert "# Pin our primary nixpkgs repository." in flake  # comments survive
    assert "outputs = { self, nixpkgs, home-manager, ... }@inputs: let" in flake
    mksystem = (config / "lib/mksystem.nix").read_text()
    assert "inputs.attic" not in mksystem and "inputs.home-manager.nixosModules" in mksystem
    assert "    pkgs.attic-client\n" in (config / "machines/vm-shared.nix").read_text()
    # Real Nix agrees: the flake's inputs are gone from its value, and every file parses.
    names = nix_instantiate(
        "--eval",
        "--strict",
        "--json",
        "-E",
        f"builtins.attrNames (import {config}/flake.nix).inputs",
    )
    assert json.loads(names) == ["home-manager", "nixpkgs"]
    for rel in tree.nix_files():
        nix_instantiate("--parse", str(config / rel))
    assert not plan_attic_flake_removal(ConfigTree(config)).problems  # a rerun finds nothing


def test_a_reference_outside_a_list_is_reported_not_fixed(tmp_path: Path):
    (tmp_path / "flake.nix").write_text(
        '{ inputs.attic.url = "github:zhaofengli/attic";\n'
        "  outputs = { self, attic }: { m = attic.nixosModules.atticd; }; }\n"
    )
    plan = plan_attic_flake_removal(ConfigTree(tmp_path))
    manual = [p for p in plan.problems if not p.fixable]
    assert len(manual) == 1 and "attic.nixosModules.atticd" in manual[0].message


def test_prune_lock_drops_the_input_and_what_only_it_reached():
    lock = read_lock(FIXTURE / "flake.lock")
    pruned = prune_lock(lock, ["attic"])
    assert sorted(pruned["nodes"]) == ["home-manager", "nixpkgs", "root"]
    assert pruned["nodes"]["root"]["inputs"] == {
        "home-manager": "home-manager",
        "nixpkgs": "nixpkgs",
    }
    assert lock_text(lock) == (FIXTURE / "flake.lock").read_bytes()  # unchanged input, same bytes


def test_prune_lock_refuses_a_follows_through_a_dropped_input():
    lock = read_lock(FIXTURE / "flake.lock")
    lock["nodes"]["home-manager"]["inputs"]["nixpkgs"] = ["attic", "nixpkgs"]
    with pytest.raises(RunbookError, match="nix flake lock"):
        prune_lock(lock, ["attic"])


def test_read_lock_rejects_what_is_not_a_lock(tmp_path: Path):
    (tmp_path / "flake.lock").write_text("[]")
    with pytest.raises(InputError, match=re.escape("flake.lock: not a flake lock file")):
        read_lock(tmp_path / "flake.lock")


URL = "http://nixos-utm-cache.local:8080/main"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            '{ nix.settings.substituters = [ "x" ]; }',
            '{ nix.settings.substituters = [ "U" "x" ]; }',
        ),
        (
            "{ nix.settings = { sandbox = true; }; }",
            '{ nix.settings = { sandbox = true; substituters = [ "U" ]; }; }',
        ),
        (
            "{ nix = { gc.automatic = true; }; }",
            '{ nix = { gc.automatic = true; settings.substituters = [ "U" ]; }; }',
        ),
        (
            "{ pkgs, ... }: {\n  a = 1;\n}",
            '{ pkgs, ... }: {\n  a = 1;\n  nix.settings.substituters = [ "U" ];\n}',
        ),
    ],
)
def test_plan_list_item_adds_where_the_setting_lives(source, expected):
    nix = NixFile(source.encode())
    edit = plan_list_item(nix, ("nix", "settings", "substituters"), URL, first=True)
    assert edit is not None
    out = apply_edits(nix.source, [edit]).decode()
    assert out == expected.replace('"U"', f'"{URL}"')
    assert (
        plan_list_item(NixFile(out.encode()), ("nix", "settings", "substituters"), URL + "/")
        is None
    )


def test_plan_list_item_refuses_a_value_that_is_not_a_list():
    nix = NixFile(b"{ nix.settings.substituters = mine; }", "m.nix")
    with pytest.raises(
        InputError, match=re.escape("m.nix:1: nix.settings.substituters is not a list literal")
    ):
        plan_list_item(nix, ("nix", "settings", "substituters"), URL)


def test_an_edit_nix_refuses_writes_nothing(tmp_path: Path):
    # tree-sitter accepts a repeated attribute; Nix's parser does not.
    ok, bad = tmp_path / "ok.nix", tmp_path / "bad.nix"
    ok.write_text("{ a = 1; }")
    bad.write_text("{ a = 1; }")
    changes = [
        Change(ok, b"{ a = 1; }", b"{ a = 2; }"),
        Change(bad, b"{ a = 1; }", b"{ a = 1; a = 2; }"),
    ]
    need(
        shutil.which("nix-instantiate") is not None,
        "nix-instantiate (Debian nix-bin) not installed",
    )
    with pytest.raises(RunbookError, match=re.escape("bad.nix: Nix cannot parse the edited file")):
        write_changes(changes)
    assert ok.read_text() == "{ a = 1; }" and bad.read_text() == "{ a = 1; }"


def test_a_written_file_keeps_its_mode(tmp_path: Path):
    target = tmp_path / "m.nix"
    target.write_text("{ }")
    target.chmod(0o640)
    write_changes([Change(target, b"{ }", b"{ a = 1; }")])
    assert target.read_text() == "{ a = 1; }"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["m.nix"]  # no temporary file left


def test_a_directory_without_flake_nix_is_input_error(tmp_path: Path):
    with pytest.raises(InputError, match=re.escape("expected a flake.nix")):
        ConfigTree(tmp_path)


# -- systems: which files build a configuration, and what value an option gets ----------------


def test_flake_systems_dotted_nested_and_rec():
    flake = NixFile(
        b"{ outputs = { self, nixpkgs, ... }@inputs: let mk = import ./lib/mksystem.nix { };"
        b' in {\n  nixosConfigurations.a = mk "a" rec { system = "x"; user = "ann"; };\n'
        b'  nixosConfigurations = { b = mk "b" { user = "bob"; }; };\n'
        b'  darwinConfigurations.mac = mk "mac" { user = "ann"; darwin = true; };\n}; }'
    )
    systems = flake_systems(flake)
    assert {n: s.user for n, s in systems.items()} == {"a": "ann", "b": "bob"}
    assert set(flake_systems(flake, "darwinConfigurations")) == {"mac"}


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_system_view_follows_imports_the_way_mksystem_does(tmp_path: Path):
    root = write(tmp_path, {
        "flake.nix": "{ outputs = { self }: { }; }",
        "lib/mksystem.nix": "{ inputs }: name: { user }: { modules = [ ../modules/common.nix ]; }",
        "machines/vm.nix": "{ ... }: { imports = [ ./hw ../modules/gone.nix (x + \"/y.nix\") ]; }",
        "machines/hw/default.nix": "{ a = 1; }",
        "modules/common.nix": "{ b = 2; }",
        "users/ann/nixos.nix": "{ c = 3; }",
        "users/bob/nixos.nix": "{ d = 4; }",
    })  # fmt: skip
    view = system_view(ConfigTree(root), "vm", "ann")
    assert set(view.files) == {
        Path("lib/mksystem.nix"), Path("machines/vm.nix"), Path("machines/hw/default.nix"),
        Path("modules/common.nix"), Path("users/ann/nixos.nix"),
    }  # fmt: skip
    assert view.missing == [Path("modules/gone.nix")]


@pytest.mark.parametrize(
    ("defs", "expected"),
    [
        (["x = lib.mkDefault 1;", "x = 2;"], 2),
        (["x = lib.mkForce 1;", "x = 2;"], 1),
        (["x = lib.mkOverride 10 1;", "x = lib.mkForce 2;"], 1),
        (['x = [ "a" ];', 'x = [ "b" ];'], ["a", "b"]),
        (['x = [ "a" ];', 'x = lib.mkForce [ "b" ];'], ["b"]),
        (["x = 1;", "x = 2;"], Undecided("conflicting definitions at m0.nix:2, m1.nix:2")),
        (["x = lib.mkIf c 1;"], Undecided("defined under mkIf at m0.nix:2")),
        (["x = ./env;"], NixPath("./env")),
        (["x = pkgs.fish;"], Opaque("pkgs.fish")),
        (["y = 1;"], None),
    ],
)
def test_system_view_value_follows_module_priorities(tmp_path: Path, defs, expected):
    files = {f"m{i}.nix": f"{{ lib, ... }}: {{\n  {d}\n}}" for i, d in enumerate(defs)}
    root = write(tmp_path, {"flake.nix": "{ }", **files})
    view = modules_view(ConfigTree(root), "t", [Path(f) for f in files], None)
    assert view.value(("x",)) == expected


# -- package lists and settings (issue 10: the attic client, mDNS on the workers) ------------


def _edit(source: str, *planners) -> str:
    from runbook.nix.nixcfg import edit_sequentially
    from runbook.nix.nixfile import NixFile

    return edit_sequentially(NixFile(source.encode(), "m.nix"), list(planners)).decode()


def test_plan_package_adds_a_binding_or_extends_the_files_list() -> None:
    from runbook.nix.nixcfg import plan_package

    assert _edit("{ pkgs, ... }:\n{\n  a = 1;\n}\n", plan_package) == (
        "{ pkgs, ... }:\n{\n  a = 1;\n  environment.systemPackages = [ pkgs.attic-client ];\n}\n"
    )
    listed = "{ pkgs, lib, ... }: {\n  environment.systemPackages = [ pkgs.git ] ++ lib.optionals false [ pkgs.x ];\n}\n"
    assert "[ pkgs.git pkgs.attic-client ] ++" in _edit(listed, plan_package)
    present = "{ pkgs, ... }: { environment.systemPackages = with pkgs; [ attic-client ]; }\n"
    assert _edit(present, plan_package) == present
    with pytest.raises(InputError, match="`pkgs` is not an argument"):
        _edit("{ config, ... }: { a = 1; }\n", plan_package)
    with pytest.raises(InputError, match="not a list literal"):
        _edit("{ pkgs, mine, ... }: { environment.systemPackages = mine; }\n", plan_package)


def test_plan_setting_sets_replaces_or_refuses() -> None:
    from runbook.nix.nixcfg import AVAHI_ENABLE, AVAHI_NSS, plan_setting

    def enable(nix):
        return plan_setting(nix, AVAHI_ENABLE, "true")

    def nss(nix):
        return plan_setting(nix, AVAHI_NSS, "true")

    assert _edit("{ x = 1; }\n", enable, nss) == (
        "{ x = 1; services.avahi.enable = true; services.avahi.nssmdns4 = true; }\n"
    )
    assert _edit("{\n  services.avahi.enable = false;\n}\n", enable) == (
        "{\n  services.avahi.enable = true;\n}\n"
    )
    with pytest.raises(InputError, match="set it to true by hand"):
        _edit("{ lib, ... }: { services.avahi.enable = lib.mkForce false; }\n", enable)
