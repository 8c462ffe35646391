"""runbook.core.params: the shipped params validate; every mistake is one line naming file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runbook.core.errors import InputError
from runbook.core.params import check_paths, load, parse, require_paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["cache.yaml", "worker.yaml"])
def test_shipped_params_follow_the_handbook(name: str) -> None:
    dep = load(ROOT / "params" / name).deployment
    assert dep.cache.url == "http://nixos-utm-cache.local:8080/main"
    assert dep.user == "jqwang"
    assert dep.cache_vm.name == "vm-aarch64-utm-cache"
    assert not str(dep.nixos_config).startswith("~")  # ~ expanded
    host = dep.host(dep.cache_vm, installed=False)
    assert (host.user, host.identity) == ("root", None)  # lesson 7: live ISO is root+password
    assert dep.host(dep.cache_vm).user == "jqwang"


def _base() -> dict[str, object]:
    return yaml.safe_load((ROOT / "params" / "cache.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.pop("cache"), "key cache: required key is missing"),
        (lambda d: d.update(colour="blue"), "key colour: unknown key"),
        (lambda d: d["vms"][0].update(role="cahce"), "key vms[0].role: Input should be"),
        (lambda d: d["vms"][0].update(address="not a host!"), "key vms[0].address: expected an IP"),
        (lambda d: d["cache"].update(port=70000), "key cache.port: Input should be less"),
        (lambda d: d["cache"].update(port="http"), "key cache.port:"),
        (lambda d: d["vms"][0].update(mac="zz"), "key vms[0].mac:"),
        (lambda d: d["cache"].update(vm="nope"), "key cache.vm: 'nope' is not one of the vms"),
        (lambda d: d.update(vms=[]), "key vms:"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path: Path, edit, expected: str) -> None:
    data = _base()
    edit(data)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as info:
        load(f)
    msg = str(info.value)
    assert msg.startswith(f"{f}: ") and expected in msg and "\n" not in msg
    assert info.value.exit_code == 2


def test_yaml_syntax_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"x.yaml: not valid YAML at line \d"):
        parse("a: 1\nb: [\n", "x.yaml")
    with pytest.raises(InputError, match="no such params file"):
        load(tmp_path / "absent.yaml")
    with pytest.raises(InputError, match="expected a mapping"):
        parse("- 1\n", "x.yaml")


def test_paths_are_checked_for_deploy_only(tmp_path: Path) -> None:
    dep = load(ROOT / "params" / "cache.yaml").deployment
    dep = dep.model_copy(update={"nixos_config": tmp_path / "nope", "identity": tmp_path / "k"})
    problems = [c for c in check_paths(dep) if c.problem]
    assert {c.key for c in problems} == {"nixos_config", "identity"}
    with pytest.raises(InputError, match=r"key nixos_config: .*flake.nix"):
        require_paths(dep, Path("params/cache.yaml"))


def test_cli_bad_params_exit_2_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("deployment: x\n")
    r = subprocess.run(
        [sys.executable, "-m", "runbook", "doctor", str(f)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and str(f) in r.stderr
