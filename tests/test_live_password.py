"""The live ISO's root password is the runbook's own (issue 15, item 3).

With none in the secret store and RUNBOOK_ROOT_PASSWORD unset, notebook 02 makes a random one
(Python `secrets`) of characters every console backend types alike, stores it 0600 *before*
anything types it, types it with `passwd`, and 03 logs in with it; it is masked the moment it
exists. A user's own (stored or in the environment) wins; a resumed run reuses the stored one;
a plan makes none.
"""

from __future__ import annotations

import hashlib
import re
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook.core.errors import RunbookError
from runbook.core.masking import MASK, mask
from runbook.core.params import load
from runbook.core.secrets import Secret, SecretStore
from runbook.engine.steps import Check, Context, Mode, Outcome, StepFailed
from runbook.mac.console import keymap
from runbook.sections import s02_console, s03_bootstrap0
from runbook.sections.vm_console import MacSide
from tests.console_rig import ConsoleRig, start_console
from tests.run_rig import PARAMS

NAME = "live-root-password"
ENV = "RUNBOOK_ROOT_PASSWORD"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def _ctx(tmp: Path, mode: Mode = Mode.DEPLOY, store: Path | None = None) -> Context:
    return Context(
        s02_console.NOTEBOOK, load(PARAMS / "cache.yaml"),
        mode, False, SecretStore(store or tmp / "secrets"),
    )  # fmt: skip


# --- the password itself ---------------------------------------------------------------------


def test_it_is_long_random_and_of_safe_keys_only() -> None:
    made = [s02_console.new_live_password(NAME).reveal() for _ in range(200)]
    assert len(set(made)) == 200  # random, not a constant or a counter
    assert all(len(p) == s02_console.LIVE_LENGTH for p in made)
    assert s02_console.LIVE_BITS >= 128
    alphabet = set(s02_console.LIVE_ALPHABET)
    assert alphabet <= set(string.ascii_lowercase + string.digits) - {"y", "z"}
    # over 200 passwords every symbol shows up: the whole alphabet is used
    assert set("".join(made)) == alphabet


def test_every_character_is_an_unshifted_us_key_on_every_backend() -> None:
    """No Shift, no dead key, nothing a layout, a shell or passwd would change."""
    for ch in s02_console.LIVE_ALPHABET:
        key = keymap.US_LAYOUT[ch]
        assert not key.shift, ch
    text = s02_console.LIVE_ALPHABET
    # utm-input (scan codes): no Left Shift make code in the whole sequence
    assert keymap.SC_LSHIFT not in keymap.scan_code_values(text)
    # hammerspoon / quartz: no flagsChanged (Shift) event, every keyDown with flags 0
    events = keymap.mac_events(text)
    assert all(e.event is not keymap.MacEvent.FLAGS_CHANGED and e.flags == 0 for e in events)
    # nothing bash, fish or a tty treats specially
    special = set("$`'\"\\!#~*?[]{}()<>|&;^% \t\n") | {chr(c) for c in range(32)}
    assert not set(text) & special


@pytest.fixture
def console(tmp_path: Path) -> Iterator[ConsoleRig]:
    rig = start_console(tmp_path)
    yield rig
    rig.stop()


def test_a_real_shell_reads_exactly_what_was_made(console: ConsoleRig) -> None:
    """Typed over a serial console into bash's `read -rs` (no echo, as passwd reads)."""
    from runbook.mac.console import backends

    pw = s02_console.new_live_password(NAME)
    b = backends.SerialBackend(port=console.port)
    b.run("vm", "echo ready-''mark", "ready-mark", timeout=30)
    # read -p prints its prompt once it reads: nothing is typed ahead of it
    b.run("vm", "read -rsp 'PW-''PROMPT:' PW; echo; echo GOT-''IT", r"PW-PROMPT:")
    b.type_text("vm", Secret(pw.reveal() + "\n", "line"))
    b.session().read_until("GOT-IT", timeout=30)
    out = b.run("vm", "printf 'len=%s sum=%s\\n' ${#PW} $(printf %s \"$PW\" | md5sum)", r"sum=\w+")
    assert f"len={len(pw.reveal())} sum={hashlib.md5(pw.reveal().encode()).hexdigest()}" in out
    b.close()


