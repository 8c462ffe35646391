"""Command values: golden renderings (no sshd), and the same values executed by
`Context.execute` against a real sshd whose user's login shell is fish."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runbook.core.errors import RunbookError
from runbook.core.models import Host
from runbook.core.params import load
from runbook.core.secrets import Secret, SecretStore
from runbook.engine.steps import Context, Mode, Step
from runbook.sections import common, s04_bootstrap, s05_token_secret, s09_update
from runbook.transport.commands import ConsoleTyping, FilePut, LocalCommand, RemoteScript, rendered
from tests.conftest import FISH_USER
from tests.run_rig import PARAMS
from tests.sshd_rig import Sshd

JQ = Host(name="vm", address="192.168.64.7", user="jqwang", port=2222)
ROOT = Host(name="vm", address="192.168.64.7", user="root")


def test_remote_script_renders_the_words_the_login_shell_gets() -> None:
    assert RemoteScript(JQ, "systemctl status atticd").render() == (
        "ssh -p 2222 jqwang@192.168.64.7 bash -s <<< 'systemctl status atticd'"
    )
    assert RemoteScript(JQ, "command -v attic", sudo=True).render() == (
        "ssh -p 2222 jqwang@192.168.64.7 sudo -n bash -s <<< 'command -v attic'"
    )
    # root needs no sudo (and the live ISO may lack it): the rule Connection.run applies
    assert RemoteScript(ROOT, "id -u", sudo=True).render() == (
        "ssh root@192.168.64.7 bash -s <<< 'id -u'"
    )


def test_renderings_mask_secrets_and_never_show_a_put_content() -> None:
    secret = Secret("s3cret-value-long", "t")
    assert "s3cret" not in RemoteScript(JQ, f"echo {secret.reveal()}").render()
    put = FilePut(JQ, "/var/lib/atticd/env", secret, mode=0o600, owner="root")
    assert put.render() == (
        "put /var/lib/atticd/env on jqwang@192.168.64.7:2222 (mode 0600, owner root, 17 bytes)"
    )
    planned = FilePut(JQ, "/x", None, mode=0o600, shows="VAR=<the store's t>")
    assert planned.render() == "put /x on jqwang@192.168.64.7:2222 (mode 0600): VAR=<the store's t>"
    assert (
        planned.with_content(b"abc").render().endswith("(mode 0600, 3 bytes): VAR=<the store's t>")
    )
    assert ConsoleTyping("vm", secret).render() == "type on vm's console: *****"
    assert LocalCommand.of(["make", "-C", "/a b", "vm/copy"]).render() == "make -C '/a b' vm/copy"
    assert rendered(["a note", LocalCommand.of(["true"])]) == ["a note", "true"]


def test_plans_are_the_renderings_of_the_values_apply_runs(tmp_path: Path) -> None:
    """05 and 09 plan exactly the values they run: the same RemoteScript/FilePut/LocalCommand
    objects are in the step's commands and executed by its action (golden plans)."""
    ctx = Context("x", load(PARAMS / "cache.yaml"), Mode.PLAN, False, SecretStore(tmp_path / "s"))
    cache = ctx.dep.cache_vm
    at = "jqwang@nixos-utm-cache.local"
    assert s05_token_secret.install_env(ctx, cache).plan() == [
        f"ssh {at} sudo -n bash -s <<< 'stat -c %a /var/lib/atticd/env && sha256sum /var/lib/atticd/env'",
        f"ssh {at} sudo -n bash -s <<< 'install -d -m 0700 /var/lib/atticd'",
        (
            f"put /var/lib/atticd/env on {at} (mode 0600, owner root): "
            "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64=<the store's attic-token-secret>"
        ),
    ]
    restart = s05_token_secret.restart(ctx, cache).plan()
    assert restart[1:3] == [
        f"ssh {at} sudo -n bash -s <<< 'systemctl restart atticd'",
        f"ssh {at} bash -s <<< 'systemctl is-active atticd'",
    ]
    how = common.user_switch(ctx, cache)
    assert s09_update.update(ctx, cache).plan() == [c.render() for c in how.commands]
    switch = s04_bootstrap.switch(ctx, cache).plan()
    assert switch[2] == f"ssh {at} bash -s <<< 'sudo -n true'"
    assert switch[4] == (
        "ssh root@nixos-utm-cache.local bash -s <<< 'ssh-keygen -A && systemctl restart sshd'"
    )


