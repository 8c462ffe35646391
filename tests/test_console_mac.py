"""Mac-facing console defects (issue 9): Hammerspoon's saveToFile, pictures never fail a step,
and the Quartz backend types only into the VM's own window.

Upstream read for these: Hammerspoon/hammerspoon `extensions/image/libimage.m` (saveToFile),
`LuaSkin/LuaSkin/Skin.m` (checkArgs' error text), `extensions/ipc/ipc.lua` and
`extensions/ipc/cli/hs.m` (how `hs -c` reports a Lua error: stderr, exit 65); utmapp/UTM
`Platform/macOS/Display/VMDisplayQemuDisplayController.swift` (window title = VM name).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from runbook.core.errors import CommandError, RunbookError
from runbook.core.params import load
from runbook.core.secrets import Secret, SecretStore
from runbook.engine.steps import Context, Mode, Outcome
from runbook.lab.standins import hs as hs_standin
from runbook.mac.console import backends
from runbook.sections import s02_console, vm_console
from tests.console_rig import install_standins
from tests.run_rig import PARAMS

VM = "nixos-dev"
# The line the runbook wrote before the fix, as it was.
OLD_SAVE = 'if not img:saveToFile("{path}", 1, "PNG") then error("could not save") end'
# libimage.m saveToFile -> LuaSkin checkArgs: four values, the third checked as a boolean.
BOOLEAN_ERROR = "ERROR: incorrect type 'number' for argument 3 (expected boolean)"


# --- the hs stand-in checks saveToFile like libimage.m -------------------------------------------


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The lab's Mac stand-ins on PATH, with VM started in their UTM state; their bin dir."""
    for key, value in install_standins(tmp_path).items():
        monkeypatch.setenv(key, value)
    vm = {"uuid": "5D419106-2824-4FED-BFE1-24A7F7E253D8", "name": VM, "status": "started"}
    (tmp_path / "utm.json").write_text(json.dumps({"version": "4.7.3", "vms": [vm]}))
    return tmp_path / "bin"


def _old_lua(path: Path) -> str:
    return "\n".join(
        [
            'local app = hs.application.get("com.utmapp.UTM")',
            f'local win = app:getWindow("{VM}")',
            "local img = win:snapshot()",
            OLD_SAVE.format(path=path),
        ]
    )


def test_standin_refuses_the_old_save_to_file_like_hs_does(
    standins: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "old.png"
    assert hs_standin.main(["-a", "-q", "-t", "10", "-c", _old_lua(target)]) == 65
    assert capsys.readouterr().err == BOOLEAN_ERROR + "\n"
    assert not target.exists()


def test_standin_accepts_the_runbooks_screenshot_lua(standins: Path, tmp_path: Path) -> None:
    target = tmp_path / "new.png"
    lua = backends.hammerspoon_screenshot_lua(VM, target)
    assert hs_standin.main(["-a", "-q", "-t", "10", "-c", lua]) == 0
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ('"/p.png"', None),
        ('"/p.png", true', None),
        ('"/p.png", "jpeg"', None),
        ('"/p.png", false, "TIFF"', None),
        ('"/p.png", 1, "PNG"', BOOLEAN_ERROR),
        ('"/p.png", nil, "PNG"', "ERROR: incorrect type 'nil' for argument 3 (expected boolean)"),
        (
            '"/p.png", 1',
            "ERROR: incorrect type 'number' for argument 3 (expected string or boolean)",
        ),
        ('"/p.png", false, 2', "ERROR: incorrect type 'number' for argument 4 (expected string)"),
        ("", "ERROR: incorrect type 'no value' for argument 2 (expected string)"),
        ("42", "ERROR: incorrect type 'number' for argument 2 (expected string)"),
        ('"/p.png", false, "PNG", 1', "ERROR: incorrect number of arguments. Expected 4, got 5"),
        ('"/p.png", "WEBP"', "hs.image:saveToFile:: invalid file type specified"),
    ],
)
def test_standin_save_to_file_argument_checks(args: str, error: str | None) -> None:
    parsed = hs_standin.lua_call_args(f"x = img:saveToFile({args})", "img:saveToFile")
    assert parsed is not None
    if error is None:
        assert hs_standin.check_save_to_file(parsed) == Path("/p.png")
    else:
        with pytest.raises(hs_standin.LuaError) as info:
            hs_standin.check_save_to_file(parsed)
        assert str(info.value) == error


