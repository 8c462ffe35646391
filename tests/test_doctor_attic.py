"""The doctor on a repo shaped like mitchellh/nixos-config with the handbook's cache machine
(tests/fixtures/realrepo-attic): no attic client on the cache VM (issue 10, 3) and no mDNS
resolution on the workers (issue 10, 4); each fix overlay flips its own verdict only.

Upstream: nixpkgs nixos/modules/services/networking/atticd.nix puts only `atticd-atticadm`
in environment.systemPackages; avahi-daemon.nix resolves `.local` only with
services.avahi.enable and nssmdns4 (the renamed nssmdns).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runbook.core import params
from runbook.core.params import Deployment, load
from runbook.core.secrets import SecretStore
from runbook.doctor import Finding, Status, run_checks
from runbook.engine.steps import Context, Mode
from runbook.sections import s05_token_secret, s06_cache, s07_workers

FIXTURES = Path(__file__).parent / "fixtures"
BASE = FIXTURES / "realrepo-attic"


def deployment(config: Path, host: str = "nixos-utm-cache.local") -> Deployment:
    return params.parse(
        f"deployment: test\nnixos_config: {config}\nidentity: {config / 'id'}\n"
        "user: mitchellh\nvms:\n"
        "  - {name: vm-aarch64-utm-cache, role: cache, address: nixos-utm-cache.local}\n"
        "  - {name: vm-aarch64-utm, role: worker, address: nixos-utm.local}\n"
        f"cache: {{vm: vm-aarch64-utm-cache, host: {host}}}\n",
        "test.yaml",
    )


def repo(tmp_path: Path, *overlays: str) -> Path:
    target = tmp_path / "nixos-config"
    shutil.copytree(BASE, target)
    (target / "id").write_text("")
    for name in overlays:
        shutil.copytree(FIXTURES / name, target, dirs_exist_ok=True)
    return target


def findings(config: Path, host: str = "nixos-utm-cache.local") -> dict[str, Finding]:
    return {f.check: f for f in run_checks(deployment(config, host), config)}


def statuses(found: dict[str, Finding]) -> dict[str, Status]:
    return {k: f.status for k, f in found.items()}


def test_the_real_shaped_repo_lacks_the_client_and_mdns(tmp_path: Path) -> None:
    found = findings(repo(tmp_path))
    client, mdns = found["attic-client"], found["worker-mdns"]
    assert client.status is Status.WARN, client
    assert "installs no attic client" in client.finding
    assert "machines/vm-shared.nix:" in client.finding  # where systemPackages was read
    assert (
        "`environment.systemPackages = [ pkgs.attic-client ];` to modules/attic.nix" in client.fix
    )
    assert mdns.status is Status.WARN, mdns
    assert "nixos-utm-cache.local does not resolve on vm-aarch64-utm" in mdns.finding
    assert "services.avahi.enable is not set" in mdns.finding
    assert "services.avahi.nssmdns4 = true;" in mdns.fix and "machines/vm-shared.nix" in mdns.fix
    # the substituter check alone would not say it (the cache is not a substituter yet)
    assert found["worker-substituter"].status is Status.WARN


@pytest.mark.parametrize(
    ("overlay", "check"),
    [("realrepo-attic-client", "attic-client"), ("realrepo-attic-mdns", "worker-mdns")],
)
def test_each_fix_flips_only_its_own_verdict(tmp_path: Path, overlay: str, check: str) -> None:
    before = statuses(findings(repo(tmp_path / "a")))
    after = statuses(findings(repo(tmp_path / "b", overlay)))
    assert before[check] is Status.WARN and after[check] is Status.OK
    assert {k: v for k, v in after.items() if k != check} == {
        k: v for k, v in before.items() if k != check
    }


def test_a_cache_reached_by_ip_needs_no_avahi(tmp_path: Path) -> None:
    found = findings(repo(tmp_path), host="192.168.64.13")
    assert found["worker-mdns"].status is Status.OK
    assert "not an mDNS (.local) name" in found["worker-mdns"].finding


def test_the_old_nssmdns_name_counts(tmp_path: Path) -> None:
    config = repo(tmp_path, "realrepo-attic-mdns")
    shared = config / "machines" / "vm-shared.nix"
    shared.write_text(shared.read_text().replace("nssmdns4 = true;", "nssmdns = true;"))
    assert findings(config)["worker-mdns"].status is Status.OK


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("environment.systemPackages = with pkgs; [ attic-client ];", Status.OK),
        ("environment.systemPackages = [ (pkgs.attic-client) ];", Status.OK),
        (
            "environment.systemPackages = lib.optionals true [ pkgs.attic-client ];",
            Status.UNCHECKED,
        ),
        ("environment.systemPackages = myPackages;", Status.UNCHECKED),
        ("environment.systemPackages = [ pkgs.attic-server ];", Status.WARN),
    ],
)
def test_spellings_of_the_client(tmp_path: Path, text: str, status: Status) -> None:
    config = repo(tmp_path)
    module = config / "modules" / "attic.nix"
    module.write_text(
        module.read_text().replace("{ config, pkgs, ... }:", "{ config, pkgs, lib, myPackages, ... }:")
        .replace("  services.atticd = {", f"  {text}\n\n  services.atticd = {{")
    )  # fmt: skip
    assert findings(config)["attic-client"].status is status


# -- notebooks 05 and 07 make the fixes the doctor names ---------------------------------------

KEY = "main:oA4xP/b/OGxNldLb2kqO9gSu8Bzdu3mp5RXl4LwZqGA="


def context(tmp_path: Path, config: Path, host: str = "nixos-utm-cache.local") -> Context:
    path = tmp_path / "p.yaml"
    path.write_text(
        f"deployment: test\nnixos_config: {config}\nidentity: {config / 'id'}\n"
        "user: mitchellh\nvms:\n"
        "  - {name: vm-aarch64-utm-cache, role: cache, address: nixos-utm-cache.local}\n"
        "  - {name: vm-aarch64-utm, role: worker, address: nixos-utm.local}\n"
        f"cache: {{vm: vm-aarch64-utm-cache, host: {host}}}\n"
    )
    ctx = Context("05-token-secret", load(path), Mode.DEPLOY, True, SecretStore(tmp_path / "s"))
    key_file = s06_cache.public_key_file(ctx)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(KEY + "\n")
    return ctx


def test_notebook_05_installs_the_client_where_atticd_is(tmp_path: Path) -> None:
    config = repo(tmp_path)
    ctx = context(tmp_path, config)
    step = s05_token_secret.attic_client(ctx, ctx.dep.cache_vm)
    assert step.probe is not None and step.action is not None
    assert step.probe().done is False
    assert step.action() == "modules/attic.nix: environment.systemPackages += [ pkgs.attic-client ]"
    text = (config / "modules" / "attic.nix").read_text()
    assert "  environment.systemPackages = [ pkgs.attic-client ];\n}\n" in text
    assert "# ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=... (handbook lesson 2)" in text  # kept
    assert findings(config)["attic-client"].status is Status.OK
    assert step.probe().done is True  # a rerun changes nothing


def test_notebook_05_extends_the_modules_own_package_list(tmp_path: Path) -> None:
    config = repo(tmp_path)
    module = config / "modules" / "attic.nix"
    module.write_text(
        module.read_text().replace(
            "  services.atticd = {", "  environment.systemPackages = with pkgs; [ sqlite ];\n\n  services.atticd = {"
        )
    )  # fmt: skip
    ctx = context(tmp_path, config)
    s05_token_secret.attic_client(ctx, ctx.dep.cache_vm).action()  # type: ignore[misc]
    assert "environment.systemPackages = with pkgs; [ sqlite attic-client ];" in module.read_text()
    assert findings(config)["attic-client"].status is Status.OK


def test_notebook_07_adds_mdns_with_the_substituter(tmp_path: Path) -> None:
    config = repo(tmp_path)
    ctx = context(tmp_path, config)
    step = s07_workers.configure(ctx)
    assert any("services.avahi.nssmdns4 = true;" in c for c in step.plan())
    assert step.probe().done is False  # type: ignore[misc]
    result = step.action()  # type: ignore[misc]
    assert result is not None and "avahi's mDNS resolution (nssmdns4)" in result
    text = (config / "machines" / "vm-shared.nix").read_text()
    assert "  services.avahi.enable = true;\n  services.avahi.nssmdns4 = true;\n" in text
    found = findings(config)
    assert found["worker-mdns"].status is Status.OK
    assert found["worker-substituter"].status is Status.OK
    assert step.probe().done is True  # type: ignore[misc]


def test_notebook_07_sets_nssmdns4_inside_an_avahi_block(tmp_path: Path) -> None:
    config = repo(tmp_path)
    shared = config / "machines" / "vm-shared.nix"
    shared.write_text(
        shared.read_text().replace(
            "  # Enable the OpenSSH daemon.\n",
            "  services.avahi = {\n    enable = false;\n  };\n\n  # Enable the OpenSSH daemon.\n",
        )
    )
    ctx = context(tmp_path, config)
    s07_workers.configure(ctx).action()  # type: ignore[misc]
    assert (
        "  services.avahi = {\n    enable = true;\n    nssmdns4 = true;\n  };\n"
        in shared.read_text()
    )
    assert findings(config)["worker-mdns"].status is Status.OK


def test_notebook_07_leaves_avahi_alone_for_a_cache_by_ip(tmp_path: Path) -> None:
    config = repo(tmp_path)
    ctx = context(tmp_path, config, host="192.168.64.13")
    step = s07_workers.configure(ctx)
    assert not any("avahi" in c for c in step.plan())
    step.action()  # type: ignore[misc]
    assert "avahi" not in (config / "machines" / "vm-shared.nix").read_text()
