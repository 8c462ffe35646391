"""Issue 15's measure, in the lab: `runbook init` against the lab's nixos-config, then `runbook
deploy --yes` on the file it wrote, takes the live-ISO lab to a worker substituting from the
cache with no other input: no password chosen or stored by anyone, no params edited by hand.

The lab plays the Mac: `runbook lab up --out` writes the values a Mac has and the lab gives
otherwise (the stand-ins' paths for utmctl/osascript/hs, the ISO, the bridged interface and
subnet, the consoles' first serial port, this machine's nix.conf lines). They reach init the
way a user's own do, through its documented flags (`--set KEY=VALUE`, `--address VM=ADDR` for
the live ISO's addresses, since nothing answers mDNS for the lab), never through a lab branch
in the product. HOME is the test's own: init finds the key in its ~/.ssh (the lab's key, which
the lab's nixos-config authorizes), and known_hosts is learned there on first use, as on a Mac
that never saw the VMs. A lab of its own (10.231.33.0/24, bridge rblabi), down when done.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_rig import need_lab

STATE = Path("/var/lib/runbook-lab-initdeploy")
SUBNET, BRIDGE = "10.231.33.0/24", "rblabi"
CACHE, WORKER = "10.231.33.11", "10.231.33.12"  # the live ISO's leases
USER_PASSWORD = "jqwang-lab"  # = the lab nixos-config's hashedPassword for jqwang
REPO = Path(__file__).resolve().parents[1]
# What the lab gives as a Mac's environment (lab up --out writes them), passed to init's --set.
MAC_SIDE = (
    "utm.utmctl",
    "utm.osascript",
    "utm.iso",
    "utm.host_interface",
    "utm.bridged_subnet",
    "console.hs",
    "console.serial_port",
    "local_nix_config",
)


@dataclass
class Run:
    rc: int
    out: str
    seconds: float


@dataclass
class Rig:
    tmp: Path
    home: Path
    params: Path  # what init wrote
    init: Run
    digest: str  # of the params right after init
    deploy: Run
    record: Path

    @property
    def secrets(self) -> Path:
        return self.tmp / "secrets"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("XDG_STATE_HOME", None)
    return env


def _runbook(home: Path, *args: str, timeout: float = 600) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "runbook", *args], capture_output=True, text=True,
        env=_env(home), check=False, timeout=timeout, stdin=subprocess.DEVNULL, cwd=home,
    )  # fmt: skip
    return Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _set_flags(environment: Path) -> list[str]:
    """--set KEY=VALUE for each Mac-side value of the lab's environment (VALUE is YAML)."""
    data = yaml.safe_load(environment.read_text())
    flags = []
    for key in MAC_SIDE:
        value = _get(data, key)
        flags += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: strings stay strings
    return flags


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    need_lab()
    from runbook import lab
    from runbook.lab import deployment

    tmp = tmp_path_factory.mktemp("initdeploy")
    # the lab: two hosts on the live ISO, no root password anywhere (none until 02's passwd)
    lab_file = deployment.write(
        tmp / "lab-live.yaml", state_dir=STATE, subnet=SUBNET, bridge=BRIDGE, workers=1,
        passwords={"jqwang": USER_PASSWORD}, phase="live", name="initdeploy",
    )  # fmt: skip
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True)
    lab.down(lab_file)
    environment = tmp / "lab-environment.yaml"  # the Mac side the lab gives, as lab up says it
    lab.up(lab_file, out=environment)
    try:
        # the user's key: the lab's, which its nixos-config authorizes (lab up splices it in)
        for name in ("id_ed25519", "id_ed25519.pub"):
            shutil.copy2(STATE / name, home / ".ssh" / name)
        params = tmp / "runbook.yaml"
        init = _runbook(
            home, "init", str(STATE / "nixos-config"), "--out", str(params), "--yes",
            "--workers", "vm-aarch64-utm",  # the lab plays one worker of the flake's four
            "--address", f"vm-aarch64-utm-cache={CACHE}", "--address", f"vm-aarch64-utm={WORKER}",
            *_set_flags(environment), timeout=120,
        )  # fmt: skip
        assert init.rc == 0, init.out
        digest = hashlib.sha256(params.read_bytes()).hexdigest()
        assert not (tmp / "secrets").exists()  # nobody stored a password
        deploy = _runbook(
            home, "deploy", str(params), "--yes", "--secrets", str(tmp / "secrets"),
            "--records", str(tmp / "records"),
        )  # fmt: skip
        records = [p for p in (tmp / "records").iterdir() if p.is_dir()]
        assert len(records) == 1, deploy.out[-3000:]
        yield Rig(tmp, home, params, init, digest, deploy, records[0])
    finally:
        lab.down(lab_file)


