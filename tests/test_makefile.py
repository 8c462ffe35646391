"""runbook.nix.makefile: the variables a nixos-config Makefile gives on a Mac, checked against GNU make."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runbook.nix.makefile import Makefile
from tests.conftest import need

CLEAN = Path(__file__).parent / "fixtures" / "nixos-config" / "clean" / "Makefile"
DARWIN_DEFAULT = """UNAME := $(shell uname)
ifeq ($(UNAME),Darwin)
NIXNAME ?= macbook-pro-m1
else
NIXNAME ?= vm-aarch64
endif
SSH_OPTIONS=-o PubkeyAuthentication=no -o StrictHostKeyChecking=no

vm/bootstrap0:
\tssh root@x "parted /dev/sda -- mklabel gpt"
"""


def make_value(makefile: Path, name: str, uname: str) -> str:
    """What GNU make itself gives `name` with UNAME forced (as on a Mac, or on Linux)."""
    need(shutil.which("make") is not None, "GNU make not installed")
    out = subprocess.run(
        ["make", "-s", "-f", str(makefile), f"UNAME={uname}",
         "--eval", "print-%: ; @echo '$($*)'", f"print-{name}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.mark.parametrize("text", [DARWIN_DEFAULT, None])
def test_the_mac_value_is_what_make_gives_on_a_mac(tmp_path: Path, text: str | None):
    path = tmp_path / "Makefile"
    path.write_text(text if text is not None else CLEAN.read_text())
    parsed = Makefile.read(path)
    for name in ("NIXNAME", "SSH_OPTIONS"):
        var = parsed.on_mac(name)
        assert var is not None and var.value == make_value(path, name, "Darwin")


def test_recipes_and_lines(tmp_path: Path):
    path = tmp_path / "Makefile"
    path.write_text(DARWIN_DEFAULT)
    parsed = Makefile.read(path)
    assert parsed.recipes["vm/bootstrap0"] == (
        (10, '\tssh root@x "parted /dev/sda -- mklabel gpt"'),
    )
    assert [(v.name, v.line, v.darwin) for v in parsed.variables if v.name == "NIXNAME"] == [
        ("NIXNAME", 3, True),
        ("NIXNAME", 5, False),
    ]


# -- the make command line the runbook runs (and the plan shows) -----------------------------

LAB_MAKEFILE = Path(__file__).resolve().parents[1] / "runbook" / "lab" / "nixos-config" / "Makefile"
GOLDEN_PARAMS = """
deployment: golden
nixos_config: /Users/me/nixos-config
user: jqwang
identity: /Users/me/.ssh/id_ed25519
known_hosts: /Users/me/.local/state/runbook/known_hosts/golden
vms:
  - {name: vm-aarch64-utm-cache, role: cache, address: nixos-utm-cache.local}
  - {name: vm-aarch64-utm, role: worker, address: 192.168.64.7, port: 2222}
