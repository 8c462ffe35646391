"""runbook.core.params: the shipped params validate; every mistake is one line naming file and key."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "params" / "cache.yaml").read_text())
    return data


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
def test_bad_params_name_file_and_key(
    tmp_path: Path, edit: Callable[[dict[str, Any]], object], expected: str
) -> None:
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


# -- issue 13 item 6: bad input that got through --------------------------------------------


def _tree(tmp_path: Path) -> Path:
    """A params file next to a nixos-config checkout (relative paths), and a file outside."""
    config = tmp_path / "nixos-config"
    (config / "machines").mkdir(parents=True)
    (config / "flake.nix").write_text("{ }\n")
    (config / "machines" / "vm-shared.nix").write_text("{ }\n")
    (tmp_path / "outside.nix").write_text("{ }\n")
    (tmp_path / "id").write_text("k\n")
    return config


def _params(tmp_path: Path, **over: str) -> Path:
    lines = {
        "deployment": "t",
        "nixos_config": "nixos-config",
        "identity": "id",
        "worker_config": "machines/vm-shared.nix",
    }
    lines.update(over)
    f = tmp_path / "p.yaml"
    f.write_text(
        "".join(f"{k}: {v}\n" for k, v in lines.items())
        + "vms:\n  - {name: vm-c, role: cache, address: 10.0.0.5}\n"
        + "cache: {vm: vm-c, host: 10.0.0.5}\n"
    )
    return f


@pytest.mark.parametrize(
    "value",
    ["/etc/nixos/configuration.nix", "../outside.nix", "machines/../../outside.nix", "~/x.nix"],
)
def test_worker_config_stays_inside_the_checkout(tmp_path: Path, value: str) -> None:
    """Before: an absolute or ../ worker_config was accepted and 07 rewrote that file."""
    _tree(tmp_path)
    with pytest.raises(InputError, match=r"key worker_config: expected a (path|plain)"):
        load(_params(tmp_path, worker_config=value))


def test_worker_config_symlink_out_of_the_checkout_is_refused(tmp_path: Path) -> None:
    config = _tree(tmp_path)
    (config / "machines" / "link.nix").symlink_to(tmp_path / "outside.nix")
    (config / "inner.nix").symlink_to(config / "machines" / "vm-shared.nix")
    with pytest.raises(InputError, match=r"key worker_config: machines/link.nix resolves outside"):
        load(_params(tmp_path, worker_config="machines/link.nix"))
    # a symlink that stays inside is the checkout's own business
    assert load(_params(tmp_path, worker_config="inner.nix")).deployment.worker_config


def test_relative_paths_are_the_params_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notebooks run in the params file's directory; the CLI now reads relative paths
    from there too (before: from wherever the CLI was started)."""
    _tree(tmp_path)
    monkeypatch.chdir("/")
    dep = load(_params(tmp_path)).deployment
    assert dep.nixos_config == tmp_path / "nixos-config" and dep.identity == tmp_path / "id"


@pytest.mark.parametrize("host", ["::1", "2001:db8::10", "fe80::1%en0", "::ffff:10.0.0.1"])
def test_ipv6_is_refused_not_rendered_unbracketed(host: str) -> None:
    """Before: cache.url was http://::1:8080/main."""
    data = _base()
    data["cache"]["host"] = host
    with pytest.raises(InputError, match=r"key cache.host: IPv6 addresses are not supported"):
        parse(yaml.safe_dump(data), "x.yaml")


def test_duplicate_keys_are_refused_naming_key_and_line() -> None:
    text = (ROOT / "params" / "cache.yaml").read_text() + "cache:\n  vm: x\n  host: y\n"
    first = text.splitlines().index("cache:") + 1
    with pytest.raises(InputError) as info:
        parse(text, "x.yaml")
    assert f"duplicate key 'cache' (first at line {first})" in str(info.value)
    assert f"at line {len(text.splitlines()) - 2}" in str(info.value)


