"""The handbook's first install, for real: a lab whose hosts boot the live ISO (`phase: live`).

`runbook deploy PARAMS --yes` goes 01 → 02 (root's password made by the runbook, stored, typed
with `passwd` on each console: nobody chose it, the lab stored none) → 03
(`make vm/bootstrap0`, which reinstalls and reboots: new host keys, root's password now the
Makefile's; then the ISO removed: the VM powers off and boots from its disk, a real restart of
the host's processes) → 04 (vm/copy + vm/switch as root, then the user + key, lesson 7) → 05-08, and ends
with the worker substituting from the cache. A lab of its own (state dir, subnet, bridge), so
lab/lab.yaml's lab and the other lab tests are untouched; it is down when the module ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest
import yaml

from tests.conftest import need
from tests.deploy_rig import Deploy, need_lab, run_deploy

STATE = Path("/var/lib/runbook-lab-firstinstall")
SUBNET, BRIDGE = "10.231.13.0/24", "rblabf"
CACHE, WORKER = "10.231.13.11", "10.231.13.12"  # the live ISO's leases
# bootstrap0's reboot comes back as another DHCP client, at the next free addresses (lesson 8)
NEW_CACHE, NEW_WORKER = "10.231.13.13", "10.231.13.14"
STALE = "10.231.13.99"  # the worker's address in the params: nothing answers there
HOSTS = ("nixos-utm-cache", "nixos-utm-worker1")
DEPLOY_VMS = ("vm-aarch64-utm-cache", "vm-aarch64-utm")  # 01 creates them, with the ISO
USER_PASSWORD = "jqwang-lab"  # = the lab nixos-config's hashedPassword for jqwang
LIVE_SECRET = "live-root-password"  # params bootstrap.password_secret: 02 makes it there
BOOTSTRAP0_ROOT = "root"  # the Makefile's users.users.root.initialPassword (§1)
DEPLOY_GOAL_S = 90.0
REPO = Path(__file__).resolve().parents[1]


class ArgvSampler:
    """Every distinct argv on this machine (the Mac side and, in their nested PID namespaces,
    the lab hosts) while a deploy runs, from /proc/PID/cmdline; searched afterwards, since the
    live password is made during the deploy."""

    def __init__(self) -> None:
        self.lines: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                    except OSError:
                        continue
                    self.lines.add(raw.replace(b"\0", b" ").decode(errors="replace"))
            self.samples += 1
            time.sleep(0.02)


@dataclass
class Rig:
    params: Path
    secrets: Path
    records: Path
    first: Deploy
    keys_before: dict[str, str]
    inits_before: dict[str, int]  # each host's init (PID 1) before the deploy
    argv: list[ArgvSampler] = field(default_factory=list)

    def deploy(self, *extra: str) -> Deploy:
        n = len(list(self.records.glob("*.out")))
        with ArgvSampler() as sampler:
            d = run_deploy(
                self.params, self.secrets, self.records, self.records / f"deploy-{n}.out", *extra
            )
        self.argv.append(sampler)
        return d

    @property
    def live_root(self) -> str:
        """The password 02 made and typed on the consoles (read back from the store)."""
        return (self.secrets / LIVE_SECRET).read_text()


def _host_key(address: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["ssh-keyscan", "-T", "2", "-t", "ed25519", address],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if r.stdout.strip():
            return r.stdout.split()[-1]
        time.sleep(0.1)
    raise AssertionError(f"{address}: no host key")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    need_lab()
    need(shutil.which("ssh-keyscan") is not None, "needs ssh-keyscan")
    from runbook import lab
    from runbook.lab import deployment

    tmp = tmp_path_factory.mktemp("firstinstall")
    # no root password in the lab: the live ISO has none until 02 types the one it makes
    lab_file = deployment.write(
        tmp / "lab-live.yaml", state_dir=STATE, subnet=SUBNET, bridge=BRIDGE, workers=1,
        passwords={"jqwang": USER_PASSWORD}, phase="live", name="firstinstall",
    )  # fmt: skip
    secrets = tmp / "secrets"  # empty: nobody chooses or stores the live password
    records = tmp / "records"
    records.mkdir()
    # the worker's params address is stale: only 02's console call-back finds it (lesson 8),
    # and 03-09 of the run must use what 02 found
    data = yaml.safe_load(lab_file.read_text())
    data["vms"][1]["address"] = STALE
    lab_file.write_text(yaml.safe_dump(data, sort_keys=False))
    lab.down(lab_file)
    lab.up(lab_file, secrets_dir=secrets)
    params = lab.params_path(lab_file)
    from runbook.lab.host import init_pid

    try:
        assert _neighbours() == []  # lab up sent the hosts nothing: no ARP entry yet
        assert not (secrets / LIVE_SECRET).exists()  # the lab stored no live password
        for address in (CACHE, WORKER):  # and root has none on the live ISO yet
            assert "Permission denied" in _ssh("root", address, "").stderr
        keys = {a: _host_key(a) for a in (CACHE, WORKER)}
        inits = {h: init_pid(h) or 0 for h in HOSTS}
        # as on a Mac that never talked to the new VMs: 02 must fill the ARP table itself
        subprocess.run(["ip", "neigh", "flush", "dev", BRIDGE], check=True)
        os.environ.pop("RUNBOOK_ROOT_PASSWORD", None)  # no input: the deploy makes its own
        rig = Rig(params, secrets, records, Deploy(0, "", 0.0, records), keys, inits)
        rig.first = rig.deploy()
        yield rig
    finally:
        lab.down(lab_file)


def _neighbours() -> list[str]:
    """This machine's (the Mac side's) ARP entries on the lab bridge that know a MAC."""
    out = subprocess.run(
        ["ip", "neigh", "show", "dev", BRIDGE], capture_output=True, text=True, check=False
    ).stdout
    return [line for line in out.splitlines() if "lladdr" in line]


def _steps(record: Path) -> list[dict[str, str]]:
    manifest = json.loads((record / "manifest.json").read_text())
    return [{**s, "notebook": nb["notebook"]} for nb in manifest["notebooks"] for s in nb["steps"]]


def _utm_drives() -> dict[str, list[tuple[bool, str | None]]]:
    """(removable, image) of each drive of the deployment's VMs in the stand-ins' UTM state."""
    state = json.loads((STATE / "mac" / "utm.json").read_text())
    return {
        vm["name"]: [(d["removable"], d["source"]) for d in vm["drives"]]
        for vm in state["vms"]
        if vm["name"] in DEPLOY_VMS
    }


def _ssh(user: str, address: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """OpenSSH with the lab's known_hosts, as a user would after the deploy."""
    opts = ["-o", f"UserKnownHostsFile={STATE / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5"]  # fmt: skip
    env = dict(os.environ)
    if password is None:
        opts += ["-o", "BatchMode=yes", "-i", str(STATE / "id_ed25519")]
    else:
        opts += ["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"]
        pw = STATE / "test-password"
        pw.write_text(password)
        pw.chmod(0o600)
        env.update(
            SSH_ASKPASS=str(REPO / "runbook" / "askpass"), SSH_ASKPASS_REQUIRE="force",
            DISPLAY=":0", RUNBOOK_ASKPASS_FILE=str(pw),
        )  # fmt: skip
    argv = ["ssh", *opts, f"{user}@{address}", "echo $SHELL; sudo -n id -un"]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=30, check=False,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def test_first_install_deploy_goes_through_01_to_08(rig: Rig) -> None:
    d = rig.first
    assert d.rc == 0, d.out[-4000:]
    steps = _steps(d.record)
    assert not [s for s in steps if s["outcome"] == "failed"]
    done = {(s["notebook"][:2], s["step"].split(" ")[0]) for s in steps if s["outcome"] == "done"}
    for nb, word in [("02", "set"), ("03", "bootstrap0"), ("04", "copy"), ("04", "switch")]:
        assert (nb, word) in done, (nb, word, sorted(done))
    assert {"05", "06", "07", "08"} <= {nb for nb, _ in done}
    (made,) = [s for s in steps if s["step"].startswith("live root password in the secret")]
    assert (
        made["outcome"] == "done"
        and "made a random one (26 characters, 132 bits)" in (made["reason"])
    )
    stored = rig.secrets / LIVE_SECRET
    assert stored.stat().st_mode & 0o777 == 0o600 and re.fullmatch(r"[a-x0-9]{26}", rig.live_root)
    typed = [s for s in steps if s["step"].startswith("set root's password")]
    assert len(typed) == 2 and all(s["reason"].startswith("typed on") for s in typed), typed
    assert all("fresh SSH login as root" in s["reason"] for s in typed), typed
    switched = {s["host"]: s["reason"] for s in steps if s["step"].startswith("switch ")}
    (cache_switch,) = [r for h, r in switched.items() if "cache" in h]
    assert "exit 4 accepted" in cache_switch and "/var/lib/atticd/env" in cache_switch
    assert all("fresh SSH login" in r for r in switched.values()), switched
    (worker_switch,) = [r for h, r in switched.items() if "cache" not in h]
    assert "exit 4" not in worker_switch
    # 02 found the live ISO (MAC from UTM's configuration, ARP after the sweep) and handed
    # it to 03; 03 found the new lease after bootstrap0's reboot and handed that to 04-09
    addresses = json.loads((d.record / "addresses.json").read_text())
    assert {k: v["address"] for k, v in addresses.items()} == {
        "vm-aarch64-utm-cache": NEW_CACHE, "vm-aarch64-utm": NEW_WORKER,
    }  # fmt: skip
    assert {v["method"] for v in addresses.values()} == {"arp"}
    # 0600 as written; 0400 once the ended record is sealed (records.seal clears write bits only)
    assert (d.record / "addresses.json").stat().st_mode & 0o777 in (0o600, 0o400)
    log = (d.record / "run.log").read_text()
    assert f"{WORKER} (params say {STALE}), found by arp" in log
    assert "MAC from UTM's configuration" in log and f"addresses of {SUBNET} on port 22" in log
    assert f"vm-aarch64-utm: {WORKER} (found by arp in this run)" in log  # 03
    assert f"vm-aarch64-utm: now at {NEW_WORKER} (found by arp)" in log  # after the reboot
    assert f"vm-aarch64-utm: {NEW_WORKER} (found by arp in this run)" in log  # 04-09
    assert f"NIXADDR={WORKER}" in log and f"NIXADDR={NEW_WORKER}" in log
    assert f"NIXADDR={STALE}" not in log
    # 03 removes the ISO 01 attached: the VM powers off and boots from its disk, for real
    removed = [s for s in steps if s["step"].startswith("remove the ISO from ")]
    assert [s["outcome"] for s in removed] == ["done", "done"], removed
    assert all("started from disk (was started)" in s["reason"] for s in removed), removed
    assert _utm_drives() == {vm: [(False, None)] for vm in DEPLOY_VMS}
    from runbook.lab.host import init_pid

    for name in HOSTS:  # another init: every process of the host was stopped and started
        assert init_pid(name) not in (None, rig.inits_before[name]), name
    print(f"first-install lab deploy: {d.seconds:.1f} s (goal < {DEPLOY_GOAL_S:g} s)")
    assert d.seconds < DEPLOY_GOAL_S * 1.5, d.seconds


