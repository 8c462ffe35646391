"""`runbook doctor` (issue 6): every check on a clean mitchellh-shaped config, one pitfall per
derived fixture (each flips exactly its own check), the live key, the CLI and its exit codes."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from runbook.core import params
from runbook.core.params import Deployment
from runbook.doctor import (
    CHECKS,
    DoctorContext,
    Finding,
    Status,
    as_dataframe,
    resolve_without_network,
    run_checks,
    run_context,
)
from tests.conftest import need

FIXTURES = Path(__file__).parent / "fixtures" / "nixos-config"
CLEAN = FIXTURES / "clean"
HANDBOOK = FIXTURES / "handbook"
LAB_CONFIG = Path(__file__).parent.parent / "runbook" / "lab" / "nixos-config"
ROOT = Path(__file__).parent.parent
MAC_CHECKS = {"utmctl", "utm-version", "console-backend"}
ISSUE_IDS = [
    "attic-flake-input", "attic-module-import", "atticd-enabled", "atticd-env-file",
    "cache-port-open", "avahi-publish", "hostname-matches-mdns", "worker-substituter",
    "worker-trusted-key", "makefile-disk-device", "makefile-password-ssh",
    "makefile-nixname-default", "root-login-after-switch", "login-shell-fish", "sudo-nopasswd",
    "nic-name-pinned", "guest-agent", "ssh-key", "utmctl", "utm-version", "console-backend",
]  # fmt: skip
ISSUE_10_IDS = ["vm-configurations", "user-key-authorized"]


def write_key(path: Path) -> Path:
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
    path.with_name(path.name + ".pub").write_bytes(public + b" test\n")
    return path


def deployment(config: Path, identity: Path, *, host: str = "nixos-utm-cache.local",
               port: int = 8080, disk: str = "virtio", backend: str = "utm-input",
               utmctl: Path | None = None) -> Deployment:  # fmt: skip
    utm = f"utm: {{utmctl: {utmctl}}}\n" if utmctl else ""
    return params.parse(
        f"deployment: test\nnixos_config: {config}\nidentity: {identity}\n"
        "vms:\n"
        "  - {name: vm-aarch64-utm-cache, role: cache, address: nixos-utm-cache.local,"
        f" disk_interface: {disk}}}\n"
        f"  - {{name: vm-aarch64-utm, role: worker, address: nixos-utm.local, disk_interface: {disk}}}\n"
        f"cache: {{vm: vm-aarch64-utm-cache, host: {host}, port: {port}}}\n"
        f"console: {{backend: {backend}}}\n" + utm,
        "test.yaml",
    )


FIXTURE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA jqwang@fixture"


def authorize(config: Path, key: Path, placeholder: str) -> None:
    """Put `key`'s public half where the fixture's user file lists its one key."""
    user_file = config / "users" / "jqwang" / "nixos.nix"
    text = user_file.read_text()
    assert placeholder in text
    public = " ".join(key.with_name(key.name + ".pub").read_text().split()[:2])
    user_file.write_text(text.replace(placeholder, public + " jqwang@mac"))


@pytest.fixture
def clean(tmp_path: Path, key: Path) -> Path:
    """The clean fixture, its user authorizing this test's key (params identity)."""
    target = tmp_path / "nixos-config"
    shutil.copytree(CLEAN, target)
    authorize(target, key, FIXTURE_KEY)
    return target


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return write_key(tmp_path / "id_ed25519")


def statuses(findings: list[Finding]) -> dict[str, Status]:
    return {f.check: f.status for f in findings}