cache: {vm: vm-aarch64-utm-cache, host: nixos-utm-cache.local}
"""
KEY_OPTIONS = (
    "SSH_OPTIONS=-i /Users/me/.ssh/id_ed25519 -o IdentitiesOnly=yes "
    "-o UserKnownHostsFile=/Users/me/.local/state/runbook/known_hosts/golden "
    "-o StrictHostKeyChecking=yes -o BatchMode=yes"
)
PASSWORD_OPTIONS = (
    "SSH_OPTIONS=-o PubkeyAuthentication=no "
    "-o UserKnownHostsFile=/Users/me/.local/state/runbook/known_hosts/golden "
    "-o StrictHostKeyChecking=yes"
)


def _golden_ctx(tmp_path: Path, text: str = GOLDEN_PARAMS):
    from runbook.core.params import Loaded, parse
    from runbook.core.secrets import SecretStore
    from runbook.engine.steps import Context, Mode

    dep = parse(text)
    return Context("09-update", Loaded(tmp_path / "p.yaml", "x", dep), Mode.PLAN, False,
                   SecretStore(tmp_path / "secrets"))  # fmt: skip


def test_make_argv_golden(tmp_path: Path) -> None:
    """As the user: the key, host keys checked; as root before the switch: the password, host
    keys checked. The plan shows exactly the argv the step runs."""
    from runbook.sections import s03_bootstrap0, s04_bootstrap, s09_update
    from runbook.sections.common import make_argv, render, user_switch

    ctx = _golden_ctx(tmp_path)
    cache, worker = ctx.dep.vms
    mk = ["make", "-C", "/Users/me/nixos-config"]
    assert make_argv(ctx, "vm/bootstrap0", worker) == [
        *mk, "vm/bootstrap0", "NIXADDR=192.168.64.7", "NIXPORT=2222", "NIXNAME=vm-aarch64-utm",
        PASSWORD_OPTIONS,
    ]  # fmt: skip
    assert make_argv(ctx, "vm/copy", cache, user="root", name=False) == [
        "env", "NIXUSER=root", *mk, "vm/copy", "NIXADDR=nixos-utm-cache.local", PASSWORD_OPTIONS,
    ]  # fmt: skip
    how = user_switch(ctx, worker)
    assert list(how.copy.argv) == [
        "env", "NIXUSER=jqwang", *mk, "vm/copy", "NIXADDR=192.168.64.7", "NIXPORT=2222",
        KEY_OPTIONS,
    ]  # fmt: skip
    assert list(how.switch.argv) == [
        "env", "NIXUSER=jqwang", *mk, "vm/switch", "NIXADDR=192.168.64.7", "NIXPORT=2222",
        "NIXNAME=vm-aarch64-utm", KEY_OPTIONS,
    ]  # fmt: skip
    # the plans render those argvs (and the login and marker the switch runs), nothing else
    marker = "/var/lib/runbook/switched-config"
    assert s09_update.update(ctx, worker).plan() == [
        "ssh -p 2222 jqwang@192.168.64.7 bash -s <<< true",
        render(how.copy.argv),
        render(how.switch.argv),
        f"put {marker} on jqwang@192.168.64.7:2222 (mode 0644, owner root, 65 bytes)",
    ]
    assert s04_bootstrap.copy(ctx, cache).plan() == [
        "ssh root@nixos-utm-cache.local bash -s <<< true",
        render(make_argv(ctx, "vm/copy", cache, user="root", name=False)),
    ]
    assert s03_bootstrap0.bootstrap0(ctx, worker).plan()[-1] == render(
        make_argv(ctx, "vm/bootstrap0", worker)
    )
    assert how.copy.render().endswith(f"'{KEY_OPTIONS}'")


def test_a_path_make_would_split_is_refused(tmp_path: Path) -> None:
    from runbook.core.errors import InputError
    from runbook.sections.common import user_switch

    ctx = _golden_ctx(tmp_path, GOLDEN_PARAMS.replace("/.ssh/id_ed25519", "/my keys/id"))
    with pytest.raises(InputError, match=r"^key identity: '/Users/me/my keys/id': expected a"):
        user_switch(ctx, ctx.dep.vms[1])


def _dry_run(makefile_dir: Path, argv: list[str]) -> str:
    """What GNU make would run for `argv` (make -n), in the checkout `makefile_dir`."""
    need(shutil.which("make") is not None, "GNU make not installed")
    i = argv.index("make")
    env_args, make_args = argv[:i], argv[i + 1 :]
    make_args[make_args.index("-C") + 1] = str(makefile_dir)
    return subprocess.run(
        [*env_args, "make", "-n", *make_args], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_make_itself_takes_the_options_over_the_makefiles(tmp_path: Path) -> None:
    """The lab's Makefile has upstream's SSH_OPTIONS line (PubkeyAuthentication=no, /dev/null
    known_hosts); GNU make runs the runbook's instead, in vm/bootstrap's sub-makes too."""
    from runbook.sections.common import make_argv, user_switch

    assert (
        "SSH_OPTIONS=-o PubkeyAuthentication=no -o UserKnownHostsFile=/dev/null "
        "-o StrictHostKeyChecking=no\n" in LAB_MAKEFILE.read_text()
    )
    ctx = _golden_ctx(tmp_path)
    worker = ctx.dep.vms[1]
    key = KEY_OPTIONS.removeprefix("SSH_OPTIONS=")
    copy = _dry_run(LAB_MAKEFILE.parent, list(user_switch(ctx, worker).copy.argv))
    assert f"rsync -av -e 'ssh {key} -p2222'" in copy and "/dev/null" not in copy
    switch = _dry_run(LAB_MAKEFILE.parent, list(user_switch(ctx, worker).switch.argv))
    assert f"ssh {key} -p2222 jqwang@192.168.64.7" in switch
    boot = _dry_run(LAB_MAKEFILE.parent, make_argv(ctx, "vm/bootstrap", worker, user="jqwang"))
    assert boot.count(f"ssh {key} -p2222") == 3 and "/dev/null" not in boot, boot


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_override_in_the_checkout_is_refused_before_make_runs(tmp_path: Path) -> None:
    from runbook.core.errors import RunbookError
    from runbook.sections.common import run_make, user_switch

    checkout = tmp_path / "nixos-config"
    checkout.mkdir()
    text = LAB_MAKEFILE.read_text().replace("\nSSH_OPTIONS=", "\noverride SSH_OPTIONS=")
    (checkout / "Makefile").write_text(text)
    # loopback and a closed port: should make run after all, its ssh reaches nothing
    text_params = GOLDEN_PARAMS.replace("/Users/me/nixos-config", str(checkout))
    text_params = text_params.replace(
        "192.168.64.7, port: 2222", f"127.0.0.1, port: {_closed_port()}"
    )
    ctx = _golden_ctx(tmp_path, text_params)
    argv = list(user_switch(ctx, ctx.dep.vms[1]).copy.argv)
    # GNU make would indeed keep the Makefile's options ("The override Directive")
    assert "UserKnownHostsFile=/dev/null" in _dry_run(checkout, argv)
    line = text[: text.index("override SSH_OPTIONS")].count("\n") + 1
    with pytest.raises(RunbookError, match=rf"Makefile:{line}: `override SSH_OPTIONS` keeps"):
        run_make(argv, None)
    assert Makefile.read(checkout / "Makefile").overridden("SSH_OPTIONS") is not None
