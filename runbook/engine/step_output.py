"""Where a step's printed output goes while steps run in parallel (`Context.run_parallel`).

Step code prints as it goes (diffs, a make target's lines, repairs). Run one at a time that
output follows the step's header; run in parallel it would interleave, so while
`Context.run_parallel` runs, `sys.stdout` is a router that keeps each worker thread's text in
its step's buffer, printed in step order afterwards. Lines that arrive on other threads (a
subprocess's output pumps) go through `line_printer()`, bound to the step by its caller.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Final

_local: Final = threading.local()


class _Router:
    """A stand-in for sys.stdout: a thread that runs a step writes to that step's buffer."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, text: str) -> int:
        buffer: list[str] | None = getattr(_local, "buffer", None)
        if buffer is None:
            return self.out.write(text)
        buffer.append(text)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def __getattr__(self, name: str) -> object:  # encoding, isatty, ... of the real stream
        return getattr(self.out, name)


@contextmanager
def routed_stdout() -> Iterator[None]:
    """sys.stdout routes per thread (see `capture`) until the block ends."""
    real = sys.stdout
    sys.stdout = _Router(real)
    try:
        yield
    finally:
        sys.stdout = real


@contextmanager
def capture(buffer: list[str]) -> Iterator[None]:
    """What this thread prints (through a routed stdout) goes to `buffer`."""
    _local.buffer = buffer
    try:
        yield
    finally:
        _local.buffer = None


def line_printer() -> Callable[[str], None]:
    """Prints a line, into the calling thread's step buffer when it has one: for lines that
    arrive on another thread (e.g. `local.run`'s on_line), bound here on the caller's."""
    buffer: list[str] | None = getattr(_local, "buffer", None)
    if buffer is None:
        return print
    return lambda line: buffer.append(line + "\n")
