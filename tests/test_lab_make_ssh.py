"""`make vm/copy` as the user through the runbook, against a lab host's real sshd (issue 10, 5).

The lab's Makefile has upstream's `SSH_OPTIONS` (PubkeyAuthentication=no, known_hosts
/dev/null, StrictHostKeyChecking=no); the runbook passes its own on make's command line. So:
the copy works with the key alone (no password in the store, no askpass), and a host key
other than the known one is refused (the Makefile's own options would have taken it).
A module-scoped lab of its own: 10.231.26.0/24 on bridge rblabm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need

STATE = Path("/var/lib/runbook-lab-maketest")
SUBNET, BRIDGE = "10.231.26.0/24", "rblabm"
WORKER_HOST = "nixos-utm-worker1"
# the user's password exists on the host, but nowhere the runbook could read it
PASSWORDS = {"root": "Mk-live-iso-51x", "jqwang": "jqwang-lab"}


@dataclass
class Rig:
    ctx: object  # runbook.engine.steps.Context
    config: Path  # the lab's working copy of the nixos-config (what vm/copy sends)
    params: Path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    need(os.geteuid() == 0, "the lab needs root (network and mount namespaces)")
    for tool in ("sshd", "fish", "sudo", "rsync", "ip", "unshare", "make", "nsenter"):
        need(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(), f"needs {tool}")
    from runbook import lab
    from runbook.core.params import load
    from runbook.core.secrets import SecretStore
    from runbook.engine.steps import Context, Mode
    from runbook.lab import deployment

    tmp = tmp_path_factory.mktemp("labmake")
    params = deployment.write(
        tmp / "lab.yaml", state_dir=STATE, subnet=SUBNET, bridge=BRIDGE, workers=1,
        passwords=PASSWORDS, name="labmake",
    )  # fmt: skip
    lab.down(params)
    lab.up(params, secrets_dir=tmp / "secrets")
    try:
        deployment_params = load(lab.params_path(params))  # what lab up wrote
        ctx = Context(
            "09-update", deployment_params, Mode.DEPLOY, True, SecretStore(tmp / "secrets")
        )
        yield Rig(ctx, STATE / "nixos-config", params)
    finally:
        lab.down(params)


def _on_host(argv: list[str]) -> str:
    from runbook.lab import exec_in

    return str(exec_in(WORKER_HOST, argv).stdout)


def _no_askpass(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "RUNBOOK_ASKPASS_FILE", "SSH_AUTH_SOCK"):
        monkeypatch.delenv(name, raising=False)


def test_vm_copy_as_the_user_needs_only_the_key(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook.sections.common import run_make, user_switch

    ctx = rig.ctx
    _no_askpass(monkeypatch)
    assert ctx.store.get("jqwang-password") is None  # type: ignore[attr-defined]
    (worker,) = ctx.dep.workers  # type: ignore[attr-defined]
    marker = "copied-with-the-key"
    (rig.config / marker).write_text("1\n")
    how = user_switch(ctx, worker)  # type: ignore[arg-type]
    # the Makefile's own options ask a password: with none to give, the copy fails (what
    # the runbook ran before; in a session of its own so ssh finds no terminal to ask on)
    own = [a for a in how.copy.argv if not a.startswith("SSH_OPTIONS=")]
    before = subprocess.run(
        own, capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    assert before.returncode != 0 and "Permission denied" in before.stderr, before
    assert _on_host(["cat", f"/nix-config/{marker}"]) == ""
    # the runbook's argv: the key only, the host key checked against the lab's known_hosts
    ctx.connection(worker).run("true")  # type: ignore[attr-defined]
    assert run_make(how.copy, None).startswith("vm/copy finished in ")
    assert _on_host(["cat", f"/nix-config/{marker}"]) == "1\n"


def test_a_changed_host_key_is_refused(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook.core.errors import HostKeyChangedError
    from runbook.sections.common import run_make, user_switch

    _no_askpass(monkeypatch)
    ctx = rig.ctx
    (worker,) = ctx.dep.workers  # type: ignore[attr-defined]
    key = "/etc/ssh/ssh_host_ed25519_key"
    script = (
        f"rm -f {key} {key}.pub && ssh-keygen -q -t ed25519 -N '' -f {key} && "
        f"systemctl restart sshd && cat {key}.pub"
    )
    regenerated = _on_host(["bash", "-c", script])
    assert regenerated.startswith("ssh-ed25519 "), regenerated
    marker = "copied-past-a-new-host-key"
    (rig.config / marker).write_text("1\n")
    how = user_switch(ctx, worker)  # type: ignore[arg-type]
    with pytest.raises(HostKeyChangedError, match=r"vm/copy to 10\.231\.26\.12: ssh refused"):
        run_make(how.copy, None)
    assert _on_host(["cat", f"/nix-config/{marker}"]) == ""
    # the Makefile's own options take the new key (known_hosts /dev/null): with the password
    # the same copy goes through, so only the runbook's options refused it
    from runbook.lab import askpass_env

    own = [a for a in how.copy.argv if not a.startswith("SSH_OPTIONS=")]
    taken = subprocess.run(
        own, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **askpass_env("jqwang", rig.params)},
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    assert taken.returncode == 0, taken.stderr
    assert _on_host(["cat", f"/nix-config/{marker}"]) == "1\n"