def _steps(record: Path) -> list[dict[str, str]]:
    manifest = json.loads((record / "manifest.json").read_text())
    return [{**s, "notebook": nb["notebook"]} for nb in manifest["notebooks"] for s in nb["steps"]]


def test_init_wrote_a_file_the_doctor_passes(rig: Rig) -> None:
    assert "no failing check" in rig.init.out, rig.init.out
    data = yaml.safe_load(rig.params.read_text())
    assert [v["name"] for v in data["vms"]] == ["vm-aarch64-utm-cache", "vm-aarch64-utm"]
    assert data["user"] == "jqwang" and data["identity"] == "~/.ssh/id_ed25519"
    assert all(re.fullmatch(r"([0-9A-F]{2}:){5}[0-9A-F]{2}", v["mac"]) for v in data["vms"])
    assert "bootstrap" not in data or "password" not in json.dumps(data["bootstrap"])
    print(f"runbook init: {rig.init.seconds:.1f} s")


def test_deploy_goes_through_with_no_other_input(rig: Rig) -> None:
    d = rig.deploy
    assert d.rc == 0, d.out[-4000:]
    steps = _steps(rig.record)
    assert not [s for s in steps if s["outcome"] == "failed"]
    done = {(s["notebook"][:2], s["step"].split(" ")[0]) for s in steps if s["outcome"] == "done"}
    for nb, word in [("01", "create"), ("02", "set"), ("03", "bootstrap0"), ("04", "switch")]:
        assert (nb, word) in done, (nb, word, sorted(done))
    assert {"05", "06", "07", "08"} <= {nb for nb, _ in done}
    # the password was the runbook's own: made by 02, 0600, typed on both consoles
    (made,) = [s for s in steps if s["step"].startswith("live root password in the secret")]
    assert made["outcome"] == "done" and "made a random one" in made["reason"], made
    stored = rig.secrets / "live-root-password"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"[a-x0-9]{26}", stored.read_text())
    typed = [s for s in steps if s["step"].startswith("set root's password")]
    assert len(typed) == 2 and all(s["reason"].startswith("typed on") for s in typed), typed
    # the params stayed as init wrote them: nothing edited by hand or by the deploy
    assert hashlib.sha256(rig.params.read_bytes()).hexdigest() == rig.digest
    print(f"init + deploy of the live-ISO lab: {rig.init.seconds + d.seconds:.1f} s")


def test_a_worker_substitutes_from_the_cache(rig: Rig) -> None:
    subs = [s for s in _steps(rig.record) if s["step"].startswith("substitute the cache VM's")]
    assert subs and all(s["outcome"] == "done" for s in subs), subs
    assert all("copying path '/nix/store/" in s["reason"] for s in subs), subs
    assert all(re.search(r"' from 'http://10\.231\.33\.\d+:8080/main'", s["reason"]) for s in subs)


def test_no_secret_in_the_record(rig: Rig) -> None:
    values = {"live root password": (rig.secrets / "live-root-password").read_text()}
    for name in ("attic-token-secret", "attic-admin-token"):
        values[name] = (rig.secrets / name).read_text().strip()
    values["user password"] = USER_PASSWORD
    files = [p for p in rig.record.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in [*files, rig.params]:
        text = path.read_bytes().decode(errors="replace")
        for what, value in values.items():
            assert value not in text, f"{what} found in {path}"
    assert all(v not in rig.deploy.out for v in values.values())
