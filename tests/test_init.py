"""`runbook init`: the params file it writes from a nixos-config checkout, ~/.ssh and UTM.

Against the fixtures (tests/fixtures/nixos-config/clean, realrepo*, the lab's nixos-config):
the VM names and roles, the user, the key chosen (and none authorized), stable valid MACs, no
overwrite without --force, the prompts on a real pty, and a file that loads with
runbook.core.params and passes the doctor's checks.
"""

from __future__ import annotations

import os
import plistlib
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from runbook.core import params
from runbook.doctor import DoctorContext, Status, run_context
from runbook.doctor.init_params import backend_for, stable_mac

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
CLEAN = FIXTURES / "nixos-config" / "clean"
LAB_CONFIG = ROOT / "runbook" / "lab" / "nixos-config"
FIXTURE_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA "
    "jqwang@fixture"
)
MAC_RE = re.compile(r"^([0-9A-F]{2}:){5}[0-9A-F]{2}$")


def write_key(path: Path, comment: str = "test") -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.with_name(path.name + ".pub").write_text(f"{public.decode()} {comment}\n")
    return path


def public_line(key: Path) -> str:
    return " ".join(key.with_name(key.name + ".pub").read_text().split()[:2])


def runbook(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, as a user runs it, with HOME = `home`, no terminal."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home)}
    code = "import sys; from runbook.cli import main; sys.argv[0] = 'runbook'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, env=env, check=False, timeout=120, cwd=cwd,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own: init looks in its .ssh, and `~` in the file expands to it."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(h))
    return h


@pytest.fixture
def key(home: Path) -> Path:
    return write_key(home / ".ssh" / "id_ed25519")


@pytest.fixture
def clean(tmp_path: Path, key: Path) -> Path:
    """The clean fixture, its user authorizing `key` instead of the fixture's placeholder."""
    target = tmp_path / "nixos-config"
    shutil.copytree(CLEAN, target)
    user_file = target / "users" / "jqwang" / "nixos.nix"
    user_file.write_text(user_file.read_text().replace(FIXTURE_KEY, public_line(key)))
    return target


@pytest.fixture
def lab_config(tmp_path: Path, key: Path) -> Path:
    """The lab's nixos-config with `key` authorized (as `runbook lab up` authorizes its key)."""
    target = tmp_path / "lab-nixos-config"
    shutil.copytree(LAB_CONFIG, target)
    user_file = target / "users" / "jqwang" / "nixos.nix"
    text = user_file.read_text()
    assert "openssh.authorizedKeys.keys = [ ];" in text
    user_file.write_text(
        text.replace(
            "openssh.authorizedKeys.keys = [ ];",
            f'openssh.authorizedKeys.keys = [ "{public_line(key)}" ];',
        )
    )
    return target


