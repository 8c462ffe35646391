"""Masking inside the notebook kernel: every way output leaves it goes through `mask`.

papermill records whatever the kernel sends (streams, display data, results, tracebacks)
into the executed notebook, and the runner streams it to the terminal and `run.log`.
So masking happens here, before a message leaves the kernel: a secret that a step
loads or creates at run time is registered in this process and never known outside it.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

from runbook.core.masking import MaskingFilter, install_log_masking, mask

logger: Final = logging.getLogger(__name__)

_installed = False


class MaskingStream:
    """A text stream proxy whose `write` masks registered secrets."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(mask(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._inner.flush()  # ipykernel sends buffered output on flush: forward it

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _mask_bundle(data: Any) -> Any:
    if isinstance(data, str):
        return mask(data)
    if isinstance(data, list):
        return [_mask_bundle(v) for v in data]
    if isinstance(data, dict):
        return {k: _mask_bundle(v) for k, v in data.items()}
    return data


def _wrap_first_arg(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(data: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(_mask_bundle(data), *args, **kwargs)

    return wrapper


def _install_ipython_hooks() -> None:
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python (tests, scripts): the streams are enough
        return
    shell = get_ipython()
    if shell is None:
        return
    # display(...) and rich reprs
    shell.display_pub.publish = _wrap_first_arg(shell.display_pub.publish)
    # the value of a cell's last expression
    hook = shell.displayhook
    if hasattr(hook, "write_format_data"):
        hook.write_format_data = _wrap_first_arg(hook.write_format_data)
    # tracebacks: ipykernel sends `evalue` and the rendered frames as the error output
    original: Callable[..., Any] = shell._showtraceback

    def showtraceback(etype: Any, evalue: Any, stb: Any) -> Any:
        masked_value = mask(str(evalue))
        try:
            evalue = type(evalue)(masked_value) if masked_value != str(evalue) else evalue
        except Exception:  # noqa: BLE001 - an exception type that cannot be rebuilt from text
            evalue = RuntimeError(masked_value)
        return original(etype, evalue, _mask_bundle(stb))

    shell._showtraceback = showtraceback


def install() -> None:
    """Mask stdout, stderr, logging, display data and tracebacks in this process (once)."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.stdout = MaskingStream(sys.stdout)
    sys.stderr = MaskingStream(sys.stderr)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(MaskingFilter())
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("paramiko", "asyncio", "traitlets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_masking(root)
    _install_ipython_hooks()
