"""The user's nixos-config checkout: find the handbook's known mistakes and plan their fixes.

Everything here reads through `runbook.nix.nixfile` (a real parser) and plans edits as splices;
`Change.write` confirms with `nix-instantiate --parse` (where Nix is installed) before a file
is replaced. Handbook lesson 1 (`reference/handbook.zh.md` §关键经验 1): the attic flake's
client breaks the build, so its input, its `outputs` argument and its modules go, nixpkgs'
`services.atticd` / `pkgs.attic-client` stay, and the lock file loses the attic nodes.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

from tree_sitter import Node

from runbook.core.errors import InputError, RunbookError, tail
from runbook.nix.nixfile import (
    Binding,
    Edit,
    NixFile,
    apply_edits,
    apply_head,
    descendants,
    insert_binding,
    insert_in_list,
    list_elements,
    list_strings,
    nix_attrpath,
    nix_string,
    remove_formal,
    remove_node,
    replace_node,
    string_value,
    unwrap,
)
from runbook.transport import local

logger: Final = logging.getLogger(__name__)

# Directories that are never part of the configuration (nixos-config's vm/copy excludes the
# first ones: reference/utm-makefile-keys.md §1 "vm/copy").
_SKIP_DIRS: Final = frozenset({".git", ".jj", ".git-crypt", "vendor", "iso", "result", ".direnv"})
# The repository name in github:OWNER/REPO, git+https://HOST/OWNER/REPO(.git), https://…/REPO/archive
_REPO_IN_URL: Final = re.compile(
    r"^(?:[a-z+]+:(?://[^/]+/)?)?[^/?#]+/([^/?#]+?)(?:\.git)?(?:[/?#]|$)"
)
# Flake packages → the nixpkgs attribute that replaces them (attic.md §3 "Packages").
_NIXPKGS_ATTIC: Final = {
    "attic": "attic-client",
    "attic-client": "attic-client",
    "default": "attic-client",
    "attic-server": "attic-server",
}


@dataclass(frozen=True)
class Problem:
    """One place in the config that is wrong; `fixable` when the planned edits cover it."""

    file: Path  # relative to the config root
    line: int
    message: str
    fixable: bool


@dataclass
class FixPlan:
    """Problems found and the edits that fix the fixable ones, per file."""

    problems: list[Problem] = field(default_factory=list)
    edits: dict[Path, list[Edit]] = field(default_factory=dict)
    rewrites: dict[Path, bytes] = field(default_factory=dict)  # whole files (flake.lock)

    def add(self, problem: Problem, *edits: Edit) -> None:
        self.problems.append(problem)
        self.edits.setdefault(problem.file, []).extend(edits)

    def extend(self, other: FixPlan) -> None:
        self.problems.extend(other.problems)
        for rel, edits in other.edits.items():
            self.edits.setdefault(rel, []).extend(edits)
        self.rewrites.update(other.rewrites)


@dataclass(frozen=True)
class Change:
    """A file's new content, checked to parse."""

    path: Path
    before: bytes
    after: bytes

    def diff(self, label: str) -> str:
        return "".join(
            difflib.unified_diff(
                self.before.decode(errors="replace").splitlines(keepends=True),
                self.after.decode(errors="replace").splitlines(keepends=True),
                f"a/{label}",
                f"b/{label}",
            )
        )

    def check(self) -> None:
        """Raise RunbookError unless the installed Nix (if any) parses the new content."""
        if self.path.suffix == ".nix":
            check_parses_with_nix(self.after, str(self.path))

    def write(self) -> None:
        write_keeping_mode(self.path, self.after)
        logger.info("edited %s", self.path)


def write_changes(changes: Sequence[Change]) -> None:
    """Check every change, then write them: a failed check leaves every file as it was."""
    for change in changes:
        change.check()
    for change in changes:
        change.write()