def test_root_refused_after_04_and_the_user_with_key_works(rig: Rig) -> None:
    for address in (NEW_CACHE, NEW_WORKER):
        for password in (BOOTSTRAP0_ROOT, rig.live_root):
            refused = _ssh("root", address, password)
            assert refused.returncode == 255 and "Permission denied" in refused.stderr, refused
        user = _ssh("jqwang", address)
        assert user.stdout.split() == ["/usr/bin/fish", "root"], user.stderr


def test_bootstrap0_replaced_the_host_keys_and_logged_both(rig: Rig) -> None:
    from runbook.sections.common import known_fingerprints

    log = (rig.first.record / "run.log").read_text()
    for address, new in ((CACHE, NEW_CACHE), (WORKER, NEW_WORKER)):
        now = _host_key(new)  # the reinstalled system, at its new lease
        assert now != rig.keys_before[address]  # the reinstall made new keys
        (new_fp,) = known_fingerprints(STATE / "known_hosts", new)
        old_fp = _fingerprint(rig.keys_before[address])
        assert f"host key of {address}: was {old_fp}; now {new_fp}" in log


def _fingerprint(b64: str) -> str:
    from runbook.sections.vm_console import key_fingerprint

    return f"ssh-ed25519 {key_fingerprint(b64)}"


