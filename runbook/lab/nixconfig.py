"""Read the settings the lab applies from a NixOS configuration, with runbook/nix/nixfile.py.

What a lab switch evaluates, as lib/mksystem.nix builds a system (reference/
utm-makefile-keys.md §1 "lib/mksystem.nix": machines/${name}.nix, users/${user}/nixos.nix):
the machine file, the user file, and every path in their `imports`. Only the options the
runbook changes are read; each must be a literal the lab can evaluate (a string, a bool,
a list of strings, `pkgs.fish`, a path), through mkDefault/mkForce/mkOverride priorities.
Any other form of those options is an error, never a silent skip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tree_sitter import Node

from runbook.core.errors import InputError
from runbook.nix.nixfile import Binding, NixFile, list_elements, string_value

logger: Final = logging.getLogger(__name__)

# nixpkgs lib/modules.nix: mkOptionDefault 1500, mkDefault 1000, plain 100, mkForce 50.
PRIORITY: Final = {"mkOptionDefault": 1500, "mkDefault": 1000, "mkForce": 50, "mkVMOverride": 10}
PLAIN: Final = 100
# `pkgs.X` shells the lab has (Debian paths of the same programs).
SHELLS: Final = {"fish": "/usr/bin/fish", "bash": "/bin/bash", "bashInteractive": "/bin/bash"}

Value = str | bool | int | list[str] | None


class EvalError(InputError):
    """The configuration cannot be evaluated by the lab (exit like a failed nix eval)."""


@dataclass
class LabDefinition:
    value: Value
    priority: int
    where: str


@dataclass
class Evaluated:
    files: list[Path] = field(default_factory=list)
    defs: dict[tuple[str, ...], list[LabDefinition]] = field(default_factory=dict)

    def get(self, *path: str, default: Value = None) -> Value:
        found = self.defs.get(tuple(path))
        if not found:
            return default
        best = min(d.priority for d in found)
        winners = [d for d in found if d.priority == best]
        if all(isinstance(d.value, list) for d in winners):
            merged: list[str] = []
            for d in winners:
                merged.extend(d.value or [])  # type: ignore[arg-type]
            return merged
        values = {repr(d.value) for d in winners}
        if len(values) > 1:
            where = ", ".join(d.where for d in winners)
            raise EvalError(
                f"The option `{'.'.join(path)}' has conflicting definition values (in {where})"
            )
        return winners[0].value

    def strings(self, *path: str) -> list[str]:
        value = self.get(*path, default=[])
        return [str(v) for v in value] if isinstance(value, list) else []

    def names_under(self, *prefix: str) -> set[str]:
        n = len(prefix)
        return {p[n] for p in self.defs if p[:n] == prefix and len(p) > n}


def _priority(binding: Binding, nix: NixFile) -> int:
    for wrapper in binding.wrappers:
        if wrapper == "mkIf":
            raise EvalError(
                f"{nix.name}:{binding.line}: {'.'.join(binding.path)}: "
                "mkIf conditions are not evaluated by the lab"
            )
        if wrapper == "mkOverride":
            head = binding.node.child_by_field_name("expression")
            text = nix.text(head) if head is not None else ""
            digits = "".join(ch for ch in text.split("mkOverride", 1)[-1][:8] if ch.isdigit())
            return int(digits) if digits else PLAIN
        if wrapper in PRIORITY:
            return PRIORITY[wrapper]
    return PLAIN


def literal(node: Node, nix: NixFile, kind: str) -> Value:
    """A literal of `kind` (str, bool, list, shell, path); EvalError for any other form."""
    text = nix.text(node)
    if kind == "bool" and node.type == "variable_expression" and text in ("true", "false"):
        return text == "true"
    if kind in ("str", "path") and (s := string_value(node, nix.source)) is not None:
        return s
    if kind == "path" and node.type == "path_expression":
        return str((Path(nix.name).parent / text).resolve())
    if kind == "shell":
        if node.type == "select_expression" and text.startswith("pkgs.") and text[5:] in SHELLS:
            return SHELLS[text[5:]]
        if (s := string_value(node, nix.source)) is not None:
            return s
    if kind in ("list", "paths") and node.type == "list_expression":
        items = []
        for element in list_elements(node):
            item = literal(element, nix, "path" if kind == "paths" else "str")
            items.append(str(item))
        return items
    raise EvalError(
        f"{nix.name}:{node.start_point.row + 1}: cannot evaluate `{text[:60]}` "
        f"(the lab expects a {kind} literal here)"
    )


def _imports(nix: NixFile) -> list[Path]:
    paths = []
    for binding in nix.find(("imports",)):
        for element in list_elements(binding.value):
            if element.type == "path_expression":
                target = (Path(nix.name).parent / nix.text(element)).resolve()
                paths.append(target / "default.nix" if target.is_dir() else target)
            else:  # an input's module (inputs.x.nixosModules.y): not the lab's business
                logger.debug("%s: import %s not followed", nix.name, nix.text(element))
    return paths


def evaluate(entry_files: list[Path], options: dict[tuple[str, ...], str]) -> Evaluated:
    """Parse the files and their imports; collect every definition of `options` (a path with
    "*" as a wildcard component, mapped to its literal kind)."""
    result = Evaluated()
    todo = list(entry_files)
    while todo:
        path = todo.pop(0)
        if path in result.files:
            continue
        nix = NixFile.read(path)  # InputError with file:line:col when it does not parse
        result.files.append(path)
        todo.extend(_imports(nix))
        for binding in nix.bindings:
            kind = _kind(binding.path, options)
            if kind is None:
                continue
            value = literal(binding.value, nix, kind)
            result.defs.setdefault(binding.path, []).append(
                LabDefinition(value, _priority(binding, nix), f"{path}:{binding.line}")
            )
    return result


def _kind(path: tuple[str, ...], options: dict[tuple[str, ...], str]) -> str | None:
    for pattern, kind in options.items():
        if len(pattern) == len(path) and all(
            p in ("*", q) for p, q in zip(pattern, path, strict=True)
        ):
            return kind
    return None


def flake_user(flake: Path, name: str) -> str:
    """The `user` that flake.nix passes to mkSystem for nixosConfigurations.<name>."""
    nix = NixFile.read(flake)
    for binding in nix.bindings:
        if binding.path[-2:] != ("nixosConfigurations", name):
            continue
        for node in _walk(binding.value):
            if node.type == "binding":
                attr = node.child_by_field_name("attrpath")
                expr = node.child_by_field_name("expression")
                if attr is not None and expr is not None and nix.text(attr) == "user":
                    user = string_value(expr, nix.source)
                    if user:
                        return user
        raise EvalError(
            f'{flake}:{binding.line}: nixosConfigurations.{name}: no `user = "..."`'
            " in its mkSystem call"
        )
    raise EvalError(
        f"flake 'path:{flake.parent}' does not provide attribute "
        f"'packages.aarch64-linux.nixosConfigurations.\"{name}\".config.system.build.toplevel', "
        f'\'legacyPackages.aarch64-linux.nixosConfigurations."{name}".config.system.build.'
        f"toplevel' or 'nixosConfigurations.\"{name}\".config.system.build.toplevel'"
    )


def _walk(node: Node) -> list[Node]:
    out = [node]
    for child in node.named_children:
        out.extend(_walk(child))
    return out
