"""Console key map, `runbook keys`, and the typing backends (handbook lesson 4)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from runbook.cli import execute
from runbook.core.errors import CommandError, ConnectError, InputError
from runbook.core.models import Result
from runbook.core.secrets import Secret
from runbook.mac import utm
from runbook.mac.console import backends, keymap
from tests.console_rig import ConsoleRig, start_console

# Golden tables written from the reference text, not from runbook/mac/console/keymap.py:
# utm-makefile-keys.md §4 (kVK codes; "Characters that need Shift on US ANSI") ...
_MAC_TEXT = (
    "a=0 b=11 c=8 d=2 e=14 f=3 g=5 h=4 i=34 j=38 k=40 l=37 m=46 n=45 o=31 p=35 q=12 r=15 "
    "s=1 t=17 u=32 v=9 w=13 x=7 y=16 z=6 "
    "0=29 1=18 2=19 3=20 4=21 5=23 6=22 7=26 8=28 9=25 "
    "-=27 ==24 [=33 ]=30 \\=42 ;=41 '=39 ,=43 .=47 /=44 `=50"
)
MAC_BASE = dict(kv.rsplit("=", 1) for kv in _MAC_TEXT.split())
SHIFTED_BASE = {
    "~": "`", "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8",
    "(": "9", ")": "0", "_": "-", "+": "=", "{": "[", "}": "]", "|": "\\", ":": ";", '"': "'",
    "<": ",", ">": ".", "?": "/",
}  # fmt: skip
# ... and utm-peers.md §3 (PC-XT set-1 rows).
SCAN_ROWS = {"1234567890-=": 0x02, "qwertyuiop[]": 0x10, "asdfghjkl;'`": 0x1E, "\\zxcvbnm,./": 0x2B}


def golden(ch: str) -> tuple[int, int, bool]:
    """(macOS key code, set-1 make code, shift) for one printable ASCII character."""
    if ch == " ":
        return 49, 0x39, False
    shift = ch.isupper() or ch in SHIFTED_BASE
    base = ch.lower() if ch.isupper() else SHIFTED_BASE.get(ch, ch)
    scan = next(start + row.index(base) for row, start in SCAN_ROWS.items() if base in row)
    return int(MAC_BASE[base]), scan, shift


PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


def test_reference_tables_cover_all_95_printable_ascii() -> None:
    assert len(PRINTABLE) == 95
    assert {golden(c)[:2] for c in PRINTABLE if c != " "}  # every char resolves


@pytest.mark.parametrize("ch", PRINTABLE, ids=[f"{ord(c):02x}" for c in PRINTABLE])
def test_mac_events_golden(ch: str) -> None:
    code, _, shift = golden(ch)
    ev = keymap.MacEvent
    flags = 0x20000 if shift else 0
    body = [(ev.KEY_DOWN, code, flags), (ev.KEY_UP, code, flags)]
    if shift:
        body = [(ev.FLAGS_CHANGED, 56, 0x20000), *body, (ev.FLAGS_CHANGED, 56, 0)]
    assert [(e.event, e.key_code, e.flags) for e in keymap.mac_events(ch)] == body


@pytest.mark.parametrize("ch", PRINTABLE, ids=[f"{ord(c):02x}" for c in PRINTABLE])
def test_scan_codes_golden(ch: str) -> None:
    _, make, shift = golden(ch)
    body = [make, make | 0x80]
    if shift:
        body = [0x2A, *body, 0xAA]
    assert keymap.scan_code_values(ch) == body


def test_reference_example_hello_scan_codes() -> None:
    # utm-makefile-keys.md §3: input scan code of vm codes {35, 163, 18, 146, 38, 166, ...}
    assert keymap.scan_code_values("hello") == [35, 163, 18, 146, 38, 166, 38, 166, 24, 152]


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_newline_is_the_return_key_never_the_character(newline: str) -> None:
    events = keymap.mac_events(f"ls{newline}")
    assert [e.key_code for e in events] == [37, 37, 1, 1, 36, 36]
    assert keymap.scan_code_values(f"ls{newline}")[-2:] == [0x1C, 0x9C]


def test_tab() -> None:
    assert [e.key_code for e in keymap.mac_events("\t")] == [48, 48]
    assert keymap.scan_code_values("\t") == [0x0F, 0x8F]


def test_shift_held_across_a_run_and_released_at_the_end() -> None:
    ev = keymap.MacEvent
    events = keymap.mac_events("AB")
    assert [(e.event, e.key_code) for e in events] == [
        (ev.FLAGS_CHANGED, 56), (ev.KEY_DOWN, 0), (ev.KEY_UP, 0),
        (ev.KEY_DOWN, 11), (ev.KEY_UP, 11), (ev.FLAGS_CHANGED, 56),
    ]  # fmt: skip
    assert keymap.scan_code_values("AB") == [0x2A, 0x1E, 0x9E, 0x30, 0xB0, 0xAA]


def _replay_mac(events: list[keymap.KeyEvent]) -> str:
    """A key sink like UTM's view (reference §8): key codes only, Shift only from flagsChanged."""
    by_code = {int(v): k for k, v in MAC_BASE.items()} | {49: " ", 36: "\n", 48: "\t"}
    unshift = {v: k for k, v in SHIFTED_BASE.items()}
    shift, out = False, []
    for e in events:
        if e.event is keymap.MacEvent.FLAGS_CHANGED:
            shift = bool(e.flags & 0x20000)
        elif e.event is keymap.MacEvent.KEY_DOWN:
            ch = by_code[e.key_code]
            out.append((ch.upper() if ch.isalpha() else unshift.get(ch, ch)) if shift else ch)
    return "".join(out)


