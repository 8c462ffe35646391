"""After the switch (notebook 04, issue 10 item 2): a refused key is its own error, "the key is
not authorized for USER", never read as lost host keys (no `ssh-keygen -A` over the kept root
session). Against the real OpenSSH sshd of tests/conftest.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from runbook.core.errors import AuthenticationRefusedError, ConnectError, RunbookError
from runbook.core.models import Host
from runbook.core.params import load
from runbook.core.secrets import SecretStore
from runbook.engine.steps import Context, Mode, StepFailed
from runbook.sections import s04_bootstrap
from runbook.transport.remote import Connection
from tests.sshd_rig import FISH_USER, Sshd, free_port


class Keeper:
    """The root session kept across the switch: still connected; a repair would use it."""

    connected = True

    def __init__(self) -> None:
        self.ran: list[Any] = []

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.ran.append((args, kwargs))
        raise AssertionError(f"the sshd repair ran over the kept session: {args}")


def context(tmp: Path, sshd: Sshd, identity: Path) -> Context:
    params = tmp / "login.yaml"
    params.write_text(
        f"deployment: login\nnixos_config: {tmp}\nuser: {FISH_USER}\nidentity: {identity}\n"
        f"known_hosts: {tmp / 'known_hosts'}\nvms:\n"
        f"  - {{name: vm-login, role: cache, address: 127.0.0.1, port: {sshd.port}}}\n"
        "cache: {vm: vm-login, host: 127.0.0.1}\n"
    )
    return Context("04-bootstrap", load(params), Mode.DEPLOY, False, SecretStore(tmp / "s"))


@pytest.fixture
def stranger(tmp_path: Path) -> Path:
    """A key sshd does not authorize for the user."""
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    return key


def test_a_refused_key_is_not_taken_for_lost_host_keys(sshd: Sshd, tmp_path, stranger):
    ctx = context(tmp_path, sshd, stranger)
    keeper = Keeper()
    with pytest.raises(RunbookError) as raised:
        s04_bootstrap.fresh_login(ctx, ctx.dep.vms[0], keeper)  # type: ignore[arg-type]
    message = str(raised.value)
    assert message.startswith(f"the key is not authorized for {FISH_USER} on vm-login")
    assert f"sshd refused {stranger} with its host keys intact (nothing repaired)" in message
    assert f"users.users.{FISH_USER}.openssh.authorizedKeys.keys" in message
    assert "user-key-authorized" in message
    assert keeper.ran == []


def test_the_authorized_key_logs_in_fresh(sshd: Sshd, tmp_path: Path):
    ctx = context(tmp_path, sshd, sshd.user_key)
    detail = s04_bootstrap.fresh_login(ctx, ctx.dep.vms[0], Keeper())  # type: ignore[arg-type]
    assert detail == f"fresh SSH login: {FISH_USER} logs in with the key and sudo works"


def test_the_user_login_step_names_the_key(sshd: Sshd, tmp_path: Path, stranger: Path):
    ctx = context(tmp_path, sshd, stranger)
    with pytest.raises(StepFailed, match=f"the key is not authorized for {FISH_USER}"):
        ctx.run(s04_bootstrap.user_login(ctx, ctx.dep.vms[0]))


def test_a_refused_key_and_an_unreachable_host_are_told_apart(sshd, tmp_path, stranger):
    host = Host(name="vm", address="127.0.0.1", user=FISH_USER, port=sshd.port,
                identity=stranger, known_hosts=tmp_path / "known_hosts")  # fmt: skip
    with pytest.raises(AuthenticationRefusedError, match="refused"), Connection(host) as c:
        c.connect()
    closed = Host(name="vm", address="127.0.0.1", user=FISH_USER, port=free_port(),
                  identity=stranger, known_hosts=tmp_path / "known_hosts")  # fmt: skip
    with pytest.raises(ConnectError) as unreachable, Connection(closed) as c:
        c.connect()
    assert not isinstance(unreachable.value, AuthenticationRefusedError)