def by_id(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def runbook(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from runbook.cli import main; sys.argv[0] = 'runbook'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip


def write_params(path: Path, config: Path, identity: Path) -> Path:
    path.write_text(
        f"deployment: test\nnixos_config: {config}\nidentity: {identity}\nvms:\n"
        "  - {name: vm-aarch64-utm-cache, role: cache, address: nixos-utm-cache.local}\n"
        "  - {name: vm-aarch64-utm, role: worker, address: nixos-utm.local}\n"
        "cache: {vm: vm-aarch64-utm-cache, host: nixos-utm-cache.local}\n"
    )
    return path


# -- the clean config ------------------------------------------------------------------------


def test_every_check_of_the_issue_exists_with_its_id():
    ids = [c.id for c in CHECKS]
    assert set(ISSUE_IDS + ISSUE_10_IDS) <= set(ids) and len(ids) == len(set(ids))


def test_the_clean_fixture_is_ok_everywhere(clean: Path, key: Path):
    findings = run_checks(deployment(clean, key), clean)
    assert [f.check for f in findings][: len(CHECKS)] == [c.id for c in CHECKS]
    for f in findings:
        if f.check in MAC_CHECKS:
            assert (f.status, f.finding) == (Status.UNCHECKED, "not on macOS")
        else:
            assert f.status is Status.OK, f
        assert f.lesson
    trusted = by_id(findings)["worker-trusted-key"].finding
    assert "live comparison unchecked: cache not reachable from here" in trusted


def test_without_params_the_defaults_are_said(clean: Path):
    found = by_id(run_checks(None, clean))
    assert found["hostname-matches-mdns"].status is Status.UNCHECKED
    assert found["hostname-matches-mdns"].finding == "no params given"
    assert (found["ssh-key"].status, found["ssh-key"].finding) == (
        Status.UNCHECKED,
        "no params given",
    )
    substituter = found["worker-substituter"]
    assert substituter.status is Status.OK
    assert (
        "no params given: expecting http://nixos-utm-cache.local:8080/main" in substituter.finding
    )
    assert found["atticd-enabled"].status is Status.OK  # the flake's *-cache configuration
    assert found["makefile-disk-device"].status is Status.OK  # /dev/vda is UTM's default


# -- one pitfall per derived fixture ---------------------------------------------------------

Edit = tuple[str, str, str]  # file, old text, new text (old "" appends)
ATTIC_NESTED = """    attic = {
      url = "github:zhaofengli/attic";
      inputs.nixpkgs.follows = "nixpkgs";
    };
"""
HOME_MANAGER = "    home-manager = {\n"
BOOTSTRAP_SDA = ("Makefile", "/dev/vda", "/dev/sda")
PITFALLS: list[tuple[str, str, Status, list[Edit]]] = [
    ("attic-input-nested", "attic-flake-input", Status.FAIL,
     [("flake.nix", HOME_MANAGER, ATTIC_NESTED + HOME_MANAGER)]),
    ("attic-input-dotted", "attic-flake-input", Status.FAIL,
     [("flake.nix", HOME_MANAGER, '    attic.url = "github:zhaofengli/attic";\n' + HOME_MANAGER)]),
    ("attic-input-git-url", "attic-flake-input", Status.FAIL,
     [("flake.nix", HOME_MANAGER,
       '    cache-server.url = "git+https://github.com/zhaofengli/attic.git";\n' + HOME_MANAGER)]),
    ("attic-in-lock-only", "attic-flake-input", Status.FAIL,
     [("flake.lock", '"nodes": {',
       ('"nodes": {\n    "attic": {"locked": {"owner": "zhaofengli", "repo": "attic", '
       '"type": "github"}, "original": {"owner": "zhaofengli", "repo": "attic", '
       '"type": "github"}},'))]),
    ("attic-module", "attic-module-import", Status.FAIL,
     [("lib/mksystem.nix", "    machineConfig\n",
       "    machineConfig\n    inputs.attic.nixosModules.atticd\n")]),
    ("attic-package", "attic-module-import", Status.FAIL,
     [("machines/vm-shared.nix", "    git\n",
       "    git\n    inputs.attic.packages.${pkgs.system}.attic-client\n")]),
    ("atticd-disabled", "atticd-enabled", Status.FAIL,
     [("modules/attic.nix", "enable = true;", "enable = false;")]),
    ("atticd-mkforce-off", "atticd-enabled", Status.FAIL,
     [("machines/vm-aarch64-utm-cache.nix", '  networking.hostName',
       "  services.atticd.enable = lib.mkForce false;\n  networking.hostName")]),
    ("atticd-absent", "atticd-enabled", Status.FAIL,
     [("modules/attic.nix", "    enable = true;\n", "")]),
    ("env-file-path-literal", "atticd-env-file", Status.FAIL,
     [("modules/attic.nix", '"/var/lib/atticd/env"', "./atticd.env")]),
    ("env-file-in-store", "atticd-env-file", Status.FAIL,
     [("modules/attic.nix", '"/var/lib/atticd/env"', '"/nix/store/0000-atticd-env"')]),
    ("env-file-unset", "atticd-env-file", Status.FAIL,
     [("modules/attic.nix", '    environmentFile = "/var/lib/atticd/env";\n', "")]),
    ("port-closed", "cache-port-open", Status.FAIL,
     [("modules/attic.nix", "allowedTCPPorts = [ 8080 ];", "allowedTCPPorts = [ 22 ];")]),
    ("avahi-no-addresses", "avahi-publish", Status.FAIL,
     [("machines/vm-aarch64-utm-cache.nix", "addresses = true;", "addresses = false;")]),
    ("avahi-dotted-no-publish", "avahi-publish", Status.FAIL,
     [("machines/vm-aarch64-utm-cache.nix",
       ("  services.avahi = {\n    enable = true;\n    nssmdns4 = true;\n    publish = {\n"
       "      enable = true;\n      addresses = true;\n    };\n  };\n"),
       "  services.avahi.enable = true;\n  services.avahi.nssmdns4 = true;\n")]),
    ("hostname-differs", "hostname-matches-mdns", Status.FAIL,
     [("machines/vm-aarch64-utm-cache.nix", '"nixos-utm-cache"', '"attic"')]),
    ("no-substituter", "worker-substituter", Status.WARN,
     [("machines/vm-shared.nix", '        "http://nixos-utm-cache.local:8080/main"\n', "")]),
    ("substituter-by-ip", "worker-substituter", Status.FAIL,
     [("machines/vm-shared.nix", "nixos-utm-cache.local:8080", "192.168.64.13:8080")]),
    ("no-trusted-key", "worker-trusted-key", Status.WARN,
     [("machines/vm-shared.nix", '        "main:oA4xP/b/OGxNldLb2kqO9gSu8Bzdu3mp5RXl4LwZqGA="\n', "")]),
    ("malformed-trusted-key", "worker-trusted-key", Status.FAIL,
     [("machines/vm-shared.nix", "main:oA4xP/b/OGxNldLb2kqO9gSu8Bzdu3mp5RXl4LwZqGA=", "main:c2hvcnQ=")]),
    ("bootstrap-sda", "makefile-disk-device", Status.FAIL, [BOOTSTRAP_SDA]),
    ("bootstrap-blockdevice-var", "makefile-disk-device", Status.FAIL,
     [("Makefile", "/dev/vda", "/dev/$(NIXBLOCKDEVICE)"),
      ("Makefile", "NIXPORT ?= 22\n", "NIXPORT ?= 22\nNIXBLOCKDEVICE ?= sda\n")]),
    ("ssh-options-override", "makefile-password-ssh", Status.FAIL,
     [("Makefile", "SSH_OPTIONS=", "override SSH_OPTIONS=")]),
    ("nixname-darwin", "makefile-nixname-default", Status.WARN,
     [("Makefile", "NIXNAME ?= vm-aarch64-utm\n", ""),
      ("Makefile", "UNAME := $(shell uname)\n",
       ("UNAME := $(shell uname)\nifeq ($(UNAME),Darwin)\nNIXNAME ?= macbook-pro-m1\nelse\n"
       "NIXNAME ?= vm-aarch64-utm\nendif\n"))]),
    ("root-login-no", "root-login-after-switch", Status.WARN,
     [("machines/vm-shared.nix", 'PermitRootLogin = "yes"', 'PermitRootLogin = "no"')]),
    ("immutable-users", "root-login-after-switch", Status.WARN,
     [("machines/vm-shared.nix", "  time.timeZone", "  users.mutableUsers = false;\n  time.timeZone")]),
    ("fish", "login-shell-fish", Status.WARN,
     [("users/jqwang/nixos.nix", "pkgs.bashInteractive", "pkgs.fish")]),
    ("fish-default-shell", "login-shell-fish", Status.WARN,
     [("users/jqwang/nixos.nix", "    shell = pkgs.bashInteractive;\n", ""),
      ("users/jqwang/nixos.nix", "  users.users.jqwang", "  users.defaultUserShell = pkgs.fish;\n  users.users.jqwang")]),
    ("sudo-password", "sudo-nopasswd", Status.WARN,
     [("machines/vm-shared.nix", "wheelNeedsPassword = false;", "wheelNeedsPassword = true;")]),
    ("not-wheel", "sudo-nopasswd", Status.FAIL,
     [("users/jqwang/nixos.nix", '[ "docker" "wheel" ]', '[ "docker" ]')]),
    ("nic-pinned", "nic-name-pinned", Status.WARN,
     [("machines/vm-shared.nix", "networking.useDHCP = true;", "networking.useDHCP = false;"),
      ("machines/vm-aarch64-utm.nix", "  services.spice", "  networking.interfaces.enp0s10.useDHCP = true;\n  services.spice")]),
    ("no-guest-agent", "guest-agent", Status.WARN,
     [("machines/vm-shared.nix", "  services.qemuGuest.enable = true;\n", "")]),
]  # fmt: skip


def apply(config: Path, edits: list[Edit]) -> None:
    for rel, old, new in edits:
        path = config / rel
        text = path.read_text()
        assert old in text, f"{rel}: {old!r} not in the fixture"
        path.write_text(text.replace(old, new))


def assert_only(
    config: Path, key: Path, check: str | None, status: Status | None
) -> Finding | None:
    clean_statuses = {c.id: Status.OK for c in CHECKS} | dict.fromkeys(MAC_CHECKS, Status.UNCHECKED)
    found = run_checks(deployment(config, key), config)
    got = statuses(found)
    expected = clean_statuses | ({check: status} if check and status else {})
    assert got == expected, {k: v for k, v in got.items() if expected.get(k) != v}
    return by_id(found)[check] if check else None


@pytest.mark.parametrize(
    ("case", "check", "status", "edits"), PITFALLS, ids=[p[0] for p in PITFALLS]
)
def test_each_pitfall_flips_exactly_its_own_check(clean, key, case, check, status, edits):
    apply(clean, edits)
    finding = assert_only(clean, key, check, status)
    assert finding is not None and finding.fix, finding


def test_a_commented_out_attic_input_is_not_reported(clean: Path, key: Path):
    commented = "".join(f"    # {line.strip()}\n" for line in ATTIC_NESTED.splitlines())
    apply(clean, [("flake.nix", HOME_MANAGER, commented + HOME_MANAGER),
                  ("lib/mksystem.nix", "    machineConfig\n",
                   "    # inputs.attic.nixosModules.atticd\n    machineConfig\n")])  # fmt: skip
    assert_only(clean, key, None, None)


@pytest.mark.parametrize(
    "edits",
    [
        [
            (
                "machines/vm-aarch64-utm-cache.nix",
                (
                    "  services.avahi = {\n    enable = true;\n    nssmdns4 = true;\n    publish = {\n"
                    "      enable = true;\n      addresses = true;\n    };\n  };\n"
                ),
                (
                    "  services.avahi.enable = true;\n  services.avahi.nssmdns4 = true;\n"
                    "  services.avahi.publish.enable = true;\n  services.avahi.publish.addresses = true;\n"
                ),
            )
        ],
        [
            (
                "modules/attic.nix",
                "  services.atticd = {\n    enable = true;\n",
                "  services.atticd.enable = true;\n  services.atticd = {\n",
            )
        ],
        [
            (
                "machines/vm-shared.nix",
                '      substituters = [\n        "http://nixos-utm-cache.local:8080/main"\n',
                (
                    '      extra-substituters = [ "http://nixos-utm-cache.local:8080/main" ];\n'
                    "      substituters = [\n"
                ),
            )
        ],
        [
            (
                "machines/vm-aarch64-utm-cache.nix",
                "{ config, pkgs, lib, ... }: {",
                "{ config, pkgs, lib, ... }: {\n  config.services.qemuGuest.enable = lib.mkDefault false;",
            )
        ],
        [("lib/mksystem.nix", "  darwin ? false,\n", "  darwin ? false,\n  wsl ? false,\n")],
    ],
    ids=["avahi-dotted", "atticd-mixed", "extra-substituters", "mkDefault-loses", "trailing-comma"],
)
def test_other_spellings_of_a_clean_config_stay_clean(clean, key, edits):
    apply(clean, edits)
    assert_only(clean, key, None, None)


def test_mkif_cannot_be_decided_so_it_is_unchecked(clean: Path, key: Path):
    apply(clean, [("modules/attic.nix", "    enable = true;", "    enable = lib.mkIf true true;")])
    found = by_id(run_checks(deployment(clean, key), clean))
    assert found["atticd-enabled"].status is Status.UNCHECKED
    assert "mkIf at modules/attic.nix:6" in found["atticd-enabled"].finding


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda k: k.chmod(0o644), "mode 0644"),
        (lambda k: k.with_name(k.name + ".pub").unlink(), "public half"),
        (lambda k: write_key(k.parent / "other") and shutil.copy(k.parent / "other.pub", Path(f"{k}.pub")),
         "is not the public half"),
        (lambda k: k.unlink(), "does not exist"),
    ],
    ids=["world-readable", "no-pub", "wrong-pub", "missing"],
)  # fmt: skip
def test_ssh_key_problems_flip_ssh_key(clean, key, mutate: Callable[[Path], object], expected):
    mutate(key)
    finding = assert_only(clean, key, "ssh-key", Status.FAIL)
    assert finding is not None and expected in finding.finding