def test_every_printable_char_round_trips_through_a_keycode_only_sink() -> None:
    text = "".join(PRINTABLE) + "\n\tsudo passwd root\n"
    assert _replay_mac(keymap.mac_events(text)) == text


@pytest.mark.parametrize(
    ("text", "pos", "shown"),
    [("é", 0, "'é'"), ("ls ¬ x", 3, "'¬'"), ("a\x1bb", 1, "'\\x1b'"), ("ok→", 2, "'→'")],
)
def test_untypable_character_is_input_error_naming_char_and_position(
    text: str, pos: int, shown: str
) -> None:
    with pytest.raises(InputError, match=rf"cannot type {re.escape(shown)} .* at position {pos} "):
        keymap.mac_events(text)
    with pytest.raises(InputError):
        keymap.scan_codes(text)


def test_chunks() -> None:
    assert list(keymap.chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]


# --- runbook keys ---------------------------------------------------------------------------


def test_cli_keys_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert execute(["keys", "--json", "a!\n"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert events == [
        {"event": "keyDown", "keyCode": 0, "flags": 0, "char": "a"},
        {"event": "keyUp", "keyCode": 0, "flags": 0, "char": "a"},
        {"event": "flagsChanged", "keyCode": 56, "flags": 131072, "char": None},
        {"event": "keyDown", "keyCode": 18, "flags": 131072, "char": "!"},
        {"event": "keyUp", "keyCode": 18, "flags": 131072, "char": "!"},
        {"event": "flagsChanged", "keyCode": 56, "flags": 0, "char": None},
        {"event": "keyDown", "keyCode": 36, "flags": 0, "char": "\n"},
        {"event": "keyUp", "keyCode": 36, "flags": 0, "char": "\n"},
    ]


def test_cli_keys_scan_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert execute(["keys", "--scan-codes", "--json", "hello"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["code"] for e in events] == [35, 163, 18, 146, 38, 166, 38, 166, 24, 152]
    assert events[0] == {"code": 35, "action": "make", "char": "h"}
    assert events[1]["action"] == "break"


def test_cli_keys_untypable_is_exit_2_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from runbook.cli import main; main()", "keys", "--json", "naïve"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        (
            "error: text: cannot type 'ï' (U+00EF) at position 2 on a US keyboard layout; "
            "expected printable ASCII, tab or newline"
        )
    ]


def test_cli_keys_requires_json() -> None:
    assert execute(["keys", "abc"]) == 2


# --- backends -------------------------------------------------------------------------------


@pytest.fixture
def console(tmp_path: Path) -> Iterator[ConsoleRig]:
    rig = start_console(tmp_path)
    yield rig
    rig.stop()


def test_serial_types_into_a_real_shell_that_answers(console: ConsoleRig) -> None:
    b = backends.SerialBackend(port=console.port)
    b.type_text("vm", "X=answer-$((6*7))\n")  # one connection ...
    out = b.run("vm", "echo $X DONE-''MARK", r"answer-42 DONE-MARK")  # ... and the next
    assert "answer-42 DONE-MARK" in out
    # every printable ASCII character reaches the shell unchanged
    text = "".join(PRINTABLE)
    b.run("vm", "read -r LINE", r"read -r LINE")
    b.type_text("vm", text + "\n")
    out = b.run(
        "vm", "printf '%s\\n' \"$LINE\" | od -An -c | tr -d ' \\n'; echo; echo E''ND", "END"
    )
    want = subprocess.run(
        ["od", "-An", "-c"], input=text.encode(), capture_output=True, check=True
    ).stdout.decode()
    assert re.sub(r"\s", "", want) + r"\n" in re.sub(r"\s", "", out)


def test_serial_secret_is_typed_but_masked_in_the_screenshot(console: ConsoleRig, tmp_path) -> None:
    pw = Secret("Console-pw-7391", "live-root-password")
    b = backends.SerialBackend(port=console.port)
    b.run("vm", "read -rs PW; echo GOT-''IT", r"\n?")  # read -s: no echo, like passwd
    b.type_text("vm", pw)
    b.type_text("vm", "\n")
    out = b.run("vm", "echo len=${#PW} val=$PW", r"len=15 val=\S+")
    assert "len=15" in out
    shot = b.screenshot("vm", tmp_path / "console.txt")
    assert shot.stat().st_mode & 0o777 == 0o600
    saved = shot.read_text()
    assert "len=15 val=*****" in saved and "Console-pw-7391" not in saved


def test_serial_refuses_untypable_text_before_sending(console: ConsoleRig) -> None:
    with pytest.raises(InputError, match="position 3"):
        backends.SerialBackend(port=console.port).type_text("vm", "ls é")


def test_serial_wait_times_out_with_the_console_tail(console: ConsoleRig) -> None:
    b = backends.SerialBackend(port=console.port)
    b.run("vm", "echo ready-''mark", "ready-mark", timeout=30)  # the shell is up (slow under load)
    with pytest.raises(CommandError, match=r"no match within 3 s.*nothing-here"):
        b.run("vm", "echo nothing-here", "never-printed", timeout=3)


def test_serial_connection_refused_is_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            backends.SerialBackend(port=port, timeout=1).type_text("vm", "x")


def test_clean_console_text() -> None:
    raw = "\x1b[?2004hvm# echo hi\r\n\x1b[?2004l\rhi\r\n"
    assert backends.clean_console_text(raw) == "vm# echo hi\n\nhi\n"


# utm-input


@pytest.fixture
def on_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")  # a Mac: utm runs its programs


def _osascript_answer(argv: list[str], **kwargs: object) -> Result:
    # utm.run_applescript reads UTM's version before an input script (>= 4.7.3, UTM #7360)
    version = kwargs.get("stdin") == utm.UTM_VERSION_SCRIPT
    return Result("osascript -", 0, "5.0.3\n" if version else "", "", 0.1)


@pytest.fixture
def run(on_mac: None) -> Iterator[mock.MagicMock]:
    with mock.patch("runbook.transport.local.run", autospec=True) as m:
        m.side_effect = _osascript_answer
        yield m


def test_utm_input_scan_codes_golden(run: mock.MagicMock) -> None:
    backends.UtmInputBackend().type_text("nixos utm", "hello\n")
    (argv,), kwargs = run.call_args
    assert argv == [str(utm.OSASCRIPT), "-", "nixos utm"]
    assert kwargs["stdin"] == (
        "on run argv\n"
        '  tell application "UTM"\n'
        "    set vm to virtual machine named (item 1 of argv)\n"
        "    input scan code of vm codes {35, 163, 18, 146, 38, 166, 38, 166, 24, 152, 28, 156}\n"
        "  end tell\n"
        "end run\n"
    )


def test_utm_input_long_text_is_chunked_in_order(run: mock.MagicMock) -> None:
    backends.UtmInputBackend(chunk=4).type_text("vm", "abc")
    typed = [c for c in run.call_args_list if c.kwargs["stdin"] != utm.UTM_VERSION_SCRIPT]
    sent = [m[1] for c in typed if (m := re.search(r"codes \{(.*)\}", c.kwargs["stdin"]))]
    assert sent == ["30, 158, 48, 176", "46, 174"]


def test_utm_input_secret_never_in_argv(run: mock.MagicMock) -> None:
    backends.UtmInputBackend(method="keystroke").type_text("vm", Secret('pa"ss\\w0rd', "pw"))
    (argv,), kwargs = run.call_args
    assert argv == [str(utm.OSASCRIPT), "-", "vm"]
    assert 'input keystroke of vm text "pa\\"ss\\\\w0rd"\n' in kwargs["stdin"]


def test_utm_input_keystroke_newline_escape(run: mock.MagicMock) -> None:
    backends.UtmInputBackend(method="keystroke").type_text("vm", "passwd\r\n")
    assert 'text "passwd\\n"' in run.call_args.kwargs["stdin"]


def test_utm_input_untypable_is_input_error(run: mock.MagicMock) -> None:
    for method in ("scan-codes", "keystroke"):
        with pytest.raises(InputError, match="position 0"):
            backends.UtmInputBackend(method=method).type_text("vm", "ß")
    run.assert_not_called()


def test_utm_input_off_macos_is_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    with mock.patch("runbook.transport.local.run", autospec=True) as run:
        with pytest.raises(utm.MacOnlyError, match=r"^unchecked: "):
            backends.UtmInputBackend().type_text("vm", "x")
        with pytest.raises(utm.MacOnlyError):
            backends.HammerspoonBackend().type_text("vm", "x")
        run.assert_not_called()


# hammerspoon


def _lua_rows(lua: str) -> list[tuple[int, int, int]]:
    body = re.search(r"local seq = \{(.*)\}\n", lua)
    assert body
    return [(int(a), int(b), int(c)) for a, b, c in re.findall(r"\{(\d+),(\d),(\d)\}", body[1])]


def test_hammerspoon_argv_and_raw_events(run: mock.MagicMock) -> None:
    seen: dict[str, object] = {}

    def capture(argv, **kwargs):
        path = re.fullmatch(r'dofile\("(.*)"\)', argv[-1])
        assert path, argv
        # \ddd escapes only for bytes outside [A-Za-z0-9 -_./:]
        file = Path(re.sub(r"\\(\d{3})", lambda m: chr(int(m[1])), path[1]))
        seen["mode"] = file.stat().st_mode & 0o777
        seen["lua"] = file.read_text()
        seen["file"] = file
        return Result("hs", 0, "typed 8 events\n", "", 0.1)

    run.side_effect = capture
    backends.HammerspoonBackend(hs="/opt/homebrew/bin/hs").type_text("nixos-dev", Secret("A!b9"))
    (argv,), _ = run.call_args
    assert argv[:4] == ["/opt/homebrew/bin/hs", "-a", "-q", "-t"]
    assert argv[5] == "-c" and "b9" not in " ".join(argv)
    assert seen["mode"] == 0o600 and not Path(str(seen["file"])).exists()  # removed after
    lua = str(seen["lua"])
    assert 'hs.application.get("com.utmapp.UTM")' in lua
    assert 'app:getWindow("nixos-dev")' in lua and "win:focus()" in lua
    assert "E.newKeyEvent(mods, e[1], e[2] == 1):post(app)" in lua
    # Shift is its own flagsChanged (key 56) around the shifted keys: A, !
    assert _lua_rows(lua) == [
        (56, 1, 1), (0, 1, 1), (0, 0, 1), (18, 1, 1), (18, 0, 1), (56, 0, 0),
        (11, 1, 0), (11, 0, 0), (25, 1, 0), (25, 0, 0),
    ]  # fmt: skip


def test_hammerspoon_screenshot(run: mock.MagicMock, tmp_path: Path) -> None:
    target = tmp_path / "shots" / "02 root password.png"
    assert backends.HammerspoonBackend().screenshot("nixos-dev", target) == target
    (argv,), _ = run.call_args
    lua = argv[-1]
    assert "win:snapshot()" in lua and "saveToFile(" in lua
    assert backends.lua_string(str(target)) in lua


def test_lua_string_escapes_everything_unusual() -> None:
    assert backends.lua_string('a"b\\c\n]]é') == '"a\\034b\\092c\\010\\093\\093\\195\\169"'


# quartz


def test_quartz_posts_keycode_events_with_shift_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    class App:
        def bundleIdentifier(self) -> str:  # noqa: N802
            return "com.utmapp.UTM"

        def processIdentifier(self) -> int:  # noqa: N802
            return 4242

        def activateWithOptions_(self, opts: int) -> None:  # noqa: N802
            calls.append(("activate", opts))

    quartz = mock.Mock()
    quartz.CGEventCreateKeyboardEvent.side_effect = lambda src, code, down: {"c": code, "d": down}
    quartz.CGEventSetFlags.side_effect = lambda ev, flags: ev.update(f=flags)
    quartz.CGEventPostToPid.side_effect = lambda pid, ev: calls.append(("post", (pid, ev)))
    appkit = mock.Mock()
    appkit.NSWorkspace.sharedWorkspace.return_value.runningApplications.return_value = [App()]
    monkeypatch.setitem(sys.modules, "Quartz", quartz)
    monkeypatch.setitem(sys.modules, "AppKit", appkit)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(time, "sleep", lambda s: None)
    # UTM's windows are faked here; the window decisions are tested in test_console_mac.py
    windows = mock.Mock(titles=mock.Mock(return_value=["vm"]))
    windows.focus.return_value = backends.UtmFocus(True, "vm")
    windows.activate.side_effect = lambda: calls.append(("activate", None))
    quartz_backend = backends.QuartzBackend(
        running_vms=lambda: ["vm"], windows=lambda app, appkit: windows
    )
    quartz_backend.type_text("vm", "a:")
    windows.raise_window.assert_called_once_with(0)
    assert calls[0] == ("activate", None)
    posts = [c[1] for c in calls if c[0] == "post"]
    assert {p[0] for p in posts} == {4242}
    assert [(e["c"], e["d"], e["f"]) for _, e in posts] == [
        (0, True, 0), (0, False, 0),
        (56, True, 0x20000), (41, True, 0x20000), (41, False, 0x20000), (56, False, 0),
    ]  # fmt: skip


def test_quartz_off_macos_is_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(utm.MacOnlyError, match=r"^unchecked: the quartz backend needs macOS"):
        backends.QuartzBackend().type_text("vm", "x")
    with pytest.raises(InputError):  # the text is checked first, even here
        backends.QuartzBackend().type_text("vm", "€")


def test_make_backend() -> None:
    assert backends.make_backend("utm-input").name == "utm-input"
    assert backends.make_backend("hammerspoon", hs="hs").name == "hammerspoon"
    assert backends.make_backend("quartz").name == "quartz"
    assert backends.make_backend("serial", serial_port=4444).name == "serial"
    with pytest.raises(InputError, match=r"console\.serial_port"):
        backends.make_backend("serial")
    with pytest.raises(InputError, match=r"console\.backend"):
        backends.make_backend("vnc")
    with pytest.raises(backends.UnsupportedError):
        backends.UtmInputBackend().screenshot("vm", Path("x.png"))


# --- every backend into a console that answers, through the lab's stand-ins ----------------


@pytest.fixture
def lab_vm(console: ConsoleRig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A started VM in the stand-ins' UTM state whose console is the rig's real shell."""
    from tests.console_rig import install_standins

    for key, value in install_standins(tmp_path).items():
        monkeypatch.setenv(key, value)
    state = {
        "version": "4.7.3",  # the utm-input backend needs >= 4.7.3 (UTM #7360)
        "vms": [
            {
                "uuid": "5D419106-2824-4FED-BFE1-24A7F7E253D8",
                "name": "nixos-dev",
                "status": "started",
                "addresses": [],
                "guest_agent": False,
                "mac": "02:00:00:00:00:01",
                "serial": {"host": "127.0.0.1", "port": console.port},
                "drives": [],
            }
        ],
    }
    (tmp_path / "utm.json").write_text(json.dumps(state))
    return "nixos-dev"


@pytest.mark.parametrize(
    "backend",
    [
        backends.UtmInputBackend(),
        backends.UtmInputBackend(method="keystroke"),
        backends.HammerspoonBackend(delay=0),
    ],
    ids=["utm-input-scan-codes", "utm-input-keystroke", "hammerspoon"],
)
def test_backend_types_through_standins_into_a_shell_that_answers(
    lab_vm: str, console: ConsoleRig, backend: backends.ConsoleBackend
) -> None:
    text = "X='Hi: A~Z \"q\" {1+1} <2> |a&b| ^%$#@! ?'\n"
    backend.type_text(lab_vm, text)
    out = backends.SerialBackend(port=console.port).run(
        lab_vm, 'echo "[$X]"', r"\[Hi.*\]\n", timeout=10
    )
    assert '[Hi: A~Z "q" {1+1} <2> |a&b| ^%$#@! ?]' in out


def test_hammerspoon_screenshot_through_standin(lab_vm: str, tmp_path: Path) -> None:
    shot = backends.HammerspoonBackend().screenshot(lab_vm, tmp_path / "02-console.png")
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(CommandError, match="no UTM window titled other"):
        backends.HammerspoonBackend().screenshot("other", tmp_path / "x.png")