def test_backend_screenshot_through_the_standin(standins: Path, tmp_path: Path) -> None:
    shot = backends.HammerspoonBackend(hs=str(standins / "hs")).screenshot(VM, tmp_path / "s.png")
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# --- a picture never fails a step -----------------------------------------------------------------


@dataclass
class PictureFails:
    """A hammerspoon-named backend that types fine but whose screenshot raises."""

    name: str = "hammerspoon"
    typed: list[str] = field(default_factory=list)
    secret: str = ""
    vms: set[str] = field(default_factory=set)

    def type_text(self, vm: str, text: str | Secret) -> None:
        self.vms.add(vm)
        self.typed.append(text.reveal() if isinstance(text, Secret) else text)

    def screenshot(self, vm: str, path: Path) -> Path:
        raise CommandError(
            host="localhost",
            command=f"hs -c <snapshot lua of {vm} to {path.name}>",
            exit_code=65,
            stderr=f"{BOOLEAN_ERROR} while holding {self.secret}",
        )


def _deploy_ctx(tmp_path: Path) -> Context:
    ctx = Context(
        s02_console.NOTEBOOK,
        load(PARAMS / "cache.yaml"),
        Mode.DEPLOY,
        False,
        SecretStore(tmp_path / "secrets"),
        record_dir=tmp_path / "record",
    )
    ctx.sink = lambda record: None
    return ctx


def test_save_screen_failure_is_a_masked_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _deploy_ctx(tmp_path)
    secret = Secret("Picture-Secret-77", "pw")
    con = vm_console.VmConsole(ctx.dep.cache_vm, PictureFails(secret=secret.reveal()), None)
    with caplog.at_level(logging.WARNING, logger="runbook.sections.vm_console"):
        assert vm_console.save_screen(ctx, con, "02-root-password") is None
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "no console picture of" in text and BOOLEAN_ERROR in text
    assert secret.reveal() not in text and "*****" in text


def test_root_password_step_succeeds_when_its_picture_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _deploy_ctx(tmp_path)
    vm = ctx.dep.cache_vm
    password = "Live-Root-Pw-4242"
    ctx.store.put(ctx.dep.bootstrap.password_secret, password)
    backend = PictureFails(secret=password)
    con = vm_console.VmConsole(vm, backend, None)
    monkeypatch.setattr(vm_console, "mac_side", lambda c: vm_console.MacSide("utmctl"))
    monkeypatch.setattr(vm_console, "open_console", lambda c, mac, v: con)
    monkeypatch.setattr(vm_console, "BLIND_PAUSE", 0)
    found = SimpleNamespace(address="192.0.2.7")
    monkeypatch.setattr(s02_console, "resolve", lambda mac, v, c, **kw: found)
    logins = iter([(False, "Permission denied"), (True, "fresh SSH login works")])
    monkeypatch.setattr(s02_console, "root_login", lambda *a: next(logins))
    monkeypatch.setattr(s02_console, "installed_login", lambda *a: False)
    with caplog.at_level(logging.WARNING):
        outcome = ctx.run(s02_console.set_root_password(ctx, vm))
    assert outcome is Outcome.DONE
    assert backend.typed[-1] == password + "\n"  # the password was typed, twice, then checked
    assert backend.vms == {vm.name}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no console picture of" in w and "02-root-password" in w for w in warnings)
    assert all(password not in w for w in warnings)


# --- quartz: raise the VM's own window, or refuse -------------------------------------------------


