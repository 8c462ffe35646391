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

_lock = threading.Lock()
_registered: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(value: str) -> None:
    """Mask `value` (and its base64 form) in all output from now on."""
    if len(value) < _MIN_LEN:
        return
    global _pattern
    forms = {value, value.strip()}
    forms.add(base64.b64encode(value.encode()).decode())
    with _lock:
        before = len(_registered)
        _registered.update(f for f in forms if len(f) >= _MIN_LEN)
        if len(_registered) != before:
            # Longest first so that a secret containing another is masked whole.
            alts = sorted(_registered, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(a) for a in alts))


def mask(text: str) -> str:
    """`text` with every registered secret value replaced by `*****`."""
    pat = _pattern
    if pat is None or not text:
        return text
    return pat.sub(MASK, text)


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
