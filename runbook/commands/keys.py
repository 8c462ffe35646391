"""`runbook keys [--scan-codes] --json TEXT`: the key events that type TEXT on a US layout.

Without --scan-codes: macOS raw key events (what Hammerspoon/Quartz post), a JSON list of
`{"event": "keyDown"|"keyUp"|"flagsChanged", "keyCode": N, "flags": MASK, "char": C|null}`.
With --scan-codes: PC AT set-1 codes (what UTM's `input scan code` takes), a JSON list of
`{"code": N, "action": "make"|"break", "char": C|null}`. `\\n` is the Return key.
Exit 2 with the character and its position when TEXT cannot be typed on a US layout.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Final

from runbook.core.errors import EXIT_OK, InputError
from runbook.mac.console import keymap

logger: Final = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("keys", help="print the key events that type TEXT on a US layout")
    p.add_argument("text", metavar="TEXT", help="the text to type (a newline is the Return key)")
    p.add_argument("--json", action="store_true", help="print the events as JSON (the only format)")
    p.add_argument(
        "--scan-codes",
        action="store_true",
        help="PC AT set-1 scan codes instead of macOS key codes",
    )
    p.set_defaults(func=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    if not args.json:
        raise InputError("--json: required (JSON is the only output format)")
    events: list[dict[str, object]]
    if args.scan_codes:
        events = [c.as_json() for c in keymap.scan_codes(args.text)]
    else:
        events = [e.as_json() for e in keymap.mac_events(args.text)]
    print(json.dumps(events))
    return EXIT_OK