def test_duplicate_keys_through_a_merge_are_yaml_overrides() -> None:
    """`<<: *defaults` then a key of one's own is an override, not a duplicate."""
    text = (
        (ROOT / "params" / "cache.yaml")
        .read_text()
        .replace(
            "  - name: vm-aarch64-utm-cache\n",
            "  - <<: {port: 2222, name: other}\n    name: vm-aarch64-utm-cache\n",
        )
    )
    vm = parse(text, "x.yaml").vms[0]
    assert (vm.port, vm.name) == (2222, "vm-aarch64-utm-cache")


def test_deep_nesting_and_alias_bombs_are_exit_2() -> None:
    """Before: 20,000 nested brackets were `internal error: RecursionError`, exit 1."""
    base = (ROOT / "params" / "cache.yaml").read_text()
    with pytest.raises(InputError, match="nested more than 32 levels"):
        parse(base + "x: " + "[" * 20000 + "]" * 20000 + "\n", "x.yaml")
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 10) + "]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    with pytest.raises(InputError, match="more than 10,000 values once its aliases"):
        parse(base + bomb, "x.yaml")


def test_long_values_are_cut_and_control_characters_escaped() -> None:
    """Before: a 5 MB value was echoed whole, and a NUL made a two-line error."""
    base = (ROOT / "params" / "cache.yaml").read_text()
    with pytest.raises(InputError) as info:
        parse(base.replace("deployment: cache", "deployment: " + "x" * 3000), "x.yaml")
    msg = str(info.value)
    assert len(msg) < 200 and "… (3,000 characters)" in msg
    with pytest.raises(InputError) as info:
        parse(base.replace("deployment: cache", 'deployment: "ca\\0c\\nhe"'), "x.yaml")
    msg = str(info.value)
    assert "\n" not in msg and "\x00" not in msg and "U+0000" in msg and "\\x00" in msg


@pytest.mark.parametrize(
    ("user", "ok"),
    [
        ("jqwang", True),
        ("jq.wang", True),
        ("_svc", True),
        ("Admin", True),
        ("a" * 32, True),
        ("a" * 33, False),
        ("1000", False),
        ("-oProxyCommand=x", False),
        ("jq wang", False),
        ("$(touch x)", False),
        ("`id`", False),
        ("root;id", False),
        ("..", False),
    ],
)
def test_user_names_follow_useradd(user: str, ok: bool) -> None:
    """shadow's lib/chkname.c rule (see params._user_name) for user and bootstrap.user.
    Before: bootstrap.user took anything, `$(…)` included."""
    for key in ("user", "bootstrap"):
        data = _base()
        if key == "user":
            data["user"] = user
        else:
            data["bootstrap"]["user"] = user
        if ok:
            parse(yaml.safe_dump(data), "x.yaml")
        else:
            with pytest.raises(InputError, match="expected a user name as useradd accepts"):
                parse(yaml.safe_dump(data), "x.yaml")


def test_ports_are_integers_not_booleans() -> None:
    data = _base()
    data["cache"]["port"] = True
    with pytest.raises(InputError, match=r"key cache\.port: Input should be a valid integer"):
        parse(yaml.safe_dump(data), "x.yaml")


def test_cli_error_is_one_line_whatever_the_path(tmp_path: Path) -> None:
    """The CLI renders an error as one escaped line of at most 300 characters (before: a
    path with a newline printed two lines)."""
    from runbook import cli

    bad = tmp_path / ("a\nb" + "c" * 400 + ".yaml")
    r = subprocess.run(
        [sys.executable, "-c", "from runbook.cli import main; main()", "doctor", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "a\\nb" in r.stderr and len(r.stderr) <= 301
    assert cli  # imported in-process too: the module is the one under test


def test_argument_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's own errors go through the same rendering (before: an argument holding a
    newline was echoed as two lines)."""
    from runbook import cli

    with pytest.raises(SystemExit) as info:
        cli.execute(["plan", "p.yaml", "extra\nline"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "extra\\nline" in err