@pytest.mark.parametrize(
    ("titles", "running", "expected"),
    [
        (["UTM", "other", VM], ["other", VM], 2),
        ([VM, f"{VM} (Display 2)"], [VM], 0),
        (None, [VM], None),  # windows unreadable, but this VM is the only one running
    ],
)
def test_choose_vm_window(
    titles: list[str] | None, running: list[str], expected: int | None
) -> None:
    assert backends.choose_vm_window(VM, titles, running, "no permission") == expected


@pytest.mark.parametrize(
    ("titles", "running", "message"),
    [
        (None, ["other", VM], r"cannot raise 'nixos-dev'.s window \(no permission\) and 2 VMs run"),
        (None, None, r"unknown number of VMs run"),
        (["UTM", "other"], ["other", VM], r"no UTM window titled 'nixos-dev'.*'UTM', 'other'"),
        ([VM, VM], [VM, VM], r"2 UTM windows are titled 'nixos-dev'"),
        ([VM], ["other"], r"'nixos-dev' is not running in UTM"),
    ],
)
def test_choose_vm_window_refuses(
    titles: list[str] | None, running: list[str] | None, message: str
) -> None:
    with pytest.raises(backends.WindowFocusError, match=message):
        backends.choose_vm_window(VM, titles, running, "no permission")


def test_focus_problem() -> None:
    ok = backends.UtmFocus(True, VM)
    assert backends.focus_problem(VM, ok, ["other", VM]) is None
    other = backends.focus_problem(VM, backends.UtmFocus(True, "other"), ["other", VM])
    assert other == "UTM's key window is 'other', not 'nixos-dev''s"
    behind = backends.focus_problem(VM, backends.UtmFocus(False, VM), [VM])
    assert behind is not None and "not the frontmost" in behind
    assert backends.focus_problem(VM, backends.UNREADABLE_FOCUS, [VM]) is None
    assert backends.focus_problem(VM, backends.UNREADABLE_FOCUS, [VM, "other"]) is not None


class FakeUtm:
    """UTM's windows as the Accessibility API would show them: raising one makes it key."""

    def __init__(self, titles: Sequence[str] | None, key: str | None = "UTM") -> None:
        self._titles, self.key, self.calls = titles, key, list[str]()
        self.front = False
        self.steal_after: int | None = None  # focus() calls before another window takes focus

    def titles(self) -> list[str]:
        if self._titles is None:
            raise backends.WindowsUnreadableError("no Accessibility permission")
        return list(self._titles)

    def raise_window(self, index: int) -> None:
        assert self._titles is not None
        self.calls.append(f"raise {self._titles[index]}")
        self.key = self._titles[index]

    def activate(self) -> None:
        self.calls.append("activate")
        self.front = True

    def focus(self) -> backends.UtmFocus:
        if self.steal_after is not None:
            self.steal_after -= 1
            if self.steal_after < 0:
                self.key = "other"
        return backends.UtmFocus(self.front, self.key)


