"""Issue 15, items 5 and 6, against a real lab deployment: one params file holding the cache
VM and two workers, deployed whole.

1. 07 pushes each worker's system closure from the worker, whose root client is logged in
   with the workers' push-only token (its config 0600, the token in no argv); the record says
   how many paths and bytes each push sent, and a second deploy sends nothing.
2. 08: the second worker substitutes the first worker's system from the cache (Nix's log
   names the cache), a path it never built and only the warm push put there.
3. The push token can push and pull on the cache, nothing else.

Its own lab: state dir, subnet 10.231.34.128/25 and bridge rblabw.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy_rig import Deploy, need_lab, run_deploy

STATE = Path("/var/lib/runbook-lab-warmtest")
SUBNET, BRIDGE = "10.231.34.128/25", "rblabw"  # test_lab_cache_trust has 10.231.34.0/25
API = f"http://{ipaddress.IPv4Network(SUBNET).network_address + 11}:8080/"  # the cache, host 0
WORKERS = ("vm-aarch64-utm", "vm-aarch64-utm-2")
HOSTS = ("nixos-utm-worker1", "nixos-utm-worker2")
SENT_RE = re.compile(r"sent (\d+) paths, (\d+) bytes of NAR")


@dataclass
class Rig:
    params: Path
    secrets: Path
    records: Path
    logs: Path
    argv: set[str] = field(default_factory=set)  # every argv seen on the first worker

    def deploy(self, *extra: str) -> Deploy:
        from tests.fault_scenarios import ArgvSampler

        log = self.logs / f"deploy-{len(list(self.logs.glob('*.log')))}.log"
        with ArgvSampler(HOSTS[0]) as sampler:
            d = run_deploy(self.params, self.secrets, self.records, log, *extra)
        self.argv |= sampler.lines
        return d


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    need_lab()
    from runbook import lab
    from runbook.lab import deployment

    tmp = tmp_path_factory.mktemp("labwarm")
    lab_file = deployment.write(
        tmp / "lab.yaml", state_dir=STATE, subnet=SUBNET, bridge=BRIDGE, workers=2, name="warm"
    )
    lab.down(lab_file)
    lab.up(lab_file, secrets_dir=tmp / "secrets")
    # the handbook's workers share one configuration (hostName "dev"), so their systems are
    # one store path; worker 2 gets a hostName of its own here, so each worker's system is
    # a path the other lacks (what a second, different worker brings)
    second = STATE / "nixos-config" / "machines" / "vm-aarch64-utm-2.nix"
    text = second.read_text()
    assert "imports = [ ./vm-aarch64-utm.nix ];" in text, text
    second.write_text(
        text.replace(
            "imports = [ ./vm-aarch64-utm.nix ];",
            'imports = [ ./vm-aarch64-utm.nix ];\n  networking.hostName = "dev-2";',
        )
    )
    (tmp / "logs").mkdir()
    try:
        yield Rig(lab.params_path(lab_file), tmp / "secrets", tmp / "records", tmp / "logs")
    finally:
        lab.down(lab_file)


def _steps(record: Path) -> list[dict[str, str]]:
    manifest = json.loads((record / "manifest.json").read_text())
    return [{**s, "notebook": nb["notebook"]} for nb in manifest["notebooks"] for s in nb["steps"]]


def _system(host: str) -> str:
    from runbook.lab import exec_in

    got = exec_in(host, ["readlink", "-f", "/nix/var/nix/profiles/system"])
    assert got.exit_code == 0, got.stderr
    return got.stdout.strip()


def _valid(host: str, path: str) -> bool:
    from runbook.lab import exec_in

    return exec_in(host, ["nix-store", "--check-validity", path]).exit_code == 0


def test_a_full_deploy_warms_the_cache_and_a_worker_substitutes_the_others_system(
    rig: Rig,
) -> None:
    d = rig.deploy()
    assert d.rc == 0, d.out[-4000:]
    steps = _steps(d.record)
    pushes = [s for s in steps if "system closure to main" in s["step"]]
    assert [s["notebook"][:2] for s in pushes] == ["07", "07"], pushes
    for push in pushes:
        assert push["outcome"] == "done", push
        m = SENT_RE.search(push["reason"])
        assert m is not None, push["reason"]
        print(f"{push['host']}: {push['reason']}")
    # each worker's own system is unique to it: its push sent at least that path
    assert all(int(SENT_RE.search(p["reason"]).group(1)) >= 1 for p in pushes)  # type: ignore[union-attr]
    assert all(int(SENT_RE.search(p["reason"]).group(2)) > 0 for p in pushes)  # type: ignore[union-attr]
    logins = [s for s in steps if s["step"].startswith("attic login on ")]
    assert len(logins) == 2 and all("no token in any argv" in s["reason"] for s in logins), logins
    peer = next(s for s in steps if "substitutes" in s["step"] and "a warm cache" in s["step"])
    first = _system(HOSTS[0])
    assert peer["outcome"] == "done", peer
    assert f"copying path '{first}' from 'http://" in peer["reason"], peer["reason"]
    assert _valid(HOSTS[1], first)


def test_a_second_deploy_sends_nothing(rig: Rig) -> None:
    d = rig.deploy("--only", "07,08")
    assert d.rc == 0, d.out[-4000:]
    steps = _steps(d.record)
    pushes = [s for s in steps if "system closure to main" in s["step"]]
    assert len(pushes) == 2 and all(s["outcome"] == "already done" for s in pushes), pushes
    peer = next(s for s in steps if "a warm cache" in s["step"])
    assert peer["outcome"] == "already done", peer


def test_the_workers_token_pushes_and_pulls_and_nothing_else(rig: Rig) -> None:
    import urllib.error
    import urllib.request

    token = (rig.secrets / "attic-worker-push-token").read_text().strip()
    assert oct((rig.secrets / "attic-worker-push-token").stat().st_mode & 0o777) == "0o600"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    push = urllib.request.Request(
        f"{API}_api/v1/get-missing-paths",
        data=json.dumps({"cache": "main", "store_path_hashes": []}).encode(),
        headers=headers,
        method="POST",
    )
    urllib.request.urlopen(push, timeout=10).close()  # push permission: 200
    for method, body in (("PATCH", {"is_public": False}), ("DELETE", None)):
        req = urllib.request.Request(
            f"{API}_api/v1/cache-config/main",
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers,
            method=method,
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 403, (method, refused.value.code)


def test_the_push_token_is_in_no_argv_on_the_worker(rig: Rig) -> None:
    """Runs last: the worker's login and push were sampled (ps and /proc/*/cmdline)."""
    token = (rig.secrets / "attic-worker-push-token").read_text().strip()
    assert any("runbook.lab.attic.client" in line for line in rig.argv), len(rig.argv)
    slices = {token[i : i + 24] for i in range(0, len(token) - 23, 8)}
    assert [line[:80] for line in rig.argv if any(p in line for p in slices)] == []
