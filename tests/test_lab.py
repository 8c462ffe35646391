"""The lab, for real: namespaces, sshd, fish, sudo, nix, the stand-ins and the handbook's Makefile.

One lab (3 hosts: cache and worker1 installed, worker2 on the live ISO) serves the whole
module; it has its own state dir, subnet and bridge, so it never touches `lab/lab.yaml`'s
lab. The handbook-path test (bootstrap0 -> bootstrap on the live host) runs last.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_rig import need_lab

STATE = Path("/var/lib/runbook-lab-test")
PARAMS: dict[str, Any] = {
    "state_dir": str(STATE),
    "subnet": "10.231.7.0/24",
    "bridge": "rblabt",
    "passwords": {"root": "root", "jqwang": "jqwang-lab"},
    "hosts": [
        {"name": "rbt-cache", "nixname": "vm-aarch64-utm-cache", "phase": "installed"},
        {"name": "rbt-worker1", "nixname": "vm-aarch64-utm", "phase": "installed"},
        {"name": "rbt-worker2", "nixname": "vm-aarch64-utm", "phase": "live"},
    ],
}
CACHE, WORKER1, LIVE = "10.231.7.11", "10.231.7.12", "10.231.7.13"
NEW_LIVE = "10.231.7.16"  # the installed worker2's lease: the next free after the 3 first ones
REPO = Path(__file__).resolve().parents[1]


def _requirements() -> None:
    need_lab()


@pytest.fixture(scope="session")
def lab() -> Iterator[list[Any]]:
    _requirements()
    from runbook import lab as lab_api

    hosts = lab_api.up(PARAMS)
    yield hosts
    lab_api.down(PARAMS)


def ssh(
    user: str,
    addr: str,
    command: str | None = None,
    *,
    stdin: str | None = None,
    password: str | None = None,
    timeout: float = 30,
    known_hosts: str = str(STATE / "known_hosts"),
) -> subprocess.CompletedProcess[str]:
    """The real OpenSSH client; a password goes through the lab's SSH_ASKPASS."""
    opts = [
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=ERROR",
    ]
    env = dict(os.environ)
    if password is None:
        opts += [
            "-i",
            str(STATE / "id_ed25519"),
            "-o",
            "BatchMode=yes",
            "-o",
            "PasswordAuthentication=no",
        ]
    else:
        from runbook.lab import askpass_env

        env.update(askpass_env(user, PARAMS))
        opts += ["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"]
    argv = ["ssh", *opts, f"{user}@{addr}", *([command] if command is not None else [])]
    return subprocess.run(
        argv,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )  # no tty: askpass is used


def sudo_bash(addr: str, script: str) -> subprocess.CompletedProcess[str]:
    """The runbook's way in (lesson 5): bash on stdin under sudo, fish never parses it."""
    return ssh("jqwang", addr, "sudo bash -s", stdin=script)


def in_host(name: str, script: str) -> str:
    from runbook.lab import exec_in

    result = exec_in(name, ["bash", "-c", script])
    assert result.exit_code == 0, result.stderr
    return str(result.stdout)


# -- lifecycle and status ---------------------------------------------------------------------


def test_status_json_lists_every_host(lab: list[Any]) -> None:
    from runbook.cli import execute

    params_file = STATE / "params-test.yaml"
    import yaml

    params_file.write_text(yaml.safe_dump({"lab": PARAMS}))
    out = io.StringIO()
    with redirect_stdout(out):
        assert execute(["lab", "status", "--json", "--params", str(params_file)]) == 0
    rows = json.loads(out.getvalue())
    assert [r["name"] for r in rows] == ["rbt-cache", "rbt-worker1", "rbt-worker2"]
    assert set(rows[0]) == {"name", "address", "port", "user", "identity", "known_hosts", "phase"}
    assert [(r["address"], r["phase"], r["user"]) for r in rows] == [
        (CACHE, "installed", "jqwang"),
        (WORKER1, "installed", "jqwang"),
        (LIVE, "live", "root"),
    ]
    key = Path(rows[0]["identity"])
    assert key.stat().st_mode & 0o777 == 0o600
    assert Path(rows[0]["known_hosts"]).read_text().count("ssh-ed25519") == 3


