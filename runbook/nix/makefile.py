"""A nixos-config Makefile's variables and recipes, read line by line (it is not Nix).

Enough of GNU make for the doctor: `NAME ?= value` style assignments with the
`ifeq ($(UNAME),Darwin)` branch they sit in (reference/utm-makefile-keys.md §1, "Variables":
NIXNAME defaults to a darwin configuration on a Mac) and each target's recipe lines.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

logger: Final = logging.getLogger(__name__)

# `override NAME = value` keeps the Makefile's value against make's command line (GNU make
# manual, "The override Directive"); without it a command-line variable wins.
_ASSIGN: Final = re.compile(r"^(override\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(\?=|:=|::=|\+=|=)\s*(.*)$")
_TARGET: Final = re.compile(r"^([^\s:=#][^:=]*):(?!=)")


@dataclass(frozen=True)
class MakeVar:
    name: str
    value: str
    line: int
    darwin: bool | None  # True inside `ifeq ($(UNAME),Darwin)`, False in its else, None outside
    override: bool = False  # `override NAME = ...`: make's command line cannot replace it


@dataclass(frozen=True)
class Makefile:
    """The variables (with the Darwin conditional they sit under) and the recipe lines."""

    variables: tuple[MakeVar, ...]
    recipes: dict[str, tuple[tuple[int, str], ...]]

    @classmethod
    def read(cls, path: Path) -> Makefile:
        variables: list[MakeVar] = []
        recipes: dict[str, list[tuple[int, str]]] = {}
        conds: list[bool | None] = []
        target: str | None = None
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.startswith("\t") and target is not None:
                recipes[target].append((number, line))
                continue
            text = line.split("#", 1)[0].strip()
            word = text.split(" ", 1)[0]
            if word in ("ifeq", "ifneq", "ifdef", "ifndef"):
                conds.append(("Darwin" in text) == (word == "ifeq") if "Darwin" in text else None)
            elif word == "else" and conds:
                conds[-1] = None if conds[-1] is None else not conds[-1]
            elif word == "endif" and conds:
                conds.pop()
            elif (assign := _ASSIGN.match(text)) is not None:
                darwin = next((c for c in reversed(conds) if c is not None), None)
                variables.append(
                    MakeVar(assign[2], assign[4], number, darwin, override=bool(assign[1]))
                )
            elif (rule := _TARGET.match(line)) is not None:
                target = rule[1].strip()
                recipes.setdefault(target, [])
        return cls(tuple(variables), {k: tuple(v) for k, v in recipes.items()})

    def overridden(self, name: str) -> MakeVar | None:
        """The `override` assignment of `name` that applies on a Mac, if there is one."""
        found = [
            v for v in self.variables if v.name == name and v.override and v.darwin is not False
        ]
        return found[0] if found else None

    def on_mac(self, name: str) -> MakeVar | None:
        """The definition of `name` that applies when make runs on a Mac (last one wins)."""
        found = [v for v in self.variables if v.name == name and v.darwin is not False]
        return found[-1] if found else None
