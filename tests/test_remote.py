"""runbook.transport.remote / runbook.transport.shell against a real OpenSSH sshd with a fish login shell."""

from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from runbook.core.errors import (
    CommandError,
    CommandTimeoutError,
    ConnectError,
    ConnectionLostError,
    HostKeyChangedError,
)
from runbook.core.models import Elevate, Host
from runbook.core.secrets import Secret
from runbook.transport.remote import Connection
from tests.conftest import FISH_USER, PASS_USER, PASS_WORD, Sshd

HANDBOOK_CMD = "if [ 1 = 1 ]; then echo inside-if; fi && echo chained"


def test_raw_handbook_command_fails_under_fish(sshd: Sshd) -> None:
    # What `ssh jqwang@vm '<bash>'` does: the login shell (fish) parses it.
    r = subprocess.run(
        [
            "ssh",
            "-p",
            str(sshd.port),
            "-i",
            str(sshd.user_key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            f"{FISH_USER}@127.0.0.1",
            HANDBOOK_CMD,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "inside-if" not in r.stdout  # (fish 3.6 even exits 0 after the parse error)
    assert "fish: Missing end to balance this if statement" in r.stderr


def test_same_command_through_runbook_shell(fish_host: Host) -> None:
    with Connection(fish_host) as c:
        r = c.run(HANDBOOK_CMD)
        assert r.stdout == "inside-if\nchained\n"
        assert c.run("echo $SHELL; ps -o comm= -p $$").stdout.split() == ["/usr/bin/fish", "bash"]
        r = c.sudo(HANDBOOK_CMD + "; id -u")
        assert r.stdout.split() == ["inside-if", "chained", "0"]


NASTY = [
    "it's",
    'say "hi"',
    "$HOME",
    "`id`",
    "a\\b",
    "two\nlines",
    "naïve – ünïcødé ✓",  # noqa: RUF001 (non-ASCII on purpose)
    "*",
    ";",
    "",
]


@pytest.mark.parametrize("elevate", [Elevate.NONE, Elevate.SUDO])
def test_quoting_survives_argv(fish_host: Host, elevate: Elevate) -> None:
    with Connection(fish_host) as c:
        r = c.run(["printf", "%s\\0", *NASTY], elevate=elevate)
    assert r.stdout.split("\0")[:-1] == NASTY


def test_env_cwd_pipes_redirects_land_inside_sudo(fish_host: Host, tmp_path: Path) -> None:
    target = "/root/runbook-test-redirect"
    with Connection(fish_host) as c:
        c.sudo(
            f'echo "$GREETING" | tr a-z A-Z > {target}; pwd >> {target}',
            env={"GREETING": "hello $USER `x`"},
            cwd="/root",
        )
        r = c.sudo(["cat", target])
        c.sudo(["rm", "-f", target])
    assert r.stdout == "HELLO $USER `X`\n/root\n"


def test_exit_codes_propagate(fish_host: Host) -> None:
    with Connection(fish_host) as c:
        assert c.run("exit 7", check=False).exit_code == 7
        assert c.run("exit 3", ok_codes=(0, 3)).exit_code == 3
        with pytest.raises(CommandError) as info:
            c.run("echo boom-on-stderr >&2; exit 4")
    err = info.value
    assert err.returncode == 4
    assert "127.0.0.1" in str(err) and "exit 4" in str(err) and "boom-on-stderr" in str(err)


def test_put_mode_owner_and_never_readable_in_between(fish_host: Host) -> None:
    directory = "/var/lib/runbook-put-test"
    path = f"{directory}/env"
    content = ("X" * 3_000_000 + "-tail").encode()  # big enough for the watcher to see it
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                for name in os.listdir(directory):
                    try:
                        seen.append(os.stat(f"{directory}/{name}").st_mode)
                    except FileNotFoundError:
                        pass
            except FileNotFoundError:
                pass

    subprocess.run(["rm", "-rf", directory], check=True)
    os.makedirs(directory, mode=0o755)
    t = threading.Thread(target=watch)
    t.start()
    try:
        with Connection(fish_host) as c:
            r = c.put(path, content, mode=0o600, owner=FISH_USER)
    finally:
        stop.set()
        t.join()
    try:
        st = os.stat(path)
        written = Path(path).read_bytes()
    finally:
        subprocess.run(["rm", "-rf", directory], check=True)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert pwd.getpwuid(st.st_uid).pw_name == FISH_USER
    assert written == content
    assert seen, "the watcher saw no file at all"
    assert all(stat.S_IMODE(m) & 0o077 == 0 for m in seen)
    assert "XXXX" not in r.command and "mode 0600" in r.command


def test_password_login(sshd: Sshd, tmp_path: Path) -> None:
    host = Host(
        name="pw",
        address="127.0.0.1",
        user=PASS_USER,
        port=sshd.port,
        known_hosts=tmp_path / "known_hosts",
    )
    with Connection(host, password=Secret(PASS_WORD, "pw")) as c:
        assert c.run("whoami").stdout == f"{PASS_USER}\n"
    with (
        pytest.raises(ConnectError, match="refused"),
        Connection(host, password=Secret("wrong-password", "pw2")) as c,
    ):
        c.run("true")


def test_changed_host_key_is_refused_then_replaced(sshd: Sshd, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    host = Host(
        name="h",
        address="127.0.0.1",
        user=FISH_USER,
        port=sshd.port,
        identity=sshd.user_key,
        known_hosts=kh,
    )
    with Connection(host) as c:
        c.run("true")
    assert f"[127.0.0.1]:{sshd.port}" in kh.read_text()
    sshd.stop()
    sshd.new_host_key()
    sshd.start()
    try:
        with pytest.raises(HostKeyChangedError) as info, Connection(host) as c:
            c.run("true")
        msg = str(info.value)
        assert "changed" in msg and "--replace-host-key" in msg and msg.count("SHA256:") == 2
        with Connection(host, replace_host_key=True) as c:
            assert c.run("echo ok").stdout == "ok\n"
        with Connection(host) as c:  # the new key is now the known one
            assert c.run("echo again").stdout == "again\n"
    finally:
        pass


def test_hanging_command_times_out(fish_host: Host) -> None:
    with Connection(fish_host) as c:
        t0 = time.monotonic()
        with pytest.raises(CommandTimeoutError, match="timed out after 1 s"):
            c.run("sleep 30", timeout=1)
        assert time.monotonic() - t0 < 5
        assert c.run("echo still-usable").stdout == "still-usable\n"


def test_dropped_connection_is_a_clear_error(sshd: Sshd, fish_host: Host) -> None:
    errors: list[BaseException] = []

    def victim() -> None:
        with Connection(fish_host) as c:
            try:
                c.run("echo started; sleep 60")
            except Exception as exc:  # noqa: BLE001 (the test asserts its type)
                errors.append(exc)

    t = threading.Thread(target=victim)
    t.start()
    time.sleep(1.0)
    sshd.kill_all()
    t.join(20)
    sshd.start()
    assert not t.is_alive(), "the command hung after sshd died"
    assert len(errors) == 1 and isinstance(errors[0], ConnectionLostError)
    text = str(errors[0])
    assert text.startswith(f"connection to {fish_host.label} lost during `echo started")
    assert "exit None" not in text and "host rebooted or sshd stopped" in text
    with Connection(fish_host) as c:  # reconnects after sshd is back
        assert c.run("echo back").stdout == "back\n"


def test_reconnect_on_demand(fish_host: Host) -> None:
    with Connection(fish_host) as c:
        c.run("true")
        assert c._transport is not None
        c._transport.close()
        assert c.run("echo reopened").stdout == "reopened\n"


def test_secrets_never_leak(fish_host: Host, caplog: pytest.LogCaptureFixture) -> None:
    token = Secret("tok-" + os.urandom(8).hex(), "token")
    raw = token.reveal()
    caplog.set_level(logging.DEBUG)
    lines: list[str] = []
    host = dataclasses.replace(fish_host)
    with Connection(host, on_line=lambda _s, line: lines.append(line)) as c:
        r = c.run(["echo", token.reveal()])
        r2 = c.sudo(f"echo {raw} >&2", check=False)
        with pytest.raises(CommandError) as info:
            c.run(f"echo {raw} >&2; exit 9")
    blobs = [
        r.stdout,
        r.command,
        r2.stderr,
        r2.command,
        str(info.value),
        repr(info.value),
        caplog.text,
        "\n".join(lines),
        repr(token),
        f"{token}",
    ]
    for blob in blobs:
        assert raw not in blob
    assert "*****" in r.stdout and "*****" in str(info.value)
