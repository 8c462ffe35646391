"""Issue 13, items 4 and 5, against a real lab deployment (cache VM + one worker).

1. During the deploys, every process argument on the cache host is sampled (`ps -eo args`
   inside the host, and `/proc/*/cmdline` of the host's PID namespace): no secret appears.
2. The cache's keypair regenerated, `deploy --only 06,08` fails at 08, naming the worker,
   the key it trusts and the key the cache signs with; `runbook doctor` fails naming them
   too; a full deploy then goes past 00 (a warning: its 07 replaces the key) and fixes it.
3. After `cache.rotate_token_secret: true`, 06 logs root's client in again, so a push of a
   new path succeeds (it failed with AccessError when the old token stayed in the config).

Its own lab: state dir, subnet 10.231.34.0/25 and bridge rblabv.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import need
from tests.deploy_rig import Deploy, run_deploy
from tests.fault_scenarios import ArgvSampler

STATE = Path("/var/lib/runbook-lab-trusttest")
SUBNET, BRIDGE = "10.231.34.0/25", "rblabv"  # test_lab_warm_cache has 10.231.34.128/25
CACHE_HOST, WORKER_VM = "nixos-utm-cache", "vm-aarch64-utm"
API = f"http://{ipaddress.IPv4Network(SUBNET).network_address + 11}:8080/"  # the cache, host 0
PASSWORDS = {"root": "Tq7-live-iso-w2", "jqwang": "jqwang-trust-lab"}


@dataclass
class Rig:
    params: Path
    secrets: Path
    records: Path
    logs: Path
    tmp: Path
    samplers: list[ArgvSampler] = field(default_factory=list)
    secret_values: dict[str, str] = field(default_factory=dict)

    def deploy(self, *extra: str, params: Path | None = None) -> Deploy:
        log = self.logs / f"deploy-{len(list(self.logs.glob('*.log')))}.log"
        with ArgvSampler(CACHE_HOST) as sampler:
            d = run_deploy(params or self.params, self.secrets, self.records, log, *extra)
        self.samplers.append(sampler)
        self._collect_secrets()
        return d

    def _collect_secrets(self) -> None:
        """Every value the store has held (a rotation replaces them), and the PEM's lines."""
        for name in ("attic-token-secret", "attic-admin-token"):
            path = self.secrets / name
            if path.is_file():
                value = path.read_text().strip()
                self.secret_values[f"{name} {value[-8:]}"] = value
                if name == "attic-token-secret":
                    pem = base64.b64decode(value).decode().splitlines()
                    self.secret_values[f"PEM line of {value[-8:]}"] = pem[1]
        for user, password in PASSWORDS.items():
            self.secret_values[f"password of {user}"] = password


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    need(os.geteuid() == 0, "the lab needs root (network and mount namespaces)")
    for tool in ("sshd", "fish", "sudo", "rsync", "nix-store", "ip", "unshare", "make", "ps"):
        need(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(), f"needs {tool}")
    from runbook import lab
    from runbook.lab import deployment

    tmp = tmp_path_factory.mktemp("labtrust")
    lab_file = deployment.write(
        tmp / "lab.yaml", state_dir=STATE, subnet=SUBNET, bridge=BRIDGE, workers=1,
        passwords=PASSWORDS,
    )  # fmt: skip
    lab.down(lab_file)
    lab.up(lab_file, secrets_dir=tmp / "secrets")
    (tmp / "logs").mkdir()
    try:
        yield Rig(lab.params_path(lab_file), tmp / "secrets", tmp / "records", tmp / "logs", tmp)
    finally:
        lab.down(lab_file)


def _steps(record: Path) -> list[dict[str, str]]:
    manifest = json.loads((record / "manifest.json").read_text())
    return [{**s, "notebook": nb["notebook"]} for nb in manifest["notebooks"] for s in nb["steps"]]


def _live_key() -> str:
    with urllib.request.urlopen(f"{API}_api/v1/cache-config/main", timeout=10) as resp:
        return str(json.loads(resp.read())["public_key"])


def test_first_deploy_logs_in_without_the_token_in_any_argv(rig: Rig) -> None:
    d = rig.deploy()
    assert d.rc == 0, d.out[-3000:]
    login = next(s for s in _steps(d.record) if s["step"] == "attic login")
    assert login["outcome"] == "done" and "no token in any argv" in login["reason"], login
    assert "grants the token push on main" in login["reason"]
    (sampler,) = rig.samplers
    # the sampler saw the attic client run (so it would have seen `attic login ... TOKEN`)
    assert any("runbook.lab.attic.client" in line for line in sampler.lines), sampler.lines
    assert sampler.ps_samples > 20 and sampler.proc_samples > 200
    print(
        f"argv samples on {CACHE_HOST}: {sampler.ps_samples} ps, {sampler.proc_samples} /proc "
        f"sweeps, {len(sampler.lines)} distinct lines"
    )