class ConfigTree:
    """A nixos-config checkout; each `.nix` file is parsed once, when first asked for."""

    def __init__(self, root: Path) -> None:
        if not (root / "flake.nix").is_file():
            raise InputError(f"{root}: not a nixos-config checkout (expected a flake.nix in it)")
        self.root = root
        self._parsed: dict[Path, NixFile] = {}
        self.broken: dict[Path, InputError] = {}  # files that do not parse, filled by parsed()

    def nix_files(self) -> list[Path]:
        """Every .nix file, relative to the root, in a stable order."""
        found: list[Path] = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            here = Path(folder).relative_to(self.root)
            found.extend(here / f for f in sorted(files) if f.endswith(".nix"))
        return found

    def parsed(self) -> dict[Path, NixFile]:
        """Every .nix file that parses; the others land in `broken`."""
        found: dict[Path, NixFile] = {}
        for rel in self.nix_files():
            try:
                found[rel] = self.get(rel)
            except InputError as exc:
                self.broken[rel] = exc
        return found

    def get(self, rel: Path) -> NixFile:
        if rel not in self._parsed:
            self._parsed[rel] = NixFile((self.root / rel).read_bytes(), str(rel))
        return self._parsed[rel]

    def changes(self, plan: FixPlan) -> list[Change]:
        """The new content of every file the plan edits (each checked to parse)."""
        out: list[Change] = []
        for rel in sorted({*plan.edits, *plan.rewrites}):
            before = (self.root / rel).read_bytes()
            after = plan.rewrites.get(rel) or apply_edits(before, plan.edits.get(rel, []), str(rel))
            if after != before:
                out.append(Change(self.root / rel, before, after))
        return out


# -- lesson 1: the attic flake -------------------------------------------------------------------


def is_attic_url(url: str) -> bool:
    """True for a flake URL whose repository is named `attic` (github:zhaofengli/attic, …)."""
    match = _REPO_IN_URL.match(url.strip())
    return match is not None and match.group(1).lower() == "attic"


def attic_inputs(flake: NixFile) -> dict[str, str]:
    """The flake inputs that fetch the attic repository: name → where from."""
    names: dict[str, str] = {}
    for b in flake.under(("inputs",)):
        if len(b.path) < 3:
            continue
        value = string_value(b.value, flake.source)
        key = b.path[-1]
        if value and (
            (key == "url" and is_attic_url(value)) or (key == "repo" and value == "attic")
        ):
            names[b.path[1]] = value if key == "url" else "repo = attic"
    return names


def declared_inputs(flake: NixFile) -> set[str]:
    """Inputs named in `inputs` plus those taken by `outputs` (the latter resolve through the
    flake registry when not declared)."""
    names = {b.path[1] for b in flake.under(("inputs",)) if len(b.path) > 1}
    names.update(f for f in _outputs_formals(flake) if f != "self")
    return names


def _outputs_formals(flake: NixFile) -> dict[str, Node]:
    formals: dict[str, Node] = {}
    for b in flake.find(("outputs",)):
        params = (
            b.value.child_by_field_name("formals")
            if b.value.type == "function_expression"
            else None
        )
        for formal in params.named_children if params is not None else []:
            name = formal.child_by_field_name("name")
            if formal.type == "formal" and name is not None and not name.is_missing:
                formals[flake.text(name)] = formal
    return formals


def plan_attic_flake_removal(tree: ConfigTree) -> FixPlan:
    """Problems and fixes for every trace of the attic flake in the checkout."""
    plan = FixPlan()
    flake_rel = Path("flake.nix")
    flake = tree.get(flake_rel)
    names = attic_inputs(flake)
    if not names:
        return plan
    for name, source in sorted(names.items()):
        _plan_input_removal(plan, flake, flake_rel, name, source)
    for rel, nix in tree.parsed().items():  # a file that does not parse is reported elsewhere
        _plan_reference_removal(plan, nix, rel, set(names))
    return plan