def init(config: Path, tmp_path: Path, home: Path, *extra: str) -> tuple[Path, str]:
    out = tmp_path / "runbook.yaml"
    result = runbook("init", str(config), "--out", str(out), *extra, cwd=tmp_path, home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


def loaded(out: Path) -> params.Deployment:
    return params.load(out).deployment


# -- what it finds -------------------------------------------------------------------------------


def test_names_roles_user_and_key_from_the_clean_fixture(clean, tmp_path, home, key):
    out, said = init(clean, tmp_path, home)
    dep = loaded(out)
    assert [(v.name, v.role.value) for v in dep.vms] == [
        ("vm-aarch64-utm-cache", "cache"),
        ("vm-aarch64-utm", "worker"),
    ]
    assert dep.cache.vm == "vm-aarch64-utm-cache"
    assert dep.cache.host == "nixos-utm-cache.local"  # its networking.hostName, over mDNS
    assert dep.user == "jqwang"
    assert dep.identity == key
    assert dep.nixos_config == clean.resolve()
    assert dep.utm.iso == "auto" and dep.utm.iso_release == "26.05"  # flake.nix pins 26.05
    text = out.read_text()
    assert 'mkSystem names user = "jqwang" (flake.nix:' in text
    assert "id_ed25519.pub is authorized at users/jqwang/nixos.nix:" in text
    assert "identity: ~/.ssh/id_ed25519" in text  # under HOME, written as the user would
    assert "wrote" in said and "no failing check" in said


def test_the_lab_config_gives_the_cache_and_four_workers(lab_config, tmp_path, home):
    out, _ = init(lab_config, tmp_path, home)
    dep = loaded(out)
    assert dep.cache_vm.name == "vm-aarch64-utm-cache"
    assert [v.name for v in dep.workers] == [
        "vm-aarch64-utm", "vm-aarch64-utm-2", "vm-aarch64-utm-3", "vm-aarch64-utm-4",
    ]  # fmt: skip
    # the workers share vm-shared.nix's mkDefault "dev": the file says each is found by MAC
    assert "4 VMs share it: each is found by its MAC" in out.read_text()


def test_workers_addresses_and_any_key_can_be_given(lab_config, tmp_path, home):
    out, _ = init(
        lab_config, tmp_path, home,
        "--workers", "vm-aarch64-utm",
        "--address", "vm-aarch64-utm-cache=10.231.32.11",
        "--address", "vm-aarch64-utm=10.231.32.12",
        "--set", "utm.host_interface=rbinit0",
        "--set", "console.serial_port=4700",
        "--set", "vms.vm-aarch64-utm.port=2222",
        "--deployment", "lab-init",
    )  # fmt: skip
    dep = loaded(out)
    assert [v.name for v in dep.vms] == ["vm-aarch64-utm-cache", "vm-aarch64-utm"]
    assert dep.cache.host == "10.231.32.11" and dep.vm("vm-aarch64-utm").address == "10.231.32.12"
    assert dep.vm("vm-aarch64-utm").port == 2222
    assert dep.utm.host_interface == "rbinit0" and dep.console.serial_port == 4700
    assert dep.deployment == "lab-init"
    assert "host_interface: rbinit0  # set with --set" in out.read_text()


def test_another_user_is_read_from_the_flake(tmp_path, home):
    config = tmp_path / "attic"
    shutil.copytree(FIXTURES / "realrepo-attic", config)
    key = write_key(home / ".ssh" / "id_mitchellh")
    user_file = config / "users" / "mitchellh" / "nixos.nix"
    text = user_file.read_text()
    first = re.search(r'"(ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+)[^"]*"', text)
    assert first is not None
    user_file.write_text(text.replace(first.group(1), public_line(key), 1))
    out, _ = init(config, tmp_path, home)
    dep = loaded(out)
    assert dep.user == "mitchellh" and dep.identity == key
    assert dep.utm.iso_release == "25.11"  # this flake pins nixos-25.11


def test_of_two_local_keys_the_authorized_one_is_chosen(clean, tmp_path, home, key):
    other = write_key(home / ".ssh" / "id_aaa_other")  # sorts first, not authorized
    out, _ = init(clean, tmp_path, home)
    assert loaded(out).identity == key != other


def test_no_authorized_key_is_an_error_naming_the_file_to_edit(tmp_path, home, key):
    result = runbook("init", str(LAB_CONFIG), cwd=tmp_path, home=home)  # authorizes [ ]
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"{LAB_CONFIG}/users/jqwang/nixos.nix" in line
    assert "no local SSH key is authorized for jqwang" in line
    assert f"{key.parent}/{{{key.name}.pub}}" in line  # what it looked at
    assert len(line) <= 300 and "characters)" not in line  # whole, not cut
    assert not (tmp_path / "runbook.yaml").exists()


def test_a_flake_without_a_cache_configuration_is_an_error(tmp_path, home, key):
    result = runbook("init", str(FIXTURES / "realrepo"), cwd=tmp_path, home=home)
    assert result.returncode == 2
    assert "flake.nix: no nixosConfiguration ends in -cache" in result.stderr
    result = runbook("init", str(tmp_path), cwd=tmp_path, home=home)
    assert result.returncode == 2 and "expected a flake.nix in it" in result.stderr


# -- MACs ----------------------------------------------------------------------------------------


def test_macs_are_stable_valid_unicast_locally_administered_and_distinct(
    lab_config, tmp_path, home
):
    first, _ = init(lab_config, tmp_path, home)
    macs = [v.mac for v in loaded(first).vms]
    second = tmp_path / "again.yaml"
    result = runbook("init", str(lab_config), "--out", str(second), cwd=tmp_path, home=home)
    assert result.returncode == 0, result.stderr
    assert [v.mac for v in loaded(second).vms] == macs  # the same on every run
    assert len(set(macs)) == len(macs)
    for mac in macs:
        assert mac is not None and MAC_RE.match(mac), mac  # UTM's format: %02X joined by ':'
        first_byte = int(mac[:2], 16)
        assert first_byte & 0x02 and not first_byte & 0x01
    assert macs[0] == stable_mac("vm-aarch64-utm-cache")


def test_stable_mac_does_not_depend_on_the_machine():
    # a fixed value: the same name gives the same MAC on every Mac (sha256 of the name)
    assert stable_mac("vm-aarch64-utm-cache") == stable_mac("vm-aarch64-utm-cache")
    assert stable_mac("a") != stable_mac("b")
    for name in ("a", "b", "vm-aarch64-utm", "x" * 64):
        b0 = int(stable_mac(name)[:2], 16)
        assert b0 & 0x02 and not b0 & 0x01


# -- writing -------------------------------------------------------------------------------------


def test_an_existing_file_is_never_replaced_without_force(clean, tmp_path, home):
    out = tmp_path / "runbook.yaml"
    out.write_text("# mine\n")
    result = runbook("init", str(clean), cwd=tmp_path, home=home)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: runbook.yaml: exists; pass --force to replace it (or --out another file)"
    )
    assert out.read_text() == "# mine\n"
    result = runbook("init", str(clean), "--force", cwd=tmp_path, home=home)
    assert result.returncode == 0, result.stderr
    assert loaded(out).user == "jqwang"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".runbook")) == []


