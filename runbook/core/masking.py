"""Masking: every registered secret value is replaced by `*****` in any text.

A leaf module (it imports nothing of the runbook's) so that errors, models and secrets can
all mask. `Secret` registers its value here; the logging filter, result objects, error
messages and notebook display all pass through `mask()`.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from typing import Final

MASK: Final = "*****"
# Shorter values would mask ordinary words everywhere (the handbook's live-ISO root
# password is literally "root"); such a value is not a secret worth the name anyway.
_MIN_LEN: Final = 6
# The longest secret: atticd's RS256 key, base64 of a PEM, is about 4.4 KB for RSA-4096.
# A 5 MB "password" made the masking regex cost minutes to build (issue 13): refused.
MAX_SECRET_CHARS: Final = 64 * 1024

# Reentrant: a __del__ that logs (jupyter_client's "Could not destroy zmq context") can run
# mask() from a garbage collection in the middle of register() or of building the pattern,
# in the thread that already holds the lock.
_lock = threading.RLock()
_registered: dict[str, str] = {}  # value -> the secret's name (never printed with the value)
_protected: dict[str, str] = {}  # a name the runbook prints -> where it comes from
_pattern: re.Pattern[str] | None = None
_dirty = False


class MaskingError(ValueError):
    """A value masking must refuse; the message names the secret, never its value."""


class SecretTooLongError(MaskingError):
    """A secret longer than MAX_SECRET_CHARS."""


class MaskClashError(MaskingError):
    """A secret that is one of the runbook's own printed names, or part of one."""


def _clash(value: str, secret: str) -> None:
    for name, where in _protected.items():
        if value in name:
            same = "is" if value == name else "is part of"
            raise MaskClashError(
                f"the secret {secret!r} {same} {where}: masking it would hide the "
                f"runbook's own output; store another value for {secret!r}"
            )


def register(value: str, name: str = "secret") -> None:
    """Mask `value` (and its base64 form) in all output from now on. Raises
    SecretTooLongError past MAX_SECRET_CHARS and MaskClashError when the value is (part
    of) a protected name; the pattern is rebuilt once, at the next `mask()`."""
    if len(value) < _MIN_LEN:
        return
    if len(value) > MAX_SECRET_CHARS:
        raise SecretTooLongError(
            f"the secret {name!r} has {len(value):,} characters; expected at most "
            f"{MAX_SECRET_CHARS:,} (a password or a key, not a file)"
        )
    global _dirty
    forms = {value, value.strip()}
    forms.add(base64.b64encode(value.encode()).decode())
    with _lock:
        for form in (value, value.strip()):
            if len(form) >= _MIN_LEN:
                _clash(form, name)
        for f in forms:
            if len(f) >= _MIN_LEN and f not in _registered:
                _registered[f] = name
                _dirty = True


def protect(names: dict[str, str]) -> None:
    """The names the runbook prints now (by where each comes from, e.g. "vms[0].name"):
    replaces the last set. A registered secret inside one raises MaskClashError."""
    with _lock:
        _protected.clear()
        _protected.update({n: where for where, n in names.items() if len(n) >= _MIN_LEN})
        for value, secret in _registered.items():
            _clash(value, secret)


def _current() -> re.Pattern[str] | None:
    global _pattern, _dirty
    if _dirty:
        with _lock:
            if _dirty:
                # Longest first so that a secret containing another is masked whole.
                alts = sorted(_registered, key=len, reverse=True)
                _pattern = re.compile("|".join(re.escape(a) for a in alts)) if alts else None
                _dirty = False
    return _pattern


def mask(text: str) -> str:
    """`text` with every registered secret value replaced by `*****`."""
    if not text:
        return text
    pat = _current()
    if pat is None:
        return text
    return pat.sub(MASK, text)


def clip(text: str, keep: int = 60) -> str:
    """`text` for a one-line message: control characters escaped, cut after `keep`
    characters with how long it was (a 5 MB value is not echoed)."""
    out = escape_controls(text)
    if len(out) <= keep:
        return out
    return f"{out[:keep]}… ({len(text):,} characters)"


def escape_controls(text: str) -> str:
    """Control and format characters (NUL, newline, ESC, bidi overrides) as `\\xNN` or
    `\\uNNNN`, so a message stays one line and a terminal shows what was there."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1] if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def one_line(text: str, limit: int = 300) -> str:
    """A message as the terminal gets it: masked, one line, at most `limit` characters; a
    longer one keeps its start (what failed) and its end (the hint), cut in the middle."""
    out = escape_controls(mask(text))
    if len(out) <= limit:
        return out
    cut = f" … ({len(out):,} characters) … "
    room = max(limit - len(cut), 2)
    head = room * 2 // 3
    return out[:head] + cut + out[len(out) - (room - head) :]


def registered_count() -> int:
    return len(_registered)


class MaskingFilter(logging.Filter):
    """Masks every registered secret in a log record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        masked = mask(msg)
        if masked != msg or record.args:
            record.msg = masked
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, masked, so handlers never see the raw one.
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_masking(logger: logging.Logger | None = None) -> None:
    """Attach the masking filter to every handler of `logger` (root by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
