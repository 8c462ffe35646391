"""The lab without namespaces: params, the nixos-config evaluation, rendered files, units."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runbook.core.errors import InputError
from runbook.lab import activate, config, nixconfig, services, system
from runbook.lab.standins import nixos_rebuild
from tests.conftest import need

LAB_CONFIG = Path(__file__).resolve().parents[1] / "runbook" / "lab" / "nixos-config"


def test_params_lab_yaml_loads() -> None:
    params = config.load()
    assert [h.name for h in params.hosts] == [
        "nixos-utm-cache",
        "nixos-utm-worker1",
        "nixos-utm-worker2",
    ]
    assert [params.address(i) for i in range(3)] == ["10.231.0.11", "10.231.0.12", "10.231.0.13"]
    assert params.gateway == "10.231.0.1"
    assert params.identity_path == Path("/var/lib/runbook-lab/id_ed25519")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"hosts": []}, "lab.hosts"),
        ({"hosts": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"hosts": [{"name": "a", "phase": "booted"}]}, "lab.hosts.0.phase"),
        ({"bridge": "a-very-long-bridge", "hosts": [{"name": "a"}]}, "lab.bridge"),
        ({"hosts": [{"name": "a"}], "colour": "red"}, "lab.colour"),
    ],
)
def test_bad_params_name_the_key(data: dict[str, object], expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        config.from_mapping(data, "lab/lab.yaml")


def _system(name: str, root: Path = LAB_CONFIG) -> system.SystemConfig:
    files = nixos_rebuild.system_files(root, name)
    return activate.system_config(activate.evaluate_files(files), "installed", "fallback")


def test_lab_config_cache_vm_evaluates_like_vm_shared() -> None:
    cfg = _system("vm-aarch64-utm-cache")
    assert cfg.hostname == "nixos-utm-cache"  # plain definition beats vm-shared's mkDefault
    assert cfg.permit_root_login == "no" and cfg.password_authentication is True
    assert cfg.services == {"nix-daemon": "", "sshd": "", "atticd": "/var/lib/atticd/env"}
    assert cfg.wheel_needs_password is False
    (user,) = cfg.users
    assert (user.name, user.shell, user.groups) == ("jqwang", "/usr/bin/fish", ("wheel",))
    assert user.hashed_password and user.hashed_password.startswith("$6$")
    assert user.authorized_keys == ()  # the template's key file holds only a comment
    assert cfg.substituters == ("https://cache.nixos.org",)


def test_lab_config_worker_has_no_atticd_and_default_hostname() -> None:
    cfg = _system("vm-aarch64-utm")
    assert cfg.hostname == "dev" and "atticd" not in cfg.services


def test_unknown_configuration_name_fails_like_nix() -> None:
    with pytest.raises(InputError, match=r'does not provide attribute.*"vm-nope"'):
        _system("vm-nope")


def _module(tmp_path: Path, body: str) -> nixconfig.Evaluated:
    path = tmp_path / "m.nix"
    path.write_text("{ lib, pkgs, ... }:\n{\n" + body + "\n}\n")
    return activate.evaluate_files([path])


def test_priorities_and_list_merging(tmp_path: Path) -> None:
    ev = _module(
        tmp_path,
        """
      networking.hostName = lib.mkDefault "a";
      networking = { hostName = lib.mkForce "b"; };
      nix.settings.substituters = [ "x" ];
      nix.settings = { substituters = [ "y" ]; };
    """,
    )
    assert ev.get("networking", "hostName") == "b"
    assert ev.strings("nix", "settings", "substituters") == ["x", "y"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('networking.hostName = "a"; networking = { hostName = "b"; };', "conflicting definition"),
        ('nix.settings.substituters = lib.optional true "x";', "cannot evaluate"),
        ("services.atticd.enable = lib.mkIf true true;", "mkIf"),
        ("users.users.jqwang.shell = pkgs.zsh;", "cannot evaluate"),
    ],
)
def test_forms_the_lab_cannot_apply_are_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        activate.system_config(_module(tmp_path, body), "installed", "x")


def test_a_file_that_does_not_parse_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"m.nix:\d+:\d+"):
        _module(tmp_path, "networking.hostName = ;")


def test_stand_ins_refuse_to_run_outside_a_lab_host(capsys: pytest.CaptureFixture[str]) -> None:
    if Path("/run/runbook-lab/env").exists():
        pytest.skip("running inside a lab host")
    assert nixos_rebuild.main(["switch", "--flake", f"{LAB_CONFIG}#vm-aarch64-utm"]) == 1
    assert "only inside a runbook lab host" in capsys.readouterr().err


def test_rendered_files(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "chowns the user's home like an activation")
    cfg = _system("vm-aarch64-utm-cache")
    system.apply(tmp_path, cfg)
    shadow = (tmp_path / "etc/shadow").read_text().splitlines()
    assert all(line.count(":") == 8 for line in shadow)  # shadow(5): nine fields
    assert shadow[0] == "root:!:::::::"
    assert any(line.startswith("jqwang:$6$") for line in shadow)
    assert "jqwang:x:1000:100::/home/jqwang:/usr/bin/fish" in (tmp_path / "etc/passwd").read_text()
    assert "wheel" in (tmp_path / "etc/group").read_text()
    sudoers = (tmp_path / "etc/sudoers.d/runbook-lab").read_text()
    assert "%wheel ALL=(ALL:ALL) NOPASSWD: ALL" in sudoers
    sshd = (tmp_path / "etc/ssh/sshd_config").read_text()
    assert "PermitRootLogin no\n" in sshd and "PasswordAuthentication yes\n" in sshd
    assert system.enabled_services(tmp_path) == {
        "nix-daemon": "",
        "sshd": "",
        "atticd": "/var/lib/atticd/env",
    }
    assert system.read_phase(tmp_path) == "installed"


def test_units_and_environment_files(tmp_path: Path) -> None:
    assert services.load_unit("ssh.service").name == "sshd"
    assert services.load_unit("atticd").ready_tcp_port == 8080
    with pytest.raises(services.UnitNotFoundError):
        services.load_unit("nosuch")
    env = tmp_path / "env"
    env.write_text("# comment\nA=1\nB = 'two words'\n\nC=\"x=y\"\n")
    assert services.read_env_file(env) == {"A": "1", "B": "two words", "C": "x=y"}
