"""Lab stand-in for Hammerspoon's `hs` CLI: runs the runbook's typing and snapshot Lua.

`hs [-a] [-q] [-t SEC] -c LUA` (reference/utm-makefile-keys.md §5 "hs.ipc / hs CLI"); a
`dofile("PATH")` chunk is read from PATH. The typing Lua carries `local seq = {{code, down,
shift}, ...}` and `app:getWindow("VM")`: the events go to a key sink that behaves like UTM's
view (§4, §8 "Fake UTM key sink"): key codes only, Shift only from flagsChanged events of the
Shift key (56/60), then a US keymap; the characters land on the VM's lab console. A snapshot
Lua writes a PNG to its `saveToFile` path. Lua errors exit 65, no such window is a Lua error
("no UTM window titled ..."), as with the real CLI.
"""

from __future__ import annotations

import re
import struct
import sys
import zlib
from pathlib import Path

from runbook.lab.standins import utm_state

EXIT_LUA_ERROR = 65


def _lua_unquote(literal: str) -> str:
    raw = re.sub(r"\\(\d{1,3})", lambda m: chr(int(m[1])), literal)
    return raw.encode("latin-1").decode("utf-8", errors="replace")


def _string_arg(lua: str, call: str) -> str | None:
    found = re.search(re.escape(call) + r'\("((?:[^"\\]|\\.)*)"', lua)
    return _lua_unquote(found[1]) if found else None


def replay(rows: list[tuple[int, int, int]]) -> str:
    """What UTM's view would type for these `{code, down, shift}` events (§4)."""
    out, shift = [], False
    for code, down, _flags in rows:
        if code in utm_state.KVK_SHIFTS:  # a flagsChanged event: the only way Shift counts
            shift = bool(down)
        elif down and code in utm_state.KVK_TO_CHAR:  # keyDown: the code, never a string
            ch = utm_state.KVK_TO_CHAR[code]
            out.append(utm_state.shifted(ch) if shift else ch)
    return "".join(out)


def _png(path: Path) -> None:
    """A 1x1 grey PNG: the lab has no screen to photograph."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def run_lua(lua: str) -> int:
    inner = _string_arg(lua, "dofile")
    if inner is not None:
        lua = Path(inner).read_text()
    window = _string_arg(lua, "app:getWindow")
    state = utm_state.load()
    vm = utm_state.find(state, window) if window else None
    if window is not None and (vm is None or vm["status"] != "started"):
        print(f"error: no UTM window titled {window}", file=sys.stderr)
        return EXIT_LUA_ERROR
    seq = re.search(r"local seq = \{(.*)\}\n", lua)
    if seq and vm is not None:
        rows = [(int(a), int(b), int(c)) for a, b, c in re.findall(r"\{(\d+),(\d),(\d)\}", seq[1])]
        utm_state.type_on_console(vm, replay(rows))
        print(f"typed {len(rows)} events")
        return 0
    target = _string_arg(lua, "img:saveToFile")
    if target is not None:
        _png(Path(target))
        print(target)
        return 0
    print("error: the lab's hs stand-in does not know this Lua", file=sys.stderr)
    return EXIT_LUA_ERROR


def main(argv: list[str]) -> int:
    chunks = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-c"]
    if not chunks:
        print("usage: hs [-a] [-q] [-t SEC] -c LUA", file=sys.stderr)
        return 64
    for lua in chunks:
        code = run_lua(lua)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
