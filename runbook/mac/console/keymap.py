"""Text -> raw key events on a US (ANSI) layout, for consoles that take only key codes (lesson 4).

UTM's SPICE view turns a macOS keyDown into guest input by its *key code* alone and ignores the
character; Shift reaches the guest only through flagsChanged events
(reference/utm-makefile-keys.md §4, "How UTM turns keys into guest input"). So each character
becomes: [Shift flagsChanged down] keyDown keyUp [Shift flagsChanged up], with fixed US key codes
(HIToolbox Events.h kVK_ANSI_*, §4) — never the host layout, never a Unicode payload.

UTM's `input scan code` takes PC AT set-1 codes, break = make | 0x80
(utm-makefile-keys.md §3 "Input Automation Suite", utm-peers.md §0 and §3 "PC-XT").
`\\n` (and `\\r`, `\\r\\n`) is the Return key, keyCode 36 / scan code 0x1c, never the character.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from runbook.core.errors import InputError

logger: Final = logging.getLogger(__name__)

# macOS virtual key codes (HIToolbox Events.h; reference/utm-makefile-keys.md §4).
KVK_RETURN: Final = 36
KVK_TAB: Final = 48
KVK_SPACE: Final = 49
KVK_SHIFT: Final = 56
# CGEventFlags mask for Shift (utm-makefile-keys.md §4, "CGEvent constants").
FLAG_SHIFT: Final = 0x20000

# Set-1 scan codes (utm-peers.md §3 "PC-XT"; utm-makefile-keys.md §3 modifier codes).
SC_ENTER: Final = 0x1C
SC_TAB: Final = 0x0F
SC_SPACE: Final = 0x39
SC_LSHIFT: Final = 0x2A
SC_BREAK: Final = 0x80

# One row per physical key: (unshifted char, shifted char, macOS key code, set-1 make code).
_US_KEYS: Final[tuple[tuple[str, str, int, int], ...]] = (
    ("`", "~", 50, 0x29),
    ("1", "!", 18, 0x02),
    ("2", "@", 19, 0x03),
    ("3", "#", 20, 0x04),
    ("4", "$", 21, 0x05),
    ("5", "%", 23, 0x06),
    ("6", "^", 22, 0x07),
    ("7", "&", 26, 0x08),
    ("8", "*", 28, 0x09),
    ("9", "(", 25, 0x0A),
    ("0", ")", 29, 0x0B),
    ("-", "_", 27, 0x0C),
    ("=", "+", 24, 0x0D),
    ("q", "Q", 12, 0x10),
    ("w", "W", 13, 0x11),
    ("e", "E", 14, 0x12),
    ("r", "R", 15, 0x13),
    ("t", "T", 17, 0x14),
    ("y", "Y", 16, 0x15),
    ("u", "U", 32, 0x16),
    ("i", "I", 34, 0x17),
    ("o", "O", 31, 0x18),
    ("p", "P", 35, 0x19),
    ("[", "{", 33, 0x1A),
    ("]", "}", 30, 0x1B),
    ("\\", "|", 42, 0x2B),
    ("a", "A", 0, 0x1E),
    ("s", "S", 1, 0x1F),
    ("d", "D", 2, 0x20),
    ("f", "F", 3, 0x21),
    ("g", "G", 5, 0x22),
    ("h", "H", 4, 0x23),
    ("j", "J", 38, 0x24),
    ("k", "K", 40, 0x25),
    ("l", "L", 37, 0x26),
    (";", ":", 41, 0x27),
    ("'", '"', 39, 0x28),
    ("z", "Z", 6, 0x2C),
    ("x", "X", 7, 0x2D),
    ("c", "C", 8, 0x2E),
    ("v", "V", 9, 0x2F),
    ("b", "B", 11, 0x30),
    ("n", "N", 45, 0x31),
    ("m", "M", 46, 0x32),
    (",", "<", 43, 0x33),
    (".", ">", 47, 0x34),
    ("/", "?", 44, 0x35),
)


@dataclass(frozen=True)
class Key:
    """How to type one character: the physical key and whether Shift is held."""

    char: str
    mac_code: int
    scan_code: int
    shift: bool


def _build_table() -> dict[str, Key]:
    table: dict[str, Key] = {}
    for plain, shifted, mac, scan in _US_KEYS:
        table[plain] = Key(plain, mac, scan, False)
        table[shifted] = Key(shifted, mac, scan, True)
    table[" "] = Key(" ", KVK_SPACE, SC_SPACE, False)
    table["\t"] = Key("\t", KVK_TAB, SC_TAB, False)
    table["\n"] = Key("\n", KVK_RETURN, SC_ENTER, False)
    return table


US_LAYOUT: Final[dict[str, Key]] = _build_table()


class MacEvent(StrEnum):
    """CGEvent types (kCGEventKeyDown=10, KeyUp=11, FlagsChanged=12; reference §4)."""

    KEY_DOWN = "keyDown"
    KEY_UP = "keyUp"
    FLAGS_CHANGED = "flagsChanged"

    @property
    def cg_type(self) -> int:
        return {"keyDown": 10, "keyUp": 11, "flagsChanged": 12}[self.value]


@dataclass(frozen=True)
class KeyEvent:
    """One raw macOS key event: the key code and the modifier flags *after* the event."""

    event: MacEvent
    key_code: int
    flags: int
    char: str | None = None  # the character this event helps type (None for Shift)

    @property
    def is_down(self) -> bool:
        """True for a key press, and for the flagsChanged that presses Shift."""
        if self.event is MacEvent.FLAGS_CHANGED:
            return bool(self.flags & FLAG_SHIFT)
        return self.event is MacEvent.KEY_DOWN

    def as_json(self) -> dict[str, object]:
        return {
            "event": self.event.value,
            "keyCode": self.key_code,
            "flags": self.flags,
            "char": self.char,
        }


@dataclass(frozen=True)
class ScanCode:
    """One set-1 scan code: make (press) or break (release = make | 0x80)."""

    code: int
    press: bool
    char: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"code": self.code, "action": "make" if self.press else "break", "char": self.char}


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def keys_for(text: str) -> list[Key]:
    """The keys that type `text` on a US layout.

    Raises InputError naming the first character that has no US key and its position.
    """
    out: list[Key] = []
    for pos, ch in enumerate(_normalise_newlines(text)):
        key = US_LAYOUT.get(ch)
        if key is None:
            raise InputError(
                f"text: cannot type {ch!r} (U+{ord(ch):04X}) at position {pos} on a US "
                "keyboard layout; expected printable ASCII, tab or newline"
            )
        out.append(key)
    return out


def _shift(down: bool) -> KeyEvent:
    return KeyEvent(MacEvent.FLAGS_CHANGED, KVK_SHIFT, FLAG_SHIFT if down else 0)


def mac_events(text: str) -> list[KeyEvent]:
    """Raw macOS key events for `text`; Shift is held across runs of shifted characters."""
    events: list[KeyEvent] = []
    held = False
    for key in keys_for(text):
        if key.shift != held:
            events.append(_shift(key.shift))
            held = key.shift
        flags = FLAG_SHIFT if held else 0
        events.append(KeyEvent(MacEvent.KEY_DOWN, key.mac_code, flags, key.char))
        events.append(KeyEvent(MacEvent.KEY_UP, key.mac_code, flags, key.char))
    if held:
        events.append(_shift(False))
    return events


def scan_codes(text: str) -> list[ScanCode]:
    """Set-1 make/break codes for `text`, Left Shift pressed around runs of shifted chars."""
    codes: list[ScanCode] = []
    held = False
    for key in keys_for(text):
        if key.shift != held:
            codes.append(ScanCode(SC_LSHIFT | (0 if key.shift else SC_BREAK), key.shift))
            held = key.shift
        codes.append(ScanCode(key.scan_code, True, key.char))
        codes.append(ScanCode(key.scan_code | SC_BREAK, False, key.char))
    if held:
        codes.append(ScanCode(SC_LSHIFT | SC_BREAK, False))
    return codes


def scan_code_values(text: str) -> list[int]:
    """Just the integers, as UTM's `input scan code of vm codes {...}` takes them."""
    return [c.code for c in scan_codes(text)]


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    """`items` in slices of at most `size` (long texts are sent in several calls)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