def test_key_drift_fails_08_naming_the_worker_and_both_keys(rig: Rig) -> None:
    old = _live_key()
    token = (rig.secrets / "attic-admin-token").read_text().strip()
    request = urllib.request.Request(
        f"{API}_api/v1/cache-config/main",
        data=json.dumps({"keypair": "Generate"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="PATCH",
    )  # what `attic cache configure main --regenerate-keypair` sends
    urllib.request.urlopen(request, timeout=10).close()
    new = _live_key()
    assert new != old
    d = rig.deploy("--only", "06,08")
    assert d.rc != 0, d.out[-3000:]
    failed = [s for s in _steps(d.record) if s["outcome"] == "failed"]
    assert [s["notebook"][:2] for s in failed] == ["08"], failed
    reason = failed[0]["reason"]
    assert WORKER_VM in reason and old in reason and new in reason, reason
    # the doctor reaches the lab's cache (utm.bridged_subnet) and catches it in the checkout
    doctor = subprocess.run(
        [sys.executable, "-m", "runbook", "doctor", str(rig.params), "--json"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert doctor.returncode == 1, doctor.stdout[-2000:] + doctor.stderr[-2000:]
    (finding,) = [f for f in json.loads(doctor.stdout) if f["check"] == "worker-trusted-key"]
    assert finding["status"] == "fail", finding
    assert WORKER_VM in finding["finding"] and old in finding["finding"], finding
    assert new in finding["finding"] and new in finding["fix"], finding
    # a full deploy is not stopped at 00 (its 07 replaces the key: a warning there), 07
    # trusts the new key on the workers, then 08 passes
    fixed = rig.deploy()
    assert fixed.rc == 0, fixed.out[-3000:]
    steps = _steps(fixed.record)
    gate = next(s for s in steps if s["step"] == "check the nixos-config (runbook doctor)")
    assert gate["outcome"] != "failed", gate
    (preflight,) = fixed.record.glob("00-*.ipynb")  # the doctor's table, in 00's output
    assert "07 replaces it in this deploy" in preflight.read_text()
    trust = next(s for s in steps if "trusts the key" in s["step"])
    assert trust["outcome"] == "already done" and f"trusts its key {new}" in trust["reason"]


def test_a_rotated_token_secret_logs_in_again_and_pushes(rig: Rig) -> None:
    from runbook.lab import exec_in

    data = yaml.safe_load(rig.params.read_text())
    data["cache"]["rotate_token_secret"] = True
    rotated = rig.tmp / "rotate.yaml"
    rotated.write_text(yaml.safe_dump(data, sort_keys=False))
    before = (rig.secrets / "attic-admin-token").read_text()
    # a new path on the cache VM, so the push has something to upload with the new token
    made = exec_in(
        CACHE_HOST, ["sh", "-c", f"echo {time.time()} > /tmp/r && nix-store --add /tmp/r"]
    )
    assert made.exit_code == 0, made.stderr
    d = rig.deploy("--only", "05,06", params=rotated)
    assert d.rc == 0, d.out[-3000:]
    assert (rig.secrets / "attic-admin-token").read_text() != before
    steps = {s["step"]: s for s in _steps(d.record)}
    assert steps["attic login"]["outcome"] == "done", steps["attic login"]
    push = next(s for n, s in steps.items() if n.startswith("push the store"))
    assert push["outcome"] == "done" and "pushed 1 of" in push["reason"], push


def test_no_secret_in_any_sampled_argv(rig: Rig) -> None:
    """Runs last: every deploy above was sampled; each secret the store held, whole and in
    32-character slices, is in none of the argv lines."""
    assert len(rig.samplers) >= 3, "the deploys above were not all sampled"
    lines = set().union(*(s.lines for s in rig.samplers))
    hits = []
    for what, value in rig.secret_values.items():
        slices = {value[i : i + 32] for i in range(0, max(len(value) - 31, 1), 8)}
        hits += [(what, line[:120]) for line in lines for part in slices if part in line]
    samples = sum(s.ps_samples + s.proc_samples for s in rig.samplers)
    print(f"argv sweep: {samples} samples, {len(lines)} distinct lines, {len(hits)} hits")
    assert hits == [], hits[:3]
