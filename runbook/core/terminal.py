"""What the terminal gets beyond plain text: colour for the step outcome tags (on a TTY only,
never with NO_COLOR or --no-color) and the width to fit tables into.

Colour is added at the terminal end only (the runner's relay, `runbook show`): the
notebooks, `run.log` and the records stay plain text. NO_COLOR follows https://no-color.org:
any non-empty value turns colour off.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import IO, Final

RESET: Final = "\033[0m"
# SGR codes (ECMA-48 §8.3.117) per outcome
COLOURS: Final[dict[str, str]] = {
    "done": "\033[32m",  # green
    "already done": "\033[2;32m",  # dim green: nothing changed
    "plan": "\033[36m",  # cyan
    "unchecked": "\033[33m",  # yellow
    "skipped": "\033[35m",  # magenta
    "failed": "\033[1;31m",  # bold red
    "completed": "\033[32m",
    "running": "\033[36m",
    "interrupted": "\033[1;31m",
    "terminated": "\033[1;31m",
}
# `  [done] name`, `  [unchecked: why] name`: the tag the kernel prints (engine.steps._emit)
_TAG: Final = re.compile(
    r"^(?P<lead>[ \t]*)(?P<tag>\[(?P<word>done|already done|plan|unchecked|skipped|failed)"
    r"(?:\]|:[^\n]*\](?= )))",  # a reason may hold "]": up to the last "] " of the line
    re.MULTILINE,
)
# the runner's ✓/✗ notebook lines and its `error: ...` summary
_MARK: Final = re.compile(r"^(?P<line>(?:✓|✗|error:) [^\n]*)", re.MULTILINE)

_enabled = False  # set once by the CLI (`configure`)


def wants_colour(stream: IO[str], no_color_flag: bool = False) -> bool:
    """Colour only on a terminal, and not when NO_COLOR is set (any non-empty value) or
    --no-color was given."""
    if no_color_flag or os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure(stream: IO[str], no_color_flag: bool = False) -> bool:
    global _enabled
    _enabled = wants_colour(stream, no_color_flag)
    return _enabled


def enabled() -> bool:
    return _enabled


def paint(word: str, text: str, on: bool | None = None) -> str:
    """`text` in the colour of outcome/status `word` (as it is when colour is off)."""
    colour = COLOURS.get(word)
    if not (_enabled if on is None else on) or colour is None:
        return text
    return f"{colour}{text}{RESET}"


def colour_tags(text: str, on: bool | None = None) -> str:
    """The outcome tags and the ✓/✗/error lines of a run's output, coloured."""
    if not (_enabled if on is None else on):
        return text

    def tag(m: re.Match[str]) -> str:
        return m["lead"] + paint(m["word"], m["tag"], True)

    def mark(m: re.Match[str]) -> str:
        line = m["line"]
        word = "completed" if line.startswith("✓") else "failed"
        return paint(word, line, True)

    return _MARK.sub(mark, _TAG.sub(tag, text))


def width(default: int = 100) -> int:
    """The terminal's columns ($COLUMNS first, as shutil does), at least 60."""
    return max(60, shutil.get_terminal_size((default, 24)).columns)


def cut(text: str, room: int) -> str:
    """`text` in at most `room` characters, an ellipsis marking a cut."""
    if room <= 0:
        return ""
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"