def test_it_is_masked_from_the_moment_it_exists() -> None:
    pw = s02_console.new_live_password(NAME)
    assert mask(f"typed {pw.reveal()} twice") == f"typed {MASK} twice"
    assert str(pw) == MASK and repr(pw) == f"Secret({NAME!r}, {MASK})"


# --- notebook 02: made, stored, then typed ----------------------------------------------------


class _Console:
    label = "cache's console (utm-input)"

    def close(self) -> None:
        pass


class _Typing:
    """02's console faked at its seams: records each typed password and what the store held
    at that moment; SSH as root works with whatever was typed last."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: SecretStore) -> None:
        self.typed: list[tuple[str, str | None, int | None]] = []
        self.on_vm: str | None = None
        self._lock = threading.Lock()
        con = _Console()

        class Lazy:
            def __init__(self, ctx: object, vm: object) -> None:
                pass

            def __call__(self) -> tuple[MacSide, _Console]:
                return MacSide("utmctl"), con

            def close(self) -> None:
                pass

        def resolve(mac: Any, vm: Any, c: Any, **kw: Any) -> Any:
            from runbook.mac import discover

            if kw.get("typing") is False:
                return discover.Resolution("198.51.100.7", "arp", "arp")
            return discover.Resolution("198.51.100.7", "callback", "called back")

        def type_password(_ctx: Any, c: Any, pw: Secret) -> None:
            path = store.path(NAME)
            held = path.read_text() if path.exists() else None
            mode = path.stat().st_mode & 0o777 if path.exists() else None
            with self._lock:
                self.typed.append((pw.reveal(), held, mode))
                self.on_vm = pw.reveal()

        def root_login(ctx: Any, vm: Any, where: str, pw: Secret) -> tuple[bool, str]:
            ok = self.on_vm is not None and pw.reveal() == self.on_vm
            return ok, "fresh SSH login as root works" if ok else "Permission denied"

        monkeypatch.setattr(s02_console, "LazyConsole", Lazy)
        monkeypatch.setattr(s02_console, "resolve", resolve)
        monkeypatch.setattr(s02_console, "type_password", type_password)
        monkeypatch.setattr(s02_console, "save_screen", lambda *a: None)
        monkeypatch.setattr(s02_console, "root_login", root_login)
        monkeypatch.setattr(s02_console, "installed_login", lambda *a: False)


def _run_02(ctx: Context) -> list[Outcome]:
    out = [ctx.run(s02_console.password_stored(ctx))]
    out += ctx.run_parallel([s02_console.set_root_password(ctx, vm) for vm in ctx.dep.owned_vms])
    return out


def test_none_set_one_is_made_stored_0600_then_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = _ctx(tmp_path)
    fake = _Typing(monkeypatch, ctx.store)
    assert _run_02(ctx)[0] is Outcome.DONE
    stored = (tmp_path / "secrets" / NAME).read_text()
    assert re.fullmatch(f"[{s02_console.LIVE_ALPHABET}]{{26}}", stored)
    assert (tmp_path / "secrets" / NAME).stat().st_mode & 0o777 == 0o600
    # every console got the one password, and it was in the store, 0600, when typed
    assert fake.typed and all(t == (stored, stored, 0o600) for t in fake.typed), fake.typed
    assert "made a random one (26 characters, 132 bits)" in ctx.records[0]["reason"]
    out = capsys.readouterr().out
    assert stored not in out and all(stored not in str(r) for r in ctx.records)


def test_typing_alone_stores_it_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step that types (e.g. Apply in the step panel, with no store step before it) stores
    the password before typing, so a crash right after typing never loses it."""
    ctx = _ctx(tmp_path)
    fake = _Typing(monkeypatch, ctx.store)
    assert ctx.run(s02_console.set_root_password(ctx, ctx.dep.cache_vm)) is Outcome.DONE
    ((typed, held, mode),) = fake.typed
    assert held == typed and mode == 0o600


