"""Console key map, `runbook keys`, and the typing backends (handbook lesson 4)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from runbook.cli import execute
from runbook.console import keymap
from runbook.errors import InputError

# Golden tables written from the reference text, not from runbook/console/keymap.py:
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