def test_default_out_is_runbook_yaml_in_the_current_directory(clean, tmp_path, home):
    result = runbook("init", "--nixos-config", str(clean), "--yes", cwd=tmp_path, home=home)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runbook.yaml").is_file()
    assert "runbook deploy runbook.yaml --yes" in result.stdout


def test_the_file_loads_and_passes_the_doctors_checks(lab_config, tmp_path, home):
    out, _ = init(lab_config, tmp_path, home)
    dep = loaded(out)
    findings = run_context(DoctorContext(dep, dep.nixos_config))
    assert [f for f in findings if f.status is Status.FAIL] == []
    assert {f.check for f in findings if f.status is Status.OK} >= {
        "vm-configurations", "user-key-authorized", "ssh-key", "atticd-enabled",
    }  # fmt: skip
    # every value is explained: each line that sets a scalar has a comment, but cache.vm
    data = yaml.safe_load(out.read_text())
    assert data["utm"]["iso"] == "auto"
    bare = [
        line for line in out.read_text().splitlines()
        if ": " in line and not line.lstrip().startswith("#") and "  # " not in line
    ]  # fmt: skip
    assert bare == ["  vm: vm-aarch64-utm-cache"]


def test_a_doctor_failure_is_said_and_exits_1(clean, tmp_path, home):
    # a key the configuration does not authorize, given anyway: the doctor fails it
    stranger = write_key(tmp_path / "stranger")
    out = tmp_path / "runbook.yaml"
    result = runbook("init", str(clean), "--identity", str(stranger), cwd=tmp_path, home=home)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "doctor: fail user-key-authorized: " in result.stdout
    assert "the key is not authorized for jqwang" in result.stdout
    assert "does not pass `runbook doctor runbook.yaml` yet" in result.stdout
    assert "given (not among the authorized keys)" in out.read_text()
    assert loaded(out).identity == stranger  # written: the user fixes the checkout or the key


# -- UTM and the console backend -----------------------------------------------------------------


def fake_utm(tmp_path: Path, version: str) -> Path:
    app = tmp_path / "UTM.app"
    (app / "Contents" / "MacOS").mkdir(parents=True)
    (app / "Contents" / "Info.plist").write_bytes(
        plistlib.dumps(
            {"CFBundleShortVersionString": version, "CFBundleIdentifier": "com.utmapp.UTM"}
        )
    )
    return app


def test_utm_version_from_info_plist_chooses_the_backend(clean, tmp_path, home):
    app = fake_utm(tmp_path, "4.7.4")
    out, _ = init(clean, tmp_path, home, "--utm", str(app))
    text = out.read_text()
    assert f"utmctl: {app}/Contents/MacOS/utmctl  # UTM 4.7.4 (Info.plist" in text
    assert "backend: utm-input  # UTM 4.7.4 >= 4.7.3" in text