def test_a_second_deploy_changes_nothing(rig: Rig) -> None:
    # The reinstall came back at a new lease (lesson 8), so the cache IP in the params is
    # stale, and 07 gave the workers the one this run found: a user who gives IPs updates
    # them (the handbook's advice is the mDNS name, which the lab's Mac side cannot resolve).
    data = yaml.safe_load(rig.params.read_text())
    data["vms"][0]["address"] = data["cache"]["host"] = NEW_CACHE
    rig.params.write_text(yaml.safe_dump(data, sort_keys=False))
    again = rig.deploy()
    assert again.rc == 0, again.out[-3000:]
    changed = [
        (s["notebook"], s["step"])
        for s in _steps(again.record)
        if s["outcome"] == "done" and s["notebook"][:2] in {"03", "04", "05", "06", "07", "09"}
    ]
    assert changed == [], changed
    removed = [s for s in _steps(again.record) if s["step"].startswith("remove the ISO from ")]
    assert [s["outcome"] for s in removed] == ["already done", "already done"], removed
    assert _utm_drives() == {vm: [(False, None)] for vm in DEPLOY_VMS}
    # its own addresses, found again by its own 02: nothing carried over from the first run
    assert json.loads((again.record / "addresses.json").read_text())["vm-aarch64-utm"]["found"]
    assert f"{NEW_WORKER} (params say {STALE}), found by arp" in again.out
    assert "replacing host key" not in again.out and "was ssh-ed25519" not in again.out