def _plan_input_removal(plan: FixPlan, flake: NixFile, rel: Path, name: str, source: str) -> None:
    seen: set[int] = set()
    for b in flake.under(("inputs", name)):
        # Remove the binding that names the input, not the ones nested inside it.
        if len(b.path) - len(b.own) > 1 or b.node.start_byte in seen:
            continue
        seen.add(b.node.start_byte)
        message = (
            f"flake input `{name}` ({source}): its attic-client fails to build; "
            "use nixpkgs' attic (handbook lesson 1)"
        )
        plan.add(Problem(rel, b.line, message, True), remove_node(flake, b.node))
    formal = _outputs_formals(flake).get(name)
    if formal is not None:
        plan.add(
            Problem(rel, formal.start_point.row + 1, f"`outputs` takes `{name}`", True),
            remove_formal(flake, formal),
        )


def _references(nix: NixFile, rel: Path, names: set[str]) -> Iterator[tuple[Node, tuple[str, ...]]]:
    """Each `inputs.attic.…` (and, in flake.nix, `attic.…`) with its path from the input."""
    for node, path in nix.selects("inputs"):
        if path[0] in names:
            yield node, path
    if rel == Path("flake.nix"):  # `outputs = { attic, ... }:` binds the input by name there
        for name in names:
            for node, path in nix.selects(name):
                yield node, (name, *path)


def _plan_reference_removal(plan: FixPlan, nix: NixFile, rel: Path, names: set[str]) -> None:
    for node, path in _references(nix, rel, names):
        shown = nix.text(node)
        element = _as_list_element(node)
        line = node.start_point.row + 1
        replacement = _nixpkgs_replacement(nix, path)
        if element is not None and replacement:
            plan.add(
                Problem(
                    rel,
                    line,
                    f"`{shown}` comes from the attic flake; nixpkgs has `{replacement}`",
                    True,
                ),
                replace_node(element, replacement),
            )
        elif element is not None:
            plan.add(
                Problem(
                    rel,
                    line,
                    f"`{shown}` comes from the attic flake; nixpkgs' services.atticd replaces it",
                    True,
                ),
                remove_node(nix, element),
            )
        else:
            plan.add(
                Problem(
                    rel,
                    line,
                    f"`{shown}` comes from the attic flake: remove it by hand "
                    "(it is not a list element)",
                    False,
                )
            )


def _as_list_element(node: Node) -> Node | None:
    """`node`, or the parentheses around it, when that is an element of a list literal."""
    while node.parent is not None and node.parent.type == "parenthesized_expression":
        node = node.parent
    return node if node.parent is not None and node.parent.type == "list_expression" else None


def _nixpkgs_replacement(nix: NixFile, path: tuple[str, ...]) -> str | None:
    if len(path) < 4 or path[1] != "packages" or path[-1] not in _NIXPKGS_ATTIC:
        return None
    # Only where `pkgs` is an argument of the file's function, so the replacement evaluates.
    has_pkgs = any(
        n.type == "formal" and nix.text(n.child_by_field_name("name") or n) == "pkgs"
        for n in descendants(nix.tree.root_node)
    )
    return f"pkgs.{_NIXPKGS_ATTIC[path[-1]]}" if has_pkgs else None


# -- flake.lock ------------------------------------------------------------------------------------