def test_a_resumed_run_reuses_the_stored_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _ctx(tmp_path)
    fake = _Typing(monkeypatch, first.store)
    _run_02(first)
    made = (tmp_path / "secrets" / NAME).read_text()
    again = _ctx(tmp_path)  # a later run, same store: root logs in with it, nothing typed
    outcomes = _run_02(again)
    assert outcomes[0] is Outcome.ALREADY and set(outcomes[1:]) == {Outcome.ALREADY}
    assert (tmp_path / "secrets" / NAME).read_text() == made
    fake.on_vm = None  # a VM whose console lost it (rebooted ISO): typed again, the same one
    assert _run_02(_ctx(tmp_path))[1] is Outcome.DONE
    assert fake.typed[-1][0] == made


def test_the_users_stored_password_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path)
    ctx.store.put(NAME, "Users-Own-Live-Pw-1")
    fake = _Typing(monkeypatch, ctx.store)
    assert _run_02(ctx)[0] is Outcome.ALREADY
    assert {t[0] for t in fake.typed} == {"Users-Own-Live-Pw-1"}
    assert (tmp_path / "secrets" / NAME).read_text() == "Users-Own-Live-Pw-1"


def test_the_users_environment_variable_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "Users-Env-Live-Pw-2")
    ctx = _ctx(tmp_path)
    fake = _Typing(monkeypatch, ctx.store)
    assert _run_02(ctx)[0] is Outcome.ALREADY
    assert {t[0] for t in fake.typed} == {"Users-Env-Live-Pw-2"}
    assert not (tmp_path / "secrets" / NAME).exists()  # nothing made, nothing stored


def test_an_empty_stored_file_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(tmp_path)
    ctx.store.put(NAME, "")
    fake = _Typing(monkeypatch, ctx.store)
    assert _run_02(ctx)[0] is Outcome.DONE
    assert len(fake.typed[0][0]) == s02_console.LIVE_LENGTH


def test_a_plan_makes_none_and_says_it_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = _ctx(tmp_path, Mode.PLAN)
    assert ctx.run(s02_console.password_stored(ctx)) is Outcome.PLAN
    assert ctx.run(s02_console.set_root_password(ctx, ctx.dep.cache_vm)) is Outcome.UNCHECKED
    out = capsys.readouterr().out
    assert "the runbook makes one (never shown)" in out and "132 bits" in out
    assert f"{tmp_path / 'secrets' / NAME} (0600, before anything types it)" in out
    assert not (tmp_path / "secrets").exists()
    with pytest.raises(RunbookError, match="plan mode makes no password"):
        s02_console.live_password(ctx)


# --- notebook 03: bootstrap0 logs in with it ---------------------------------------------------


def test_bootstrap0_logs_in_with_the_one_02_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _ctx(tmp_path)
    _Typing(monkeypatch, ctx.store)
    _run_02(ctx)
    made = (tmp_path / "secrets" / NAME).read_text()
    seen: list[str | None] = []

    def install(ctx: Context, vm: Any, argv: list[str], pw: Secret | None) -> str:
        seen.append(pw.reveal() if pw else None)
        return "installed"

    monkeypatch.setattr(s03_bootstrap0, "install", install)
    monkeypatch.setattr(s03_bootstrap0, "installed_probe", lambda ctx, vm: lambda: Check(False))
    ctx3 = Context(s03_bootstrap0.NOTEBOOK, ctx.loaded, Mode.DEPLOY, True, ctx.store)
    assert ctx3.run(s03_bootstrap0.bootstrap0(ctx3, ctx3.dep.cache_vm)) is Outcome.DONE
    assert seen == [made]


def test_bootstrap0_without_a_password_says_run_02(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s03_bootstrap0, "installed_probe", lambda ctx, vm: lambda: Check(False))
    ctx = Context(s03_bootstrap0.NOTEBOOK, load(PARAMS / "cache.yaml"), Mode.DEPLOY, True,
                  SecretStore(tmp_path / "s"))  # fmt: skip
    with pytest.raises(StepFailed, match=r"no live root password in .*live-root-password or "
                       r"\$RUNBOOK_ROOT_PASSWORD: notebook 02 makes one"):  # fmt: skip
        ctx.run(s03_bootstrap0.bootstrap0(ctx, ctx.dep.cache_vm))
    assert not (tmp_path / "s" / NAME).exists()  # 03 never makes one: 02 typed none