def test_an_old_utm_gets_a_backend_it_supports(clean, tmp_path, home):
    app = fake_utm(tmp_path, "4.6.5")
    init(clean, tmp_path, home, "--utm", str(app), "--out", str(tmp_path / "old.yaml"))
    dep = loaded(tmp_path / "old.yaml")
    expected = "hammerspoon" if shutil.which("hs") else "serial"
    assert dep.console.backend == expected
    if expected == "serial":
        assert dep.console.serial_port is not None


def test_without_utm_the_file_says_so(clean, tmp_path, home):
    out, _ = init(clean, tmp_path, home, "--utm", str(tmp_path / "nowhere" / "UTM.app"))
    assert "# no UTM here (" in out.read_text()


def test_backend_for_versions():
    assert backend_for((4, 7, 3), has_hs=False).value == "utm-input"
    assert backend_for((4, 7, 2), has_hs=True).value == "hammerspoon"
    assert backend_for((4, 7, 2), has_hs=False).value == "serial"
    assert backend_for(None, has_hs=False).value == "utm-input"


# -- on a terminal -------------------------------------------------------------------------------


def run_on_pty(
    args: list[str], answers: list[tuple[str, str]], cwd: Path, home: Path
) -> tuple[int, str]:
    """Run the CLI on a real pty; for each (prompt, answer) wait for the prompt, type it."""
    import pty

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "TERM": "dumb"}
    code = "import sys; from runbook.cli import main; sys.argv[0] = 'runbook'; main()"
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its terminal
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-c", code, *args], env)
    seen = b""
    deadline = time.monotonic() + 60
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if pending and pending[0][0].encode() in seen.rsplit(b"\n", 1)[-1]:
                os.write(fd, pending.pop(0)[1].encode() + b"\r")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert not pending, f"prompts not seen: {pending}\n{seen.decode(errors='replace')}"
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_on_a_terminal_it_asks_with_defaults(clean, tmp_path, home, key):
    second = write_key(home / ".ssh" / "id_second")
    user_file = clean / "users" / "jqwang" / "nixos.nix"
    user_file.write_text(
        user_file.read_text().replace(
            f'"{public_line(key)}"', f'"{public_line(key)}"\n      "{public_line(second)}"'
        )
    )
    code, seen = run_on_pty(
        ["init"],
        [
            ("your nixos-config checkout [.]: ", str(clean)),
            ("deployment name [utm-attic]: ", "mine"),
            ("SSH key [1]: ", "2"),
            ("console backend", ""),  # the default
            ("write the params to [runbook.yaml]: ", "asked.yaml"),
        ],
        tmp_path,
        home,
    )
    assert code == 0, seen
    assert "1. " in seen and "2. " in seen  # both authorized keys were offered
    dep = loaded(tmp_path / "asked.yaml")
    assert dep.deployment == "mine"
    assert dep.identity == second
    assert dep.console.backend == "utm-input"


def test_on_a_terminal_yes_asks_nothing(clean, tmp_path, home):
    code, seen = run_on_pty(["init", str(clean), "--yes"], [], tmp_path, home)
    assert code == 0, seen
    assert "[utm-attic]" not in seen
    assert loaded(tmp_path / "runbook.yaml").deployment == "utm-attic"


def test_the_hands_on_bench_counts_two_commands_and_one_consent():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hands_on.py"), "--json"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = yaml.safe_load(result.stdout)
    assert (figures["runbook_commands"], figures["runbook_consents"]) == (2, 1)
    assert figures["handbook_actions"] > 3 * figures["runbook_actions"]


def test_bad_flags_are_one_line_errors(lab_config, tmp_path, home):
    for args, said in (
        (["--workers", "vm-nope"], "--workers vm-nope: not a worker nixosConfiguration"),
        (["--address", "vm-nope=10.0.0.1"], "--address vm-nope: not one of the VMs"),
        (["--address", "novalue"], "--address 'novalue': expected VM=ADDRESS"),
        (["--set", "no-equals"], "--set 'no-equals': expected KEY=VALUE"),
        (["--set", "utm.network=wifi"], "key utm.network: String should match pattern"),
    ):
        result = runbook("init", str(lab_config), *args, cwd=tmp_path, home=home)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert said in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert not (tmp_path / "runbook.yaml").exists()