def test_remove_iso_starts_a_vm_left_stopped(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ISO but the VM stopped (a run that failed after the removal): not done; the rerun
    starts it and waits for the installed login, then it is already done."""
    from runbook.engine.steps import Outcome, open_context
    from runbook.lab.host import init_pid
    from runbook.mac import utm
    from runbook.sections import s03_bootstrap0

    monkeypatch.chdir(rig.params.parent)
    ctx = open_context(
        s03_bootstrap0.NOTEBOOK, str(rig.params), "deploy", False, str(rig.secrets),
        str(rig.first.record),  # the run's addresses: the cache is at its new lease
    )  # fmt: skip
    utmctl = str(ctx.dep.utm.utmctl)  # the params' utmctl, as on a Mac
    vm = ctx.dep.cache_vm
    utm.stop(vm.name, utmctl=utmctl)  # powers the host off: nothing of it runs
    assert init_pid(HOSTS[0]) is None
    try:
        assert ctx.run(s03_bootstrap0.remove_iso(ctx, vm)) is Outcome.DONE
        assert utm.status(vm.name, utmctl=utmctl) is utm.VmStatus.STARTED
        assert init_pid(HOSTS[0]) is not None  # booted again from its tree
        assert ctx.run(s03_bootstrap0.remove_iso(ctx, vm)) is Outcome.ALREADY
    finally:
        ctx.close()
    assert "removed 0 removable drive(s)" in ctx.records[0]["reason"]


def test_the_worker_substitutes_from_the_cache(rig: Rig) -> None:
    (sub,) = [
        s for s in _steps(rig.first.record) if s["step"].startswith("substitute the cache VM's")
    ]
    assert sub["outcome"] == "done"
    assert f"' from 'http://{NEW_CACHE}:8080/main'" in sub["reason"]
    assert "copying path '/nix/store/" in sub["reason"]


def test_04_repairs_lost_host_keys_over_the_kept_session(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lesson 3 for real: sshd loses its host keys under a session kept open; 04's fresh-login
    check fails, repairs over that session (ssh-keygen -A, sshd restart, new keys pinned from
    it), and passes only once a fresh connection works."""
    from runbook.engine.steps import open_context
    from runbook.lab import exec_in
    from runbook.sections import s04_bootstrap

    monkeypatch.chdir(rig.params.parent)
    ctx = open_context(
        s04_bootstrap.NOTEBOOK, str(rig.params), "deploy", False, str(rig.secrets),
        str(rig.first.record),  # the run's addresses: the cache is at its new lease
    )  # fmt: skip
    vm = ctx.dep.cache_vm
    keeper = ctx.connection(vm)  # the session held open across the "switch"
    old = _host_key(NEW_CACHE)
    broken = exec_in(HOSTS[0], ["sh", "-c", "rm -f /etc/ssh/ssh_host_* && systemctl restart sshd"])
    assert broken.exit_code != 0  # sshd: no hostkeys available -- exiting
    assert "Connection refused" in _ssh("jqwang", NEW_CACHE).stderr
    try:
        detail = s04_bootstrap.fresh_login(ctx, vm, keeper)
    finally:
        ctx.close()
    assert "repaired over the kept session" in detail, detail
    assert _host_key(NEW_CACHE) != old  # ssh-keygen -A made new keys, pinned from the session
    user = _ssh("jqwang", NEW_CACHE)  # OpenSSH, strict, with the pinned key
    assert user.stdout.split() == ["/usr/bin/fish", "root"], user.stderr


def test_an_unexpected_host_key_change_is_still_refused(rig: Rig) -> None:
    from runbook.lab import exec_in

    rekey = "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A -q && systemctl restart sshd"
    r = exec_in(HOSTS[1], ["sh", "-c", rekey])
    assert r.exit_code == 0, r.stderr
    kh_before = (STATE / "known_hosts").read_text()
    refused = rig.deploy("--only", "02,04")  # 02: this run's address for 04
    assert refused.rc == 1, refused.out[-3000:]
    # (a long reason is shown by its tail: HostKeyChangedError's end, hostkeys.py)
    assert (
        "the host now presents ssh-ed25519" in refused.out and "--replace-host-key" in refused.out
    )
    assert "set root's password on vm-aarch64-utm" in refused.out  # 02 refused it, typed nothing
    # 03 and 04's steps refuse it too (their checks never read it as "not installed yet")
    from runbook.engine.steps import StepFailed, open_context
    from runbook.sections import s03_bootstrap0, s04_bootstrap

    for module, make_step in [(s03_bootstrap0, "bootstrap0"), (s04_bootstrap, "copy")]:
        ctx = open_context(
            module.NOTEBOOK,
            str(rig.params),
            "deploy",
            True,
            str(rig.secrets),
            str(rig.first.record),
        )
        step = getattr(module, make_step)(ctx, ctx.dep.vm("vm-aarch64-utm"))
        changed = r"host now presents ssh-ed25519 .* ssh://\w+@10\.231\.13\.14 "
        with pytest.raises(StepFailed, match=changed):
            ctx.run(step)
        ctx.close()
    assert (STATE / "known_hosts").read_text() == kh_before  # nothing accepted it
    blocked = _ssh("jqwang", NEW_WORKER)
    assert blocked.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in blocked.stderr


def test_no_password_or_secret_in_the_records(rig: Rig) -> None:
    values = {"live root password": rig.live_root, "user password": USER_PASSWORD}
    for name in ("attic-token-secret", "attic-admin-token"):
        values[name] = (rig.secrets / name).read_text().strip()
    files = [p for p in rig.records.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        text = path.read_bytes().decode(errors="replace")
        for what, value in values.items():
            assert value not in text, f"{what} found in {path}"


def test_the_live_password_is_in_no_argv(rig: Rig) -> None:
    """Sampled on this machine and in the lab hosts through every deploy of the module."""
    lines = set().union(*(s.lines for s in rig.argv))
    samples = sum(s.samples for s in rig.argv)
    assert samples > 50 and any("nixos-install" in line or "make" in line for line in lines)
    hits = [line for line in lines if rig.live_root in line]
    print(f"argv sweep: {samples} samples, {len(lines)} distinct lines, {len(hits)} hits")
    assert hits == []


def test_an_address_that_no_longer_answers_is_not_used(tmp_path: Path) -> None:
    """A resumed run's recorded address that stopped answering falls back to the params."""
    from runbook.core.params import load
    from runbook.engine.steps import record_address, with_run_addresses
    from runbook.lab import deployment

    lab_file = deployment.write(
        tmp_path / "p.yaml", state_dir=tmp_path, subnet="127.0.0.0/24", bridge="rbx"
    )
    data = yaml.safe_load(lab_file.read_text())
    del data["lab"]  # the deployment part, as lab up writes it
    data.update(nixos_config=str(tmp_path), identity=str(tmp_path / "id_ed25519"))
    params = tmp_path / "params.yaml"
    for vm in data["vms"]:
        vm["port"] = 9  # discard: nothing listens on loopback here
    params.write_text(yaml.safe_dump(data))
    record_address(tmp_path, "vm-aarch64-utm", "127.0.0.77", "console")
    loaded = with_run_addresses(load(params), tmp_path)
    assert loaded.deployment.vm("vm-aarch64-utm").address == "127.0.0.12"