def read_lock(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable flake lock file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise InputError(f"{path}: not a flake lock file (expected a `nodes` object)")
    return data


def stale_lock_inputs(lock: dict[str, Any], declared: set[str]) -> list[str]:
    """Inputs the lock's root still pins although flake.nix no longer has them."""
    root = lock["nodes"].get(lock.get("root", "root"), {})
    return sorted(set(root.get("inputs", {})) - declared)


def prune_lock(lock: dict[str, Any], drop: Sequence[str]) -> dict[str, Any]:
    """The lock without the root inputs `drop` and the nodes only they reached, as
    `nix flake lock` leaves it. Raises RunbookError if a kept `follows` goes through them."""
    nodes: dict[str, Any] = json.loads(json.dumps(lock["nodes"]))
    root_key = lock.get("root", "root")
    root_inputs = nodes[root_key].setdefault("inputs", {})
    for name in drop:
        root_inputs.pop(name, None)
    reachable: set[str] = set()
    stack = [root_key]
    while stack:
        key = stack.pop()
        if key in reachable or key not in nodes:
            continue
        reachable.add(key)
        for target in nodes[key].get("inputs", {}).values():
            if isinstance(target, str):
                stack.append(target)
            elif target and target[0] in drop:  # a follows path: ["input", "sub", …]
                raise RunbookError(
                    f"flake.lock: node {key} follows {'/'.join(target)}; "
                    "run `nix flake lock` to relock"
                )
    pruned = {k: v for k, v in nodes.items() if k in reachable}
    return {**lock, "nodes": pruned}


def lock_text(lock: dict[str, Any]) -> bytes:
    # Nix writes the lock as JSON indented by two spaces with a final newline; key order is kept.
    return (json.dumps(lock, indent=2, ensure_ascii=False) + "\n").encode()


# -- list settings such as nix.settings.substituters -------------------------------------------


def find_list_binding(nix: NixFile, path: Sequence[str]) -> Node | None:
    """The list literal bound at `path` (the first, if several), or None when none is bound."""
    bindings = nix.find(path)
    for b in bindings:
        if b.value.type == "list_expression":
            return b.value
    if bindings:
        b = bindings[0]
        raise InputError(
            f"{nix.name}:{b.line}: {'.'.join(path)} is not a list literal; edit it by hand"
        )
    return None


def plan_list_item(
    nix: NixFile, path: Sequence[str], item: str, *, first: bool = False
) -> Edit | None:
    """The edit that puts the string `item` into the list at `path`; None if it is there."""
    lst = find_list_binding(nix, path)
    literal = nix_string(item)
    if lst is not None:
        present = {v.rstrip("/") for v, _ in list_strings(lst, nix.source) or []}
        return (
            None if item.rstrip("/") in present else insert_in_list(nix, lst, literal, first=first)
        )
    # No binding yet: add one to the deepest attrset already on the path.
    return _plan_new_binding(nix, path, f"[ {literal} ]")


def _binds(nix: NixFile, attrset: Node, names: set[str]) -> bool:
    return any(
        b.node.parent is not None and b.node.parent.parent == attrset and b.own[0] in names
        for b in nix.bindings
    )


# -- checking with Nix and writing ---------------------------------------------------------------


def check_parses_with_nix(source: bytes, name: str) -> bool:
    """Confirm `source` parses with the installed Nix; False when Nix is not installed."""
    if local.which("nix-instantiate") is None:
        return False
    result = local.run(["nix-instantiate", "--parse", "-"], stdin=source.decode(), check=False)
    if result.exit_code != 0:
        raise RunbookError(f"{name}: Nix cannot parse the edited file: {tail(result.stderr, 3)}")
    return True


def write_keeping_mode(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, keeping its permission bits."""
    mode = path.stat().st_mode & 0o7777
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- one NixOS system's modules, and the value its files give an option -------------------------

# Module priorities (nixpkgs lib/modules.nix): mkOptionDefault 1500, mkDefault 1000, a plain
# definition 100, mkForce 50, mkVMOverride 10; the lowest number wins and equal ones merge.
PRIORITIES: Final = {"mkOptionDefault": 1500, "mkDefault": 1000, "mkForce": 50, "mkVMOverride": 10}
PLAIN_PRIORITY: Final = 100


class Opaque(NamedTuple):
    """An expression this reader does not evaluate (a variable, a call, an interpolation)."""

    text: str


class NixPath(NamedTuple):
    """A path literal such as `./env`: Nix copies the file into /nix/store."""

    text: str


Literal = bool | int | str | NixPath | Opaque | list["Literal"]


def literal(node: Node, source: bytes) -> Literal:
    """The value of a literal expression; `Opaque` for anything that needs evaluating."""
    text = source[node.start_byte : node.end_byte].decode(errors="surrogateescape")
    kind = node.type
    if kind in ("string_expression", "indented_string_expression"):
        value = string_value(node, source)
        return Opaque(text) if value is None else value
    if kind == "integer_expression":
        return int(text)
    if kind == "variable_expression" and text in ("true", "false"):
        return text == "true"
    if kind == "path_expression" and not any(c.type == "interpolation" for c in node.children):
        return NixPath(text)
    if kind == "list_expression":
        return [literal(e, source) for e in list_elements(node)]
    return Opaque(text)


@dataclass(frozen=True)
class OptionDefinition:
    """One definition of an option in one file of a system."""

    rel: Path
    nix: NixFile
    binding: Binding
    priority: int
    conditional: bool  # under mkIf: applies only when its condition holds

    @property
    def where(self) -> str:
        return f"{self.rel}:{self.binding.line}"

    @property
    def value(self) -> Literal:
        return literal(self.binding.value, self.nix.source)


class Undecided(NamedTuple):
    """An option whose value depends on what this reader does not evaluate."""

    reason: str


def _priority(binding: Binding, nix: NixFile) -> int:
    for wrapper in binding.wrappers:
        if wrapper in PRIORITIES:
            return PRIORITIES[wrapper]
        if wrapper == "mkOverride":
            expr = binding.node.child_by_field_name("expression")
            numbers = (
                [n for n in descendants(expr) if n.type == "integer_expression"] if expr else []
            )
            return int(nix.text(numbers[0])) if numbers else PLAIN_PRIORITY
    return PLAIN_PRIORITY


@dataclass
class SystemView:
    """The files one NixOS system is built from and the definitions they make."""

    name: str
    user: str | None
    files: dict[Path, NixFile]  # the ones that parse
    broken: list[Path] = field(default_factory=list)  # in the system, but not parsed
    missing: list[Path] = field(default_factory=list)  # imported, but not in the checkout

    def definitions(self, path: Sequence[str]) -> list[OptionDefinition]:
        found: list[OptionDefinition] = []
        for rel, nix in self.files.items():
            for b in nix.find(path):
                found.append(OptionDefinition(rel, nix, b, _priority(b, nix), "mkIf" in b.wrappers))
        return found

    def winners(self, path: Sequence[str]) -> list[OptionDefinition]:
        """The definitions that take effect: those of the best (lowest) priority."""
        found = self.definitions(path)
        best = min((d.priority for d in found), default=PLAIN_PRIORITY)
        return [d for d in found if d.priority == best]

    def value(self, path: Sequence[str]) -> Literal | Undecided | None:
        """The option's value (lists merged), None when no file defines it."""
        winners = self.winners(path)
        if not winners:
            return None
        conditional = [d.where for d in winners if d.conditional]
        if conditional:
            return Undecided(f"defined under mkIf at {', '.join(conditional)}")
        values = [d.value for d in winners]
        if all(isinstance(v, list) for v in values):
            return [item for v in values if isinstance(v, list) for item in v]
        if any(v != values[0] for v in values[1:]):
            return Undecided(f"conflicting definitions at {', '.join(d.where for d in winners)}")
        return values[0]

    def where(self, path: Sequence[str]) -> str:
        """file:line of the definitions that take effect, or '' when none."""
        return ", ".join(d.where for d in self.winners(path))

    def names_under(self, prefix: Sequence[str]) -> list[str]:
        """The attribute names defined right below `prefix` (say the users of users.users)."""
        n = len(prefix)
        names = {
            b.path[n] for nix in self.files.values() for b in nix.under(prefix) if len(b.path) > n
        }
        return sorted(names)


@dataclass(frozen=True)
class FlakeSystem:
    """`nixosConfigurations.NAME = mkSystem "NAME" { user = "…"; … }` in flake.nix."""

    name: str
    user: str | None
    line: int


def flake_systems(flake: NixFile, attr: str = "nixosConfigurations") -> dict[str, FlakeSystem]:
    """The flake's NixOS configurations (written dotted or nested) and the user each names."""
    found: dict[str, FlakeSystem] = {}
    for b in flake.under(("outputs", attr)):
        if len(b.path) != 3 or b.path[2] in found:
            continue
        user = None
        for node in descendants(b.value):
            if node.type != "binding":
                continue
            attrpath = node.child_by_field_name("attrpath")
            expr = node.child_by_field_name("expression")
            if attrpath is not None and expr is not None and flake.text(attrpath) == "user":
                user = string_value(expr, flake.source)
                break
        found[b.path[2]] = FlakeSystem(b.path[2], user, b.line)
    return found


def module_paths(nix: NixFile, rel: Path) -> list[Path]:
    """The static path literals in `imports = [ … ]` and `modules = [ … ]` lists, relative to
    the checkout root (`../machines/${name}.nix` and flake outputs are not files here)."""
    found: list[Path] = []
    for node in descendants(nix.tree.root_node):
        if node.type != "binding":
            continue
        attrpath = node.child_by_field_name("attrpath")
        expr = node.child_by_field_name("expression")
        if attrpath is None or expr is None or nix.text(attrpath) not in ("imports", "modules"):
            continue
        value, _ = unwrap(expr, nix.source)
        for element in list_elements(value):
            target = literal(element, nix.source)
            if isinstance(target, NixPath) and not target.text.startswith(("/", "~")):
                found.append(Path(os.path.normpath(rel.parent / target.text)))
    return found


def system_view(tree: ConfigTree, name: str, user: str | None) -> SystemView:
    """The modules of system `name` as lib/mksystem.nix assembles it (reference/
    utm-makefile-keys.md §1 "lib/mksystem.nix": machines/NAME.nix, users/USER/nixos.nix, the
    modules listed there), and every file they import."""
    start = [Path("lib/mksystem.nix"), Path("machines") / f"{name}.nix"]
    if user:
        start.append(Path("users") / user / "nixos.nix")
    return modules_view(tree, name, start, user)


def modules_view(
    tree: ConfigTree, name: str, start: Sequence[Path], user: str | None
) -> SystemView:
    """The files `start` and every file they import, named `name`; lib/mksystem.nix may be
    absent without being reported missing."""
    view = SystemView(name, user, {})
    queue = list(start)
    seen: set[Path] = set()
    while queue:
        rel = queue.pop(0)
        if (tree.root / rel).is_dir():
            rel = rel / "default.nix"
        if rel in seen or rel.parts[:1] == ("..",):
            continue
        seen.add(rel)
        if not (tree.root / rel).is_file():
            if rel != Path("lib/mksystem.nix"):  # a checkout may build systems otherwise
                view.missing.append(rel)
            continue
        try:
            nix = tree.get(rel)
        except InputError:
            view.broken.append(rel)
            continue
        view.files[rel] = nix
        queue.extend(module_paths(nix, rel))
    return view


# -- packages and settings of a system (the attic client, mDNS on the workers) -----------------

SYSTEM_PACKAGES: Final = ("environment", "systemPackages")
# `services.atticd` adds only its `atticd-atticadm` wrapper to environment.systemPackages
# (nixpkgs nixos/modules/services/networking/atticd.nix): `attic` comes from this package.
ATTIC_CLIENT: Final = "attic-client"
_ATTIC_FLAKE_PACKAGE: Final = re.compile(r"^(?:inputs\.)?attic\.packages\.")


def is_attic_client(element: str) -> bool:
    """`pkgs.attic-client`, `attic-client` under `with pkgs;`, or a package of the attic
    flake (`inputs.attic.packages.${system}.attic`, which lesson 1's check flags)."""
    return element.rsplit(".", 1)[-1] == ATTIC_CLIENT or bool(_ATTIC_FLAKE_PACKAGE.match(element))


@dataclass
class PackageList:
    """The elements of a package list value as written (`pkgs.git`, `git` under `with pkgs;`,
    `(python3.withPackages …)`), each with whether a condition guards it (`lib.optionals c
    [ … ]`, `lib.optional c x`); `decided` is False when a part is an expression this reader
    does not evaluate (a variable, another call)."""

    elements: list[tuple[str, Node, bool]] = field(default_factory=list)
    decided: bool = True

    def names(self) -> list[str]:
        return [text for text, _, _ in self.elements]


_OPTIONALS: Final = frozenset({"optionals", "optional"})


def package_elements(value: Node, nix: NixFile, guarded: bool = False) -> PackageList:
    """The package elements of `value`, through `with X;`, `a ++ b` and `lib.optionals`."""
    node, _ = unwrap(value, nix.source)
    found = PackageList()
    if node.type == "list_expression":
        for element in list_elements(node):
            inner, _ = unwrap(element, nix.source)
            found.elements.append((nix.text(inner), element, guarded))
        return found
    if node.type == "with_expression" and (body := node.child_by_field_name("body")) is not None:
        return package_elements(body, nix, guarded)
    operator = node.child_by_field_name("operator")
    parts: list[Node | None] = []
    if node.type == "binary_expression" and operator is not None and nix.text(operator) == "++":
        parts = [node.child_by_field_name("left"), node.child_by_field_name("right")]
    elif node.type == "apply_expression" and apply_head(node, nix.source) in _OPTIONALS:
        argument = node.child_by_field_name("argument")
        if apply_head(node, nix.source) == "optional" and argument is not None:
            inner, _ = unwrap(argument, nix.source)
            found.elements.append((nix.text(inner), argument, True))
            return found
        parts, guarded = [argument], True
    else:
        found.decided = False
        return found
    for part in parts:
        if part is None:
            found.decided = False
            continue
        more = package_elements(part, nix, guarded)
        found.elements += more.elements
        found.decided = found.decided and more.decided
    return found


@dataclass(frozen=True)
class PackageFinding:
    """Where a system installs a package: `where` (file:line) when found; else the
    definitions this reader could not evaluate (`undecided`), and all it read (`read`)."""

    where: str | None
    conditional: list[str]
    undecided: list[str]
    read: list[str]


def find_attic_client(view: SystemView) -> PackageFinding:
    """Does the system put `attic` on PATH (environment.systemPackages, any module)?"""
    found, conditional, undecided, read = None, [], [], []
    for d in view.definitions(SYSTEM_PACKAGES):
        packages = package_elements(d.binding.value, d.nix)
        read.append(d.where)
        hits = [guarded for text, _, guarded in packages.elements if is_attic_client(text)]
        if hits and not d.conditional and not all(hits):
            found = found or d.where
        elif hits:
            conditional.append(d.where)
        elif not packages.decided:
            undecided.append(d.where)
    return PackageFinding(found, conditional, undecided, read)


def _pkgs_in_scope(nix: NixFile) -> bool:
    """`pkgs` is an argument of the file's module function."""
    body = nix.tree.root_node.child_by_field_name("expression")
    formals = body.child_by_field_name("formals") if body is not None else None
    return formals is not None and any(
        f.type == "formal" and nix.text(f.child_by_field_name("name") or f) == "pkgs"
        for f in formals.named_children
    )


def _first_list(node: Node, nix: NixFile) -> tuple[Node, bool] | None:
    """The first list literal of a package value, and whether `with pkgs;` covers it."""
    node, _ = unwrap(node, nix.source)
    if node.type == "list_expression":
        return node, False
    if node.type == "with_expression":
        env, body = node.child_by_field_name("environment"), node.child_by_field_name("body")
        inner = _first_list(body, nix) if body is not None else None
        if inner is None:
            return None
        return inner[0], inner[1] or (env is not None and nix.text(env) == "pkgs")
    if node.type == "binary_expression":
        for field_name in ("left", "right"):
            part = node.child_by_field_name(field_name)
            inner = _first_list(part, nix) if part is not None else None
            if inner is not None:
                return inner
    return None


def plan_package(nix: NixFile, package: str = ATTIC_CLIENT) -> Edit | None:
    """The edit that installs `pkgs.<package>` from this file (environment.systemPackages);
    None when the file installs it already. A new definition merges with the other modules'
    lists, so only a definition in this same file needs its list extended."""
    bindings = nix.find(SYSTEM_PACKAGES)
    for b in bindings:
        names = package_elements(b.value, nix).names()
        if any(text.rsplit(".", 1)[-1] == package for text in names):
            return None
    if bindings:
        b = bindings[0]
        target = _first_list(b.value, nix)
        if target is None:
            raise InputError(
                f"{nix.name}:{b.line}: environment.systemPackages is not a list literal; "
                f"add pkgs.{package} to it by hand"
            )
        lst, with_pkgs = target
        if not with_pkgs and not _pkgs_in_scope(nix):
            raise InputError(
                f"{nix.name}: `pkgs` is not an argument of this module; add pkgs.{package} "
                "to environment.systemPackages by hand"
            )
        return insert_in_list(nix, lst, package if with_pkgs else f"pkgs.{package}")
    if not _pkgs_in_scope(nix):
        raise InputError(
            f"{nix.name}: `pkgs` is not an argument of this module; add "
            f"`environment.systemPackages = [ pkgs.{package} ];` to this module by hand"
        )
    return _plan_new_binding(nix, SYSTEM_PACKAGES, f"[ pkgs.{package} ]")


def _plan_new_binding(nix: NixFile, path: Sequence[str], value: str) -> Edit:
    """`path = value;` in the deepest attrset already on the path, else the module root."""
    for depth in range(len(path) - 1, 0, -1):
        owners = [
            b.value for b in nix.find(path[:depth]) if b.value.type.endswith("attrset_expression")
        ]
        if owners:
            return insert_binding(nix, owners[0], f"{nix_attrpath(path[depth:])} = {value};")
    roots = [r for r in nix.roots if not _binds(nix, r, {"config", "options"})]
    if not roots:
        raise InputError(f"{nix.name}: found no module attribute set to add {'.'.join(path)} to")
    return insert_binding(nix, roots[0], f"{nix_attrpath(path)} = {value};")


def plan_setting(nix: NixFile, path: Sequence[str], value: str) -> Edit | None:
    """The edit that makes this file set `path = value;` (`value` is Nix source such as
    `true`); None when it does. A plain literal set otherwise is replaced; a wrapped or
    computed one is left to the user (InputError)."""
    bindings = nix.find(path)
    for b in bindings:
        if nix.text(b.value) == value and not b.wrappers:
            return None
    if bindings:
        b = bindings[0]
        if b.wrappers or not isinstance(literal(b.value, nix.source), bool | int | str):
            raise InputError(
                f"{nix.name}:{b.line}: {'.'.join(path)} is `{nix.text(b.node)[:60]}`; "
                f"set it to {value} by hand"
            )
        return replace_node(b.value, value)
    return _plan_new_binding(nix, path, value)


def edit_sequentially(nix: NixFile, planners: Sequence[Callable[[NixFile], Edit | None]]) -> bytes:
    """Each planner's edit, planned against the file as the previous edits left it (two new
    bindings for one attrset would otherwise land at the same byte in either order)."""
    current = nix
    for planner in planners:
        edit = planner(current)
        if edit is not None:
            current = NixFile(apply_edits(current.source, [edit], nix.name), nix.name)
    return current.source


def cache_module(view: SystemView) -> Path:
    """The file of a cache system where its attic settings belong: the one that enables
    services.atticd (say modules/attic.nix), else the machine file."""
    defs = view.winners(("services", "atticd", "enable"))
    return defs[0].rel if defs else Path("machines") / f"{view.name}.nix"


AVAHI_ENABLE: Final = ("services", "avahi", "enable")
# nixpkgs nixos/modules/services/networking/avahi-daemon.nix: `nssmdns` was renamed
# `nssmdns4` (mkRenamedOptionModule); both take effect only under services.avahi.enable.
AVAHI_NSS: Final = ("services", "avahi", "nssmdns4")
AVAHI_NSS_OLD: Final = ("services", "avahi", "nssmdns")


def mdns_resolution(view: SystemView) -> dict[str, Literal | Undecided | None]:
    """services.avahi.enable and nssmdns4 (or its old name) as this system sets them."""
    nss = view.value(AVAHI_NSS)
    if nss is None:
        nss = view.value(AVAHI_NSS_OLD)
    return {".".join(AVAHI_ENABLE): view.value(AVAHI_ENABLE), ".".join(AVAHI_NSS): nss}