def test_no_section_writes_an_ssh_line_by_hand() -> None:
    """Every ssh line a plan shows comes from a RemoteScript (`shell.py`'s words)."""
    sections = Path(__file__).resolve().parents[1] / "runbook" / "sections"
    hand = re.compile(r"""f?["']ssh [^"'-]""")
    found = [
        f"{p.name}:{i}"
        for p in sorted(sections.glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if hand.search(line)
    ]
    assert found == []


def _context(tmp: Path, sshd: Sshd) -> Context:
    params = tmp / "cmd.yaml"
    params.write_text(
        f"deployment: cmd\nnixos_config: {tmp}\nuser: {FISH_USER}\nidentity: {sshd.user_key}\n"
        f"known_hosts: {tmp / 'known_hosts'}\nvms:\n"
        f"  - {{name: vm-cmd, role: cache, address: 127.0.0.1, port: {sshd.port}}}\n"
        "cache: {vm: vm-cmd, host: 127.0.0.1}\n"
    )
    return Context("x", load(params), Mode.DEPLOY, False, SecretStore(tmp / "s"))


def test_execute_runs_the_rendered_values_on_a_fish_login(sshd: Sshd, tmp_path: Path) -> None:
    ctx = _context(tmp_path, sshd)
    vm = ctx.dep.vms[0]
    try:
        # bash syntax fish rejects (lesson 5): it runs because bash reads it on stdin
        script = common.remote_script(ctx, vm, "if true; then echo $((6*7)); fi")
        assert ctx.execute(script).stdout.strip() == "42"
        who = common.remote_script(ctx, vm, "id -u", sudo=True)
        assert ctx.execute(who).stdout.strip() == "0"
        target = tmp_path / "put" / "f"
        put = FilePut(ctx.dep.host(vm), str(target), Secret("hidden-content-1", "c"), mode=0o600)
        ctx.execute(put)
        assert target.read_text() == "hidden-content-1" and target.stat().st_mode & 0o777 == 0o600
        assert ctx.execute(LocalCommand.of(["echo", "here"])).stdout.strip() == "here"
        with pytest.raises(RunbookError, match="nothing to put"):
            ctx.execute(FilePut(ctx.dep.host(vm), str(target), None))
        with pytest.raises(RunbookError, match="no console is open"):
            ctx.execute(ConsoleTyping(vm.name, "passwd"))
    finally:
        ctx.close()


def test_a_step_of_values_plans_without_connecting(tmp_path: Path) -> None:
    ctx = Context("x", load(PARAMS / "cache.yaml"), Mode.PLAN, False, SecretStore(tmp_path / "s"))
    vm = ctx.dep.cache_vm
    cmd = common.remote_script(ctx, vm, "true")
    step = Step("s", "h", [cmd], action=lambda: ctx.execute(cmd).stdout, remote=True)
    assert step.plan() == ["ssh jqwang@nixos-utm-cache.local bash -s <<< true"]
    with pytest.raises(RunbookError, match="never connects"):
        ctx.execute(cmd)


def test_02_and_90_type_what_their_plans_show(tmp_path: Path) -> None:
    """The plan once showed `sudo su, passwd, *****, *****` while 02 also typed a marker
    line, and 90's plan the bare fixes while it typed them between markers."""
    from runbook.sections import s02_console, s90_recover
    from runbook.sections.vm_console import VmConsole

    ctx = Context("x", load(PARAMS / "cache.yaml"), Mode.PLAN, False, SecretStore(tmp_path / "s"))
    vm = ctx.dep.cache_vm
    typed: list[str] = []

    class Keys:
        name = "serial"

        def type_text(self, _vm: str, text: str | Secret) -> None:
            typed.append((text.reveal() if isinstance(text, Secret) else text).rstrip("\n"))

    password = Secret("Typed-Pw-123456", "live")
    s02_console.type_password(ctx, VmConsole(vm, Keys(), None), password)  # type: ignore[arg-type]
    plan = s02_console.set_root_password(ctx, vm).plan()
    assert len(typed) == 5 and typed[1] == "echo RUNBOOK-ROOT-''READY"
    shown = [line for line in plan if "input keystroke" in line]
    assert len(shown) == len(typed) and "RUNBOOK-ROOT-" in shown[1] and "READY" in shown[1]
    assert "Typed-Pw" not in " ".join(plan) and "*****" in shown[3]
    fixes = [line for line in s90_recover.recover(ctx, vm).plan() if "input keystroke" in line]
    assert [f.count("RUNBOOK-") for f in fixes] == [2, 2, 2]
    assert str(s90_recover.fix_lines(ctx, vm)[0].text).startswith(
        "echo RUNBOOK-FIX0-BE''GIN; ssh-keygen -A; echo RUNBOOK-FIX0-''END=$?"
    )