@pytest.fixture
def macos(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Fake Quartz and AppKit modules on a pretend macOS; the list of what was posted."""
    calls: list[tuple[str, Any]] = []
    app = mock.Mock()
    app.bundleIdentifier.return_value = "com.utmapp.UTM"
    app.processIdentifier.return_value = 4242
    quartz = mock.Mock()
    quartz.CGEventCreateKeyboardEvent.side_effect = lambda src, code, down: {"c": code, "d": down}
    quartz.CGEventSetFlags.side_effect = lambda ev, flags: ev.update(f=flags)
    quartz.CGEventPostToPid.side_effect = lambda pid, ev: calls.append(("post", (pid, ev)))
    appkit = mock.Mock()
    appkit.NSWorkspace.sharedWorkspace.return_value.runningApplications.return_value = [app]
    monkeypatch.setitem(sys.modules, "Quartz", quartz)
    monkeypatch.setitem(sys.modules, "AppKit", appkit)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(time, "sleep", lambda s: None)
    return calls


def _quartz(ui: FakeUtm, running: list[str] | None) -> backends.QuartzBackend:
    return backends.QuartzBackend(
        running_vms=lambda: running, windows=lambda app, appkit: ui, focus_timeout=0.05
    )


def test_quartz_raises_the_vms_window_before_typing(macos: list[tuple[str, Any]]) -> None:
    ui = FakeUtm(["UTM", "other", VM], key="other")
    _quartz(ui, ["other", VM]).type_text(VM, "ab")
    assert ui.calls == [f"raise {VM}", "activate"]
    assert [(e["c"], e["d"]) for _, (pid, e) in macos] == [
        (0, True),
        (0, False),
        (11, True),
        (11, False),
    ]


def test_quartz_refuses_when_the_window_cannot_be_raised_and_two_vms_run(
    macos: list[tuple[str, Any]],
) -> None:
    ui = FakeUtm(None)
    with pytest.raises(backends.WindowFocusError, match=r"2 VMs run \('other', 'nixos-dev'\)"):
        _quartz(ui, ["other", VM]).type_text(VM, "secret")
    assert macos == [] and ui.calls == []


def test_quartz_with_one_vm_and_unreadable_windows_types_as_before(
    macos: list[tuple[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    ui = FakeUtm(None)
    with caplog.at_level(logging.WARNING):
        _quartz(ui, [VM]).type_text(VM, "a")
    assert ui.calls == ["activate"] and len(macos) == 2
    assert "only VM running" in caplog.text


def test_quartz_refuses_when_the_key_window_stays_another_vms(
    macos: list[tuple[str, Any]],
) -> None:
    ui = FakeUtm(["other", VM], key="other")
    ui.raise_window = lambda index: None  # type: ignore[method-assign]  # raising has no effect
    with pytest.raises(backends.WindowFocusError, match=r"key window is 'other', not 'nixos-dev'"):
        _quartz(ui, ["other", VM]).type_text(VM, "x")
    assert macos == []


def test_quartz_stops_when_focus_moves_while_typing(macos: list[tuple[str, Any]]) -> None:
    ui = FakeUtm(["other", VM])
    ui.steal_after = 1  # the first check (before typing) passes, the next sees "other"
    text = "a" * backends.QUARTZ_RECHECK_EVERY
    with pytest.raises(backends.WindowFocusError, match=r"stopped typing .* after 32 of 64"):
        _quartz(ui, ["other", VM]).type_text(VM, text)
    assert len(macos) == backends.QUARTZ_RECHECK_EVERY


def test_quartz_stop_never_leaves_shift_or_a_key_pressed(macos: list[tuple[str, Any]]) -> None:
    ui = FakeUtm(["other", VM])
    ui.steal_after = 1
    # 30 events of "a", then Shift held over "BBBBB": the check waits for Shift's release
    with pytest.raises(backends.WindowFocusError, match=r"after 42 of"):
        _quartz(ui, ["other", VM]).type_text(VM, "a" * 15 + "B" * 5 + "c" * 20)
    last = macos[-1][1][1]
    assert (last["c"], last["d"], last["f"]) == (56, False, 0)  # Shift released, nothing down


def test_quartz_unreadable_running_list_and_windows_refuses(macos: list[tuple[str, Any]]) -> None:
    with pytest.raises(backends.WindowFocusError, match="unknown number of VMs"):
        _quartz(FakeUtm(None), None).type_text(VM, "x")
    assert macos == []


def test_started_vms_reads_utmctl_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook.mac import utm

    rows = [
        utm.VmEntry("1", utm.VmStatus.STARTED, VM),
        utm.VmEntry("2", utm.VmStatus.STOPPED, "off"),
        utm.VmEntry("3", utm.VmStatus.PAUSED, "paused"),
    ]
    monkeypatch.setattr(backends, "list_vms", lambda: rows)
    assert backends._started_vms() == [VM, "paused"]

    def fails() -> list[utm.VmEntry]:
        raise RunbookError("utmctl: not found")

    monkeypatch.setattr(backends, "list_vms", fails)
    assert backends._started_vms() is None
