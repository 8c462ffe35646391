"""Issue 13's faults, each breaking a real lab deployment (`runbook deploy` of the lab's
params) at a chosen step: the run ends within its bound, its record says which step failed
and why in one line, every notebook and the manifest parse, nothing recorded is lost, and
`runbook deploy --resume` finishes once the fault is lifted without redoing completed steps.

One lab for the module (cache VM + one worker; state dir /var/lib/runbook-lab-faults, subnet
10.231.30.0/24, bridge rblabr). Its first deploy is the SIGTERM scenario, whose resume
finishes the deployment; each scenario after it leaves the lab deployed again. The scenarios
are tests/fault_scenarios.py's, which bench/reliability.py runs too.

Before this file, only two of these faults broke a lab deployment, and neither resumed:
the regenerated key (test_lab_cache_trust: `--only 06,08` fails at 08, `--only 07,08` is a
new run) and a changed host key (test_lab_first_install, test_lab_make_ssh: refused). The
others (a frozen host, SIGTERM, two runs, a full disk) were tested on a loopback sshd or on
fault notebooks (test_reliability.py), not on a deployment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import fault_scenarios as fs
from tests.deploy_rig import need_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fs.FaultLab]:
    need_lab()
    rig = fs.FaultLab.create(tmp_path_factory.mktemp("labfaults"))
    try:
        yield rig
    finally:
        rig.down()


def _survived(outcome: fs.Outcome) -> None:
    print(
        f"{outcome.fault}: ended {outcome.took or 0:.1f} s after the fault (bound {outcome.bound:g})"
    )
    assert outcome.injected, outcome.why()
    assert outcome.in_bound, outcome.why()
    assert outcome.record == [], outcome.why()
    assert outcome.resume == [], outcome.why()


def test_sigterm_during_the_first_deploys_push(lab: fs.FaultLab) -> None:
    _survived(fs.sigterm_during_the_push(lab))


def test_the_registry_holds_no_password_and_status_works(lab: fs.FaultLab) -> None:
    """Item 7: lab.json is 0600 and holds none of the lab's passwords; `lab status --json`
    still lists every host from it."""
    registry = fs.STATE / "lab.json"
    assert registry.stat().st_mode & 0o777 == 0o600
    text = registry.read_text()
    assert [u for u, pw in fs.PASSWORDS.items() if pw in text] == []
    proc = subprocess.run(
        [sys.executable, "-m", "runbook", "lab", "status", "--json", "--lab", str(lab.lab_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    hosts = {h["name"]: h for h in json.loads(proc.stdout)}
    assert set(hosts) == {fs.CACHE_HOST, fs.WORKER_HOST}
    assert hosts[fs.CACHE_HOST]["address"] == fs.SUBNET.rsplit(".", 1)[0] + ".11"


def test_a_plan_of_the_lab_touches_no_nix_store_and_no_home(lab: fs.FaultLab) -> None:
    """Item 7: `runbook plan` of the lab's params (every notebook) leaves the Nix database,
    the store and its roots, and an empty HOME as they were."""
    home = lab.tmp / "plan-home"
    home.mkdir()
    before = fs.NixSnapshot.take()
    proc = subprocess.run(
        [sys.executable, "-m", "runbook", "plan", str(lab.params),
         "--records", str(lab.tmp / "plan-records"), "--secrets", str(lab.secrets)],
        capture_output=True, text=True, timeout=300, check=False, env=fs.clean_env(home),
    )  # fmt: skip
    after = fs.NixSnapshot.take()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert before.changes(after) == []
    assert fs.tree_listing(home) == []


@pytest.mark.parametrize("scenario", fs.SCENARIOS, ids=lambda s: s.__name__)
def test_a_fault_is_survived_and_resumed(lab: fs.FaultLab, scenario: fs.Scenario) -> None:
    _survived(scenario(lab))