def test_up_again_is_idempotent(lab: list[Any]) -> None:
    from runbook import lab as lab_api

    before = {n: _init(n) for n in ("rbt-cache", "rbt-worker1")}
    started = time.monotonic()
    lab_api.up(PARAMS)
    assert time.monotonic() - started < 2
    assert before == {n: _init(n) for n in ("rbt-cache", "rbt-worker1")}


def _init(name: str) -> int | None:
    from runbook.lab.host import init_pid

    return init_pid(name)


def test_up_without_root_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runbook.cli import execute

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert execute(["lab", "up"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs root" in err


# -- isolation ----------------------------------------------------------------------------------


def test_hosts_have_own_address_hostname_and_no_route_out(lab: list[Any]) -> None:
    out = in_host(
        "rbt-cache",
        "hostname; ip -4 -o addr show dev eth0; ip route; ip route get 192.0.2.1 2>&1 || true",
    )
    assert out.splitlines()[0] == "rbt-cache"
    assert f"inet {CACHE}/24" in out
    assert "default" not in out and "unreachable" in out
    # the lab LAN works: a worker reaches the cache's sshd
    probe = in_host("rbt-worker1", f"exec 3<>/dev/tcp/{CACHE}/22 && head -c 7 <&3")
    assert probe == "SSH-2.0"


def test_hosts_have_own_files_users_and_processes(lab: list[Any]) -> None:
    in_host(
        "rbt-cache",
        "echo secret > /var/lib/only-here; echo t > /tmp/only-here; echo r > /root/only-here",
    )
    for other in ("rbt-worker1",):
        out = in_host(other, "ls /var/lib/only-here /tmp/only-here /root/only-here 2>&1 || true")
        assert out.count("No such file") == 3
    assert not Path("/var/lib/only-here").exists() and not Path("/tmp/only-here").exists()
    # users: the live host has no jqwang, the installed ones do; the machine has neither change
    assert "jqwang" not in in_host("rbt-worker2", "getent passwd jqwang || true")
    assert in_host("rbt-worker1", "getent passwd jqwang").strip().endswith(":/usr/bin/fish")
    # processes: each host sees its own pid namespace only
    ps = in_host("rbt-cache", "ps -eo pid=,args=")
    assert ps.splitlines()[0].split()[0] == "1" and "hostinit rbt-cache" in ps
    assert "rbt-worker1" not in ps and ps.count("sshd -D") == 1


def test_store_path_on_one_host_is_absent_on_another(lab: list[Any]) -> None:
    path = in_host("rbt-cache", "echo lab-store-$RANDOM > /tmp/f && nix-store --add /tmp/f").strip()
    assert path.startswith("/nix/store/")
    assert in_host("rbt-cache", f"test -e {path} && echo yes").strip() == "yes"
    assert in_host("rbt-worker1", f"test -e {path} && echo yes || echo no").strip() == "no"
    assert not Path(path).exists()
    assert sudo_bash(CACHE, f"nix path-info {path}").returncode == 0
    assert sudo_bash(WORKER1, f"nix path-info {path}").returncode != 0


# -- SSH: fish, sudo, phases --------------------------------------------------------------------


def test_fish_is_the_login_shell_over_ssh(lab: list[Any]) -> None:
    raw = ssh("jqwang", WORKER1, "if [ 1 = 1 ]; then echo x; fi")
    assert raw.stdout == ""  # fish 3.6 rejects it (and still exits 0)
    assert "fish: Missing end to balance this if statement" in raw.stderr
    ok = sudo_bash(WORKER1, "if [ 1 = 1 ]; then echo ok; fi; id -un; echo $0")
    assert ok.returncode == 0 and ok.stdout.split() == ["ok", "root", "bash"]
    assert ssh("jqwang", WORKER1, "echo $SHELL").stdout.strip() == "/usr/bin/fish"


def test_root_login_in_live_phase_and_refused_when_installed(lab: list[Any]) -> None:
    live = ssh("root", LIVE, "id -un; hostname", password="root")
    assert live.returncode == 0, live.stderr
    assert live.stdout.split() == ["root", "rbt-worker2"]
    refused = ssh("root", WORKER1, "true", password="root")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    assert ssh("jqwang", LIVE, "true").returncode == 255  # no user on the live ISO


def test_systemctl_stand_in(lab: list[Any]) -> None:
    r = sudo_bash(
        WORKER1,
        "systemctl is-active sshd; echo $?; systemctl is-active atticd; "
        "echo $?; systemctl status nosuch >/dev/null 2>&1; echo $?; "
        "systemctl start nosuch; echo $?; systemctl restart sshd; echo $?; "
        "systemctl is-active sshd.service",
    )
    assert r.stdout.split() == ["active", "0", "inactive", "3", "4", "5", "0", "active"]
    assert "Unit nosuch.service not found." in r.stderr
    # found by fish too, without sudo
    assert ssh("jqwang", WORKER1, "systemctl is-active sshd").stdout.strip() == "active"


def test_runbook_exec_reaches_every_host(lab: list[Any]) -> None:
    # in a child process: `--password-env` registers the value ("root", the handbook's live
    # ISO password) for masking process-wide, which would mask "root" in later tests' output
    env = {**os.environ, "RUNBOOK_LAB_TEST_ROOT_PW": "root", "PYTHONPATH": str(REPO)}
    for host in lab:
        argv = [
            "exec",
            f"ssh://{host.user}@{host.address}",
            "--known-hosts",
            host.known_hosts,
            *(
                ["--identity", host.identity]
                if host.phase == "installed"
                else ["--password-env", "RUNBOOK_LAB_TEST_ROOT_PW"]
            ),
            "--",
            "if true; then echo ok; fi",
        ]
        r = subprocess.run(
            [sys.executable, "-c", "import sys; from runbook.cli import main; main()", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (r.returncode, r.stdout.strip()) == (0, "ok"), (argv, r.stderr)


def test_switch_refuses_a_file_that_does_not_parse(lab: list[Any]) -> None:
    copy = STATE / "broken-config"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(STATE / "nixos-config", copy)
    shared = copy / "machines" / "vm-shared.nix"
    shared.write_text(
        shared.read_text().replace("networking.useDHCP = false;", "networking.useDHCP = false")
    )
    _rsync(copy, WORKER1)
    before = in_host("rbt-worker1", "cat /etc/nix/nix.conf")
    r = sudo_bash(WORKER1, "nixos-rebuild switch --flake /nix-config#vm-aarch64-utm")
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and "vm-shared.nix" in r.stderr
    assert in_host("rbt-worker1", "cat /etc/nix/nix.conf") == before
    # an unknown form in an applied option is an error, not a skip
    shared.write_text(
        shared.read_text()
        .replace("networking.useDHCP = false\n", "networking.useDHCP = false;\n")
        .replace(
            'substituters = [ "https://cache.nixos.org" ];',
            'substituters = lib.optional true "https://cache.nixos.org";',
        )
    )
    _rsync(copy, WORKER1)
    r = sudo_bash(WORKER1, "nixos-rebuild switch --flake /nix-config#vm-aarch64-utm")
    assert r.returncode == 1 and "cannot evaluate" in r.stderr


def _rsync(src: Path, addr: str) -> None:
    ssh_cmd = (
        f"ssh -i {STATE}/id_ed25519 -o UserKnownHostsFile={STATE}/known_hosts -o BatchMode=yes"
    )
    subprocess.run(
        [
            "rsync",
            "-a",
            "--delete",
            "-e",
            ssh_cmd,
            "--rsync-path",
            "sudo rsync",
            f"{src}/",
            f"jqwang@{addr}:/nix-config",
        ],
        check=True,
        capture_output=True,
    )


def test_switch_applies_substituters_hostname_and_atticd(lab: list[Any]) -> None:
    copy = STATE / "cache-config"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(STATE / "nixos-config", copy)
    shared = copy / "machines" / "vm-shared.nix"
    shared.write_text(
        shared.read_text().replace(
            'substituters = [ "https://cache.nixos.org" ];',
            'substituters = [ "http://nixos-utm-cache.local:8080/main" "https://cache.nixos.org" ];',
        )
    )
    _rsync(copy, CACHE)
    r = sudo_bash(
        CACHE,
        "nixos-rebuild switch --flake '/nix-config#vm-aarch64-utm-cache'; "
        "echo rc=$?; hostname; grep substituters /etc/nix/nix.conf; "
        "systemctl is-active atticd",
    )
    # no /var/lib/atticd/env yet: atticd fails, and switch-to-configuration says so with 4
    assert "rc=4" in r.stdout and "atticd.service" in r.stderr
    lines = r.stdout.split("\n")
    assert lines[1] == "nixos-utm-cache"
    assert lines[2] == (
        "substituters = http://nixos-utm-cache.local:8080/main https://cache.nixos.org"
    )
    assert lines[3] == "failed"


# -- the handbook's path on the live host: bootstrap0, then bootstrap -------------------------


def _make(target: str, user: str, addr: str, name: str) -> subprocess.CompletedProcess[str]:
    from runbook.lab import askpass_env

    # NIXUSER from the environment: on make's command line it would override the
    # `NIXUSER=root $(MAKE) vm/copy` inside vm/bootstrap
    env = {
        **os.environ,
        **askpass_env(None, PARAMS),
        "NIXADDR": addr,
        "NIXUSER": user,
        "NIXNAME": name,
    }
    return subprocess.run(
        ["make", "-s", "-C", str(STATE / "nixos-config"), target],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )


def _host_key(addr: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["ssh-keyscan", "-T", "2", "-t", "ed25519", addr],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.stdout.strip():
            return r.stdout.split()[-1]
        time.sleep(0.05)
    raise AssertionError(f"{addr}: no host key")


def test_zz_handbook_bootstrap_moves_live_host_to_installed(lab: list[Any]) -> None:
    from runbook import lab as lab_api

    key_live = _host_key(LIVE)
    _make("vm/bootstrap0", "root", LIVE, "vm-aarch64-utm")  # ends in reboot: the session drops
    # the reinstalled system is a new DHCP client: it comes back at another lease (lesson 8)
    moved = NEW_LIVE
    deadline = time.monotonic() + 20
    while {h.name: h.address for h in lab_api.status(PARAMS)}["rbt-worker2"] != moved:
        assert time.monotonic() < deadline, "worker2 did not move to its new lease"
        time.sleep(0.2)
    key_installed = _host_key(moved)
    assert key_installed != key_live  # a reinstall gives new host keys
    old = subprocess.run(
        ["ssh-keyscan", "-T", "2", "-t", "ed25519", LIVE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert not old.stdout.strip()  # nothing answers at the live ISO's lease any more
    fresh = ssh("root", moved, "true", password="root", known_hosts="/dev/null")
    assert fresh.returncode == 0, fresh.stderr  # bootstrap0's config: PermitRootLogin yes
    boot = _make("vm/bootstrap", "jqwang", moved, "vm-aarch64-utm")
    assert "activating the configuration" in boot.stderr, boot.stderr
    _host_key(moved)  # back after the final `sudo reboot`
    refused = ssh("root", moved, "true", password="root", known_hosts="/dev/null")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    user = ssh(
        "jqwang",
        moved,
        "echo $SHELL; sudo -n id -un",
        password="jqwang-lab",
        known_hosts="/dev/null",
    )
    assert user.stdout.split() == ["/usr/bin/fish", "root"], user.stderr
    phases = {h.name: h.phase for h in lab_api.status(PARAMS)}
    assert phases["rbt-worker2"] == "installed"