def test_a_file_only_nix_refuses_is_a_nix_parse_failure(clean: Path, key: Path):
    need(
        shutil.which("nix-instantiate") is not None,
        "nix-instantiate (Debian nix-bin) not installed",
    )
    (clean / "users/jqwang/home-manager.nix").write_text(
        "{ config, ... }: { home.x = undefinedName; }\n"
    )
    found = by_id(run_checks(deployment(clean, key), clean))
    assert found["nix-parse"].status is Status.FAIL
    assert "users/jqwang/home-manager.nix: nix-instantiate" in found["nix-parse"].finding


def test_a_file_tree_sitter_refuses_makes_its_readers_unchecked(clean: Path, key: Path):
    (clean / "modules/attic.nix").write_text("{ services.atticd = { enable = true; }\n")
    found = by_id(run_checks(deployment(clean, key), clean))
    assert found["nix-parse"].status is Status.FAIL
    assert "modules/attic.nix:" in found["nix-parse"].finding
    assert found["atticd-enabled"].status is Status.UNCHECKED
    assert found["login-shell-fish"].status is Status.OK  # reads no cache module


# -- the live key: only loopback or the lab's subnet -----------------------------------------


@pytest.fixture
def atticd(tmp_path: Path) -> Iterator[tuple[int, object]]:
    """The lab's atticd stand-in (attic's HTTP API) in this process, on 127.0.0.1."""
    from runbook.lab.attic import config as attic_config
    from runbook.lab.attic.server import AtticServer
    from runbook.lab.attic.state import CacheRecord, generate_keypair

    conf = attic_config.load_config(None, "127.0.0.1:0")
    conf = attic_config.ServerConfig(conf.listen, tmp_path / "atticd", tmp_path / "atticd" / "s",
                                     None, [], {})  # fmt: skip
    public = rsa.generate_private_key(65537, 2048).public_key()
    server = AtticServer(
        ("127.0.0.1", 0), socket.AF_INET, conf, attic_config.SigningKeys(None, public)
    )
    cache = CacheRecord("main", generate_keypair("main"), is_public=True)
    server.store.put_cache(cache)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server.server_address[1], cache
    server.shutdown()
    server.server_close()


def test_the_live_key_is_compared_on_loopback(clean: Path, key: Path, atticd):
    port, cache = atticd
    live = cache.public_key()
    apply(
        clean,
        [("machines/vm-shared.nix", "main:oA4xP/b/OGxNldLb2kqO9gSu8Bzdu3mp5RXl4LwZqGA=", live)],
    )
    found = by_id(run_checks(deployment(clean, key, host="127.0.0.1", port=port), clean))
    assert found["worker-trusted-key"].status is Status.OK
    assert "the live cache's key" in found["worker-trusted-key"].finding


def test_a_recreated_cache_fails_the_trusted_key(clean: Path, key: Path, atticd):
    port, cache = atticd  # the fixture trusts the handbook's key, the cache signs with another
    found = by_id(run_checks(deployment(clean, key, host="127.0.0.1", port=port), clean))
    assert found["worker-trusted-key"].status is Status.FAIL
    assert cache.public_key() in found["worker-trusted-key"].finding
    assert cache.public_key() in found["worker-trusted-key"].fix


def test_other_addresses_are_never_contacted(clean: Path, key: Path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("contacted a non-lab address")

    monkeypatch.setattr("urllib.request.urlopen", refuse)
    for host in ("192.0.2.10", "nixos-utm-cache.local", "10.232.0.5"):
        trusted = by_id(run_checks(deployment(clean, key, host=host), clean))["worker-trusted-key"]
        assert trusted.status is Status.OK
        assert f"live comparison unchecked: cache not reachable from here ({host} is not" in (
            trusted.finding
        )


def test_a_lab_address_is_tried_and_a_silent_one_is_unchecked(clean: Path, key: Path):
    ctx = DoctorContext(deployment(clean, key, host="127.0.0.1", port=9), clean)
    trusted = by_id(run_context(ctx))["worker-trusted-key"]
    assert trusted.status is Status.OK and "cache not reachable from here (http://127.0.0.1:9/" in (
        trusted.finding
    )
    assert resolve_without_network("localhost") == ["127.0.0.1"]
    assert resolve_without_network("10.231.0.11") == ["10.231.0.11"]


# -- macOS checks, driven with a stand-in UTM.app --------------------------------------------


def fake_utm(tmp_path: Path, version: str) -> Path:
    macos = tmp_path / "UTM.app" / "Contents" / "MacOS"
    macos.mkdir(parents=True)
    (macos.parent / "Info.plist").write_bytes(
        plistlib.dumps({"CFBundleShortVersionString": version})
    )
    utmctl = macos / "utmctl"  # `list` as utm-makefile-keys.md §2 prints it
    utmctl.write_text(
        "#!/bin/sh\necho 'UUID                                 Status   Name'\n"
        "echo '5D419106-2824-4FED-BFE1-24A7F7E253D8 started  vm-aarch64-utm-cache'\n"
    )
    utmctl.chmod(0o755)
    return utmctl


def test_mac_checks_on_a_mac(clean: Path, key: Path, tmp_path: Path):
    utmctl = fake_utm(tmp_path, "4.6.4")
    dep = deployment(clean, key, utmctl=utmctl, backend="serial")
    found = by_id(run_context(DoctorContext(dep, clean, system="Darwin")))
    assert found["utmctl"].status is Status.OK and "1 VMs" in found["utmctl"].finding
    assert found["utm-version"].status is Status.WARN  # 4.6.4 < 4.7.3, serial needs no typing
    assert found["console-backend"].status is Status.FAIL  # serial without a port
    dep = deployment(clean, key, utmctl=utmctl)
    found = by_id(run_context(DoctorContext(dep, clean, system="Darwin")))
    assert found["utm-version"].status is Status.FAIL  # utm-input needs 4.7.3


@pytest.mark.parametrize(
    ("version", "status", "says"),
    [
        # 4.7.2's sdef gave `UTM version` the code of `virtual machine` (UTM #7360)
        ("4.7.2", Status.FAIL, "UTM 4.7.2 < 4.7.3: the utm-input backend cannot type"),
        ("4.7.3", Status.OK, "UTM 4.7.3"),
        ("5.0.3", Status.OK, "UTM 5.0.3"),
    ],
)
def test_utm_input_needs_utm_4_7_3(
    clean: Path, key: Path, tmp_path: Path, version: str, status: Status, says: str
) -> None:
    dep = deployment(clean, key, utmctl=fake_utm(tmp_path, version))  # backend utm-input
    verdict = by_id(run_context(DoctorContext(dep, clean, system="Darwin")))["utm-version"]
    assert verdict.status is status and says in verdict.finding
    if status is Status.FAIL:
        assert "#7360" in verdict.finding and "4.7.3" in verdict.fix


def test_a_missing_utmctl_fails_on_a_mac(clean: Path, key: Path, tmp_path: Path):
    dep = deployment(clean, key, utmctl=tmp_path / "nowhere" / "utmctl", backend="hammerspoon")
    found = by_id(run_context(DoctorContext(dep, clean, system="Darwin")))
    assert found["utmctl"].status is Status.FAIL and found["utm-version"].status is Status.FAIL


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_json_on_the_clean_config_exits_0(clean: Path, key: Path, tmp_path: Path):
    proc = runbook("doctor", str(write_params(tmp_path / "p.yaml", clean, key)), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert all(set(r) == {"check", "lesson", "status", "finding", "fix"} for r in rows)
    assert [r["check"] for r in rows] == [c.id for c in CHECKS]


def test_cli_table_and_exit_1_on_a_failure(clean: Path, key: Path, tmp_path: Path):
    apply(clean, [BOOTSTRAP_SDA])
    proc = runbook("doctor", str(write_params(tmp_path / "p.yaml", clean, key)))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("STATUS")
    assert "fail       makefile-disk-device" in proc.stdout
    assert "fix: create the disk with interface SCSI" in proc.stdout


def test_cli_without_params_says_the_defaults(clean: Path):
    proc = runbook("doctor", "--nixos-config", str(clean))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("note: no params given: cache configuration vm-aarch64-utm-cache")


def test_nixos_config_overrides_the_params(clean: Path, key: Path, tmp_path: Path):
    params_file = write_params(tmp_path / "p.yaml", tmp_path / "elsewhere", key)
    proc = runbook("doctor", str(params_file), "--nixos-config", str(clean), "--json")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere.yaml"], "nowhere.yaml: no such params file"),
        (["--nixos-config", "/nonexistent-dir"], "not a directory"),
        (["--nixos-config", "/tmp"], "expected a flake.nix"),
        (["--fix", "--diff"], "not allowed with argument"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    proc = runbook("doctor", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_bad_params_key_exits_2(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployment: x\nnixos_config: /tmp\nidentity: /tmp/k\nvms: []\ncache: {}\n")
    proc = runbook("doctor", str(bad))
    assert proc.returncode == 2 and "bad.yaml: key" in proc.stderr


def test_as_dataframe_is_the_table_for_notebook_00(clean: Path, key: Path):
    frame = as_dataframe(run_checks(deployment(clean, key), clean))
    assert list(frame.columns) == ["check", "lesson", "status", "finding", "fix"]
    assert len(frame) == len(CHECKS) and set(frame["status"]) == {"ok", "unchecked"}


# -- the safe fixes on the handbook's config -------------------------------------------------


@pytest.fixture
def handbook(tmp_path: Path) -> Path:
    target = tmp_path / "handbook"
    shutil.copytree(HANDBOOK, target)
    return target


def test_diff_shows_the_fixes_and_changes_nothing(handbook: Path):
    before = {p: p.read_bytes() for p in handbook.rglob("*") if p.is_file()}
    proc = runbook("doctor", "--nixos-config", str(handbook), "--diff")
    assert proc.returncode == 1
    assert "-    inputs.attic.nixosModules.atticd # the attic server module\n" in proc.stdout
    assert '+        "http://nixos-utm-cache.local:8080/main"\n' in proc.stdout
    assert {p: p.read_bytes() for p in handbook.rglob("*") if p.is_file()} == before


def test_fix_clears_lesson_1_and_the_substituter_and_is_idempotent(handbook: Path):
    proc = runbook("doctor", "--nixos-config", str(handbook), "--fix", "--json")
    rows = {r["check"]: r["status"] for r in json.loads(proc.stdout)}
    for check in ("attic-flake-input", "attic-module-import", "worker-substituter"):
        assert rows[check] == "ok", proc.stdout
    assert "attic" not in json.loads((handbook / "flake.lock").read_text())["nodes"]
    after = {p: p.read_bytes() for p in handbook.rglob("*") if p.is_file()}
    runbook("doctor", "--nixos-config", str(handbook), "--fix")
    assert {p: p.read_bytes() for p in handbook.rglob("*") if p.is_file()} == after


def test_fixed_worker_settings_evaluate_in_real_nix(handbook: Path):
    runbook("doctor", "--nixos-config", str(handbook), "--fix")
    need(
        shutil.which("nix-instantiate") is not None,
        "nix-instantiate (Debian nix-bin) not installed",
    )
    expr = (
        f"(import {handbook}/machines/vm-shared.nix {{ config = {{}}; lib = {{}}; inputs = {{}};"
        " pkgs = { nixVersions.latest = null; attic-client = null; git = null; }; }).nix.settings"
    )
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert json.loads(out)["substituters"][0] == "http://nixos-utm-cache.local:8080/main"


# -- the lab's nixos-config ------------------------------------------------------------------


def test_the_lab_config_has_no_failure():
    if not (LAB_CONFIG / "flake.nix").is_file():
        pytest.skip(f"{LAB_CONFIG}/flake.nix does not exist yet (the lab's config is in progress)")
    found = run_checks(None, LAB_CONFIG)
    failures = [f for f in found if f.status is Status.FAIL]
    assert not failures, failures


def test_planned_changes_can_be_limited_to_lesson_1(handbook: Path):
    from runbook.doctor import planned_changes

    lesson_1 = planned_changes(None, handbook, {"attic-flake-input", "attic-module-import"})
    assert {c.path.name for c in lesson_1} == {
        "flake.nix",
        "flake.lock",
        "mksystem.nix",
        "vm-shared.nix",
    }
    assert all(b"nixos-utm-cache.local" not in c.after for c in lesson_1)
    everything = planned_changes(None, handbook)
    assert any(b"http://nixos-utm-cache.local:8080/main" in c.after for c in everything)


def test_a_cache_vm_the_checkout_cannot_build_fails_once(clean: Path, key: Path):
    (clean / "machines/vm-aarch64-utm-cache.nix").unlink()
    found = by_id(run_checks(deployment(clean, key), clean))
    assert found["atticd-enabled"].status is Status.FAIL
    assert "machines/vm-aarch64-utm-cache.nix" in found["atticd-enabled"].finding
    for check in ("atticd-env-file", "cache-port-open", "avahi-publish", "hostname-matches-mdns"):
        assert found[check].status is Status.UNCHECKED


# -- a real-shaped repo (issue 10): mitchellh/nixos-config's layout, written here -------------

REALREPO = Path(__file__).parent / "fixtures" / "realrepo"
REALREPO_CACHE = Path(__file__).parent / "fixtures" / "realrepo-cache"  # laid over realrepo
REAL_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII7Mv8poCQfePR/bcx+o7q9CJnd415jjZZrGeWWQ23T5"
DARWIN = "    darwinConfigurations.macbook-pro-m1"
CACHE_SYSTEM = (
    '    nixosConfigurations.vm-aarch64-utm-cache = mkSystem "vm-aarch64-utm-cache" {\n'
    '      system = "aarch64-linux";\n      user   = "jqwang";\n    };\n\n'
)
VMWARE_SYSTEM = (
    '    # A VMware Fusion VM.\n    nixosConfigurations.vm-aarch64 = mkSystem "vm-aarch64" {\n'
    '      system = "aarch64-linux";\n      user   = "jqwang";\n    };\n\n'
)
UTM_PIN = "  networking.interfaces.enp0s10.useDHCP = true;\n"


@pytest.fixture
def real(tmp_path: Path) -> Path:
    """realrepo as cloned: its user authorizes only the user's own Mac key."""
    target = tmp_path / "realrepo"
    shutil.copytree(REALREPO, target)
    return target


@pytest.fixture
def real_cache(real: Path, key: Path) -> Path:
    """realrepo with a cache system (realrepo-cache's files, in the flake), authorizing this
    test's key as the user would paste it."""
    shutil.copytree(REALREPO_CACHE, real, dirs_exist_ok=True)
    apply(real, [("flake.nix", DARWIN, CACHE_SYSTEM + DARWIN)])
    authorize(real, key, REAL_KEY + " jqwang@macbook")
    return real


def real_deployment(config: Path, identity: Path, *, user: str = "jqwang",
                    workers: tuple[str, ...] = ("vm-aarch64-utm",)) -> Deployment:  # fmt: skip
    rows = "".join(f"  - {{name: {w}, role: worker, address: {w}.local}}\n" for w in workers)
    return params.parse(
        f"deployment: real\nnixos_config: {config}\nidentity: {identity}\nuser: {user}\nvms:\n"
        "  - {name: vm-aarch64-utm-cache, role: cache, address: nixos-utm-cache.local}\n"
        f"{rows}cache: {{vm: vm-aarch64-utm-cache, host: nixos-utm-cache.local}}\n",
        "real.yaml",
    )


def _restore_users_key(config: Path) -> None:
    """The user file back to the key the user had: not the deployment's identity."""
    user_file = config / "users/jqwang/nixos.nix"
    lines = [
        f'      "{REAL_KEY} jqwang@macbook"' if 'jqwang@mac"' in line else line
        for line in user_file.read_text().splitlines()
    ]
    user_file.write_text("\n".join(lines) + "\n")


def _edit(*edits: Edit) -> Callable[[Path], None]:
    return lambda config: apply(config, list(edits))


# (case, fixture, with params, check, before, after, change); each change flips its check, and
# any other check that changes may only become unchecked (it can no longer read what it needs).
REAL_DEFECTS: list[tuple[str, str, bool, str, Status, Status, Callable[[Path], None]]] = [
    ("key-not-authorized", "real_cache", True, "user-key-authorized", Status.OK, Status.FAIL,
     _restore_users_key),
    ("user-not-defined", "real_cache", True, "user-key-authorized", Status.OK, Status.FAIL,
     _edit(("users/jqwang/nixos.nix", "users.users.jqwang", "users.users.mitchellh"))),
    ("nic-unpinned", "real", False, "nic-name-pinned", Status.WARN, Status.FAIL,
     _edit(("machines/vm-aarch64-utm.nix", UTM_PIN, ""))),
    ("flake-user-shell", "real", False, "login-shell-fish", Status.WARN, Status.OK,
     _edit(("users/jqwang/nixos.nix", "shell = pkgs.fish;", "shell = pkgs.bashInteractive;"))),
    ("worker-not-in-flake", "real_cache", True, "vm-configurations", Status.OK, Status.FAIL,
     _edit(("flake.nix", VMWARE_SYSTEM, ""))),
    ("cache-not-in-flake", "real_cache", True, "atticd-enabled", Status.OK, Status.FAIL,
     _edit(("flake.nix", CACHE_SYSTEM, ""))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "fixture", "with_params", "check", "before", "after", "change"),
    REAL_DEFECTS,
    ids=[d[0] for d in REAL_DEFECTS],
)
def test_each_real_repo_defect_flips_its_own_verdict(
    request, key, case, fixture, with_params, check, before, after, change
):
    config: Path = request.getfixturevalue(fixture)

    def verdicts() -> dict[str, Finding]:
        dep = real_deployment(config, key, workers=("vm-aarch64-utm", "vm-aarch64"))
        return by_id(run_checks(dep if with_params else None, config))

    first = verdicts()
    assert first[check].status is before, first[check]
    change(config)
    second = verdicts()
    assert second[check].status is after, second[check]
    assert second[check].fix or after is Status.OK
    others = {c for c in first if c != check and first[c].status is not second[c].status}
    assert all(second[c].status is Status.UNCHECKED for c in others), {
        c: (first[c].status, second[c]) for c in others
    }


def test_without_params_the_flakes_systems_and_users_are_read(real: Path):
    found = by_id(run_checks(None, real))
    assert found["login-shell-fish"].finding.startswith("vm-aarch64, vm-aarch64-utm: jqwang's")
    assert found["sudo-nopasswd"].status is Status.OK
    assert "vm-aarch64 (user jqwang), vm-aarch64-utm (user jqwang)" in (
        found["vm-configurations"].finding
    )
    assert "macbook-pro-m1" not in found["vm-configurations"].finding  # a darwin system
    nic = found["nic-name-pinned"]
    assert nic.status is Status.WARN
    assert "vm-aarch64-utm: networking.useDHCP = false (machines/vm-shared.nix:" in nic.finding
    assert "DHCP only on enp0s10 (machines/vm-aarch64-utm.nix:8)" in nic.finding
    user = found["user-key-authorized"]
    assert user.status is Status.OK and "1 authorized key(s) (users/jqwang/nixos.nix:" in (
        user.finding
    )


def test_the_lockout_names_the_user_the_key_and_the_console(real_cache: Path, key: Path):
    _restore_users_key(real_cache)
    found = by_id(run_checks(real_deployment(real_cache, key), real_cache))
    lockout = found["user-key-authorized"]
    assert lockout.status is Status.FAIL
    assert "the key is not authorized for jqwang" in lockout.finding
    assert "leaves only the console" in lockout.finding  # PermitRootLogin "no", immutable users
    assert f"{key}.pub" in lockout.fix and "users/jqwang/nixos.nix" in lockout.fix
    # with root's password login kept, the runbook's own login after the switch still fails
    apply(
        real_cache,
        [("machines/vm-shared.nix", 'PermitRootLogin = "no"', 'PermitRootLogin = "yes"')],
    )
    again = by_id(run_checks(real_deployment(real_cache, key), real_cache))["user-key-authorized"]
    assert again.status is Status.FAIL and "login after the switch (04) fails" in again.finding


def test_a_params_user_the_flake_does_not_build_is_a_failure(real_cache: Path, key: Path):
    found = by_id(run_checks(real_deployment(real_cache, key, user="alice"), real_cache))
    assert found["user-key-authorized"].status is Status.FAIL
    assert "users.users.alice is not defined (the flake builds it for user jqwang)" in (
        found["user-key-authorized"].finding
    )
    assert found["login-shell-fish"].status is Status.UNCHECKED


@pytest.mark.parametrize("authorized", [True, False])
def test_key_files_are_read_beside_the_module(real_cache: Path, key: Path, tmp_path: Path,
                                              authorized: bool):  # fmt: skip
    user_file = real_cache / "users/jqwang/nixos.nix"
    text = user_file.read_text()
    start = text.index("    openssh.authorizedKeys.keys")
    end = text.index("];", start) + 2
    user_file.write_text(
        text[:start] + "    openssh.authorizedKeys.keyFiles = [ ./authorized_keys ];" + text[end:]
    )
    other = write_key(tmp_path / "other")
    public = (key if authorized else other).with_name(
        ("id_ed25519" if authorized else "other") + ".pub"
    )
    (real_cache / "users/jqwang/authorized_keys").write_text(
        "# the Mac's key\n" + public.read_text()
    )
    verdict = by_id(run_checks(real_deployment(real_cache, key), real_cache))["user-key-authorized"]
    if authorized:
        assert verdict.status is Status.OK, verdict
        assert "users/jqwang/authorized_keys:2" in verdict.finding
    else:
        assert verdict.status is Status.FAIL and "users/jqwang/authorized_keys:2" in verdict.finding


def test_credentials_file_is_the_old_name_of_environment_file(real_cache: Path, key: Path):
    attic = ("modules/attic.nix", "environmentFile =", "credentialsFile =")
    apply(real_cache, [attic])
    verdict = by_id(run_checks(real_deployment(real_cache, key), real_cache))["atticd-env-file"]
    assert verdict.status is Status.OK, verdict
    assert "/var/lib/atticd/env (modules/attic.nix:" in verdict.finding
    apply(real_cache, [("modules/attic.nix", '"/var/lib/atticd/env"', '"/nix/store/0000-env"')])
    verdict = by_id(run_checks(real_deployment(real_cache, key), real_cache))["atticd-env-file"]
    assert verdict.status is Status.FAIL and "is in /nix/store" in verdict.finding


def test_a_worker_the_flake_does_not_build_is_named(real_cache: Path, key: Path):
    shutil.copy(
        real_cache / "machines/vm-aarch64-utm.nix", real_cache / "machines/vm-aarch64-utm-2.nix"
    )
    dep = real_deployment(real_cache, key, workers=("vm-aarch64-utm", "vm-aarch64-utm-2", "vm-x"))
    verdict = by_id(run_checks(dep, real_cache))["vm-configurations"]
    assert verdict.status is Status.FAIL
    assert verdict.finding == (
        "vms vm-aarch64-utm-2, vm-x are not among flake.nix's nixosConfigurations (flake.nix has "
        "vm-aarch64, vm-aarch64-utm, vm-aarch64-utm-cache): the runbook runs make vm/switch "
        "NIXNAME=<vm name>"
    )


def test_the_flakes_machine_name_picks_the_machine_file(real: Path):
    apply(real, [("flake.nix", "nixosConfigurations.vm-aarch64-utm = mkSystem \"vm-aarch64-utm\"",
                  "nixosConfigurations.utm = mkSystem \"vm-aarch64-utm\"")])  # fmt: skip
    nic = by_id(run_checks(None, real))["nic-name-pinned"]
    assert "utm: networking.useDHCP = false" in nic.finding
    assert "enp0s10 (machines/vm-aarch64-utm.nix:8)" in nic.finding


def test_cli_names_the_params_key_of_a_bad_nixos_config(tmp_path: Path, key: Path):
    params_file = write_params(tmp_path / "p.yaml", tmp_path / "nowhere", key)
    proc = runbook("doctor", str(params_file))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"error: {params_file}: key nixos_config: {tmp_path / 'nowhere'}: not a directory"
    )
    (tmp_path / "empty").mkdir()
    proc = runbook("doctor", str(write_params(tmp_path / "p.yaml", tmp_path / "empty", key)))
    assert proc.returncode == 2 and f"{params_file}: key nixos_config: " in proc.stderr
    assert "expected a flake.nix" in proc.stderr
    proc = runbook("doctor", "--nixos-config", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "--nixos-config" in proc.stderr


def test_lab_up_authorizes_the_lab_key_where_a_user_puts_theirs(tmp_path: Path, key: Path):
    """The lab's nixos-config lists jqwang's keys inline (as users/mitchellh/nixos.nix does);
    `lab up` adds the lab key to that list in its working copy, and the doctor reads it."""
    from runbook.lab.lifecycle import authorize_key

    config = tmp_path / "nixos-config"
    shutil.copytree(LAB_CONFIG, config)
    before = by_id(run_checks(deployment(config, key), config))["user-key-authorized"]
    assert before.status is Status.FAIL and "the key is not authorized for jqwang" in before.finding
    public = " ".join(key.with_name(key.name + ".pub").read_text().split()[:2]) + " runbook-lab"
    authorize_key(config, "jqwang", public)
    after = by_id(run_checks(deployment(config, key), config))["user-key-authorized"]
    assert after.status is Status.OK and "(users/jqwang/nixos.nix:" in after.finding
    written = (config / "users/jqwang/nixos.nix").read_bytes()
    authorize_key(config, "jqwang", public)  # a second `lab up` changes nothing
    assert (config / "users/jqwang/nixos.nix").read_bytes() == written
    assert f'openssh.authorizedKeys.keys = [ "{public}" ];'.encode() in written


def test_fix_authorizes_the_identity_for_the_user(real_cache: Path, key: Path, tmp_path: Path):
    _restore_users_key(real_cache)
    params_file = tmp_path / "real.yaml"
    params_file.write_text(
        f"deployment: real\nnixos_config: {real_cache}\nidentity: {key}\nvms:\n"
        "  - {name: vm-aarch64-utm-cache, role: cache, address: nixos-utm-cache.local}\n"
        "cache: {vm: vm-aarch64-utm-cache, host: nixos-utm-cache.local}\n"
    )
    diff = runbook("doctor", str(params_file), "--diff")
    public = " ".join(key.with_name(key.name + ".pub").read_text().split())
    assert f'+      "{public}"\n' in diff.stdout, diff.stdout
    fixed = runbook("doctor", str(params_file), "--fix", "--json")
    rows = {r["check"]: r["status"] for r in json.loads(fixed.stdout)}
    assert rows["user-key-authorized"] == "ok", fixed.stdout
    text = (real_cache / "users/jqwang/nixos.nix").read_text()
    assert f'"{REAL_KEY} jqwang@macbook"\n      "{public}"\n    ];' in text  # the Mac's key kept
    runbook("doctor", str(params_file), "--fix")
    assert (real_cache / "users/jqwang/nixos.nix").read_text() == text
