"""Read a Nix file with a real parser (tree-sitter-nix) and edit it by splicing byte ranges.

Reading: every binding gets its *full* attribute path from the module root, whether it is
written dotted (`nix.settings.substituters = …`), nested (`nix = { settings = { … }; }`) or
mixed, and through `let … in`, `with`, function bodies, parentheses and the `lib.mk*`
wrappers (`mkDefault`, `mkForce`, `mkIf cond`, `mkMerge [ … ]`, …). A leading `config.` at a
module root is dropped, since a NixOS module may put its settings under `config`.

Editing: an `Edit` replaces one byte range; everything outside the ranges (formatting,
comments) is left as the user wrote it. `apply_edits` re-parses the result and refuses it if
it no longer parses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Final

import tree_sitter_nix
from tree_sitter import Language, Node, Parser

from runbook.core.errors import InputError

# Wrappers whose last argument is the value itself (nixpkgs lib/modules.nix names).
_TRANSPARENT: Final = frozenset(
    {
        "mkDefault",
        "mkForce",
        "mkOverride",
        "mkIf",
        "mkMerge",
        "mkBefore",
        "mkAfter",
        "mkOrder",
        "mkOptionDefault",
        "mkImageMediaOverride",
        "mkVMOverride",
        "mkFixStrictness",
    }
)
# Bindings whose list elements are whole modules (their attrsets start a new root).
_MODULE_LISTS: Final = frozenset({"imports", "modules"})
_ATTRSETS: Final = frozenset({"attrset_expression", "rec_attrset_expression"})
DYNAMIC: Final = "${…}"  # an interpolated attribute name: never matches a query


@cache
def _parser() -> Parser:
    return Parser(Language(tree_sitter_nix.language()))


@dataclass(frozen=True)
class Binding:
    """`path = value;` with its full path from the module root."""

    path: tuple[str, ...]
    own: tuple[str, ...]  # the attribute path as written in this binding
    node: Node = field(repr=False, compare=False)
    value: Node = field(repr=False, compare=False)  # unwrapped from parentheses and mk* calls
    wrappers: tuple[str, ...] = ()  # e.g. ("mkForce",)

    @property
    def line(self) -> int:
        return self.node.start_point.row + 1


@dataclass(frozen=True)
class Edit:
    """Replace bytes [start, end) with `text`."""

    start: int
    end: int
    text: bytes = b""


class NixFile:
    """One parsed Nix file: its source bytes, tree and the bindings found in it."""

    def __init__(self, source: bytes, name: str = "<nix>") -> None:
        self.source = source
        self.name = name
        self.tree = _parser().parse(source)
        problem = first_syntax_error(self.tree.root_node)
        if problem is not None:
            row, col = problem.start_point.row + 1, problem.start_point.column + 1
            raise InputError(f"{name}:{row}:{col}: not valid Nix (the parser stops here)")
        self.roots: list[Node] = []  # attrsets at the module root (path ())
        self.bindings: list[Binding] = []
        body = self.tree.root_node.child_by_field_name("expression")
        if body is not None:
            self._walk(body, ())

    @classmethod
    def read(cls, path: Path) -> NixFile:
        try:
            return cls(path.read_bytes(), str(path))
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror})") from None

    def text(self, node: Node) -> str:
        return self.source[node.start_byte : node.end_byte].decode(errors="surrogateescape")

    # -- queries -------------------------------------------------------------------------

    def find(self, path: Sequence[str]) -> list[Binding]:
        """Bindings whose full path is exactly `path`."""
        want = tuple(path)
        return [b for b in self.bindings if b.path == want]

    def under(self, prefix: Sequence[str]) -> list[Binding]:
        """Bindings at or below `prefix`."""
        want = tuple(prefix)
        return [b for b in self.bindings if b.path[: len(want)] == want]

    def strings(self, path: Sequence[str]) -> list[str]:
        """The string literals of every list bound at `path` (all definitions merged)."""
        found: list[str] = []
        for b in self.find(path):
            found.extend(s for s, _ in list_strings(b.value, self.source) or [])
        return found

    def string(self, path: Sequence[str]) -> str | None:
        """The string literal bound at `path`, if there is exactly one such binding."""
        values = [string_value(b.value, self.source) for b in self.find(path)]
        return values[0] if len(values) == 1 else None

    def selects(self, variable: str) -> Iterator[tuple[Node, tuple[str, ...]]]:
        """Every `variable.a.b…` select expression and its attribute path."""
        for node in descendants(self.tree.root_node):
            if node.type != "select_expression":
                continue
            head = node.child_by_field_name("expression")
            if head is None or head.type != "variable_expression" or self.text(head) != variable:
                continue
            attrpath = node.child_by_field_name("attrpath")
            if attrpath is not None:
                yield node, attr_names(attrpath, self.source)

    # -- the walk that gives each binding its full path --------------------------------------

    def _walk(self, node: Node, prefix: tuple[str, ...] | None) -> None:
        kind = node.type
        if kind in _ATTRSETS:
            self._walk_attrset(node, prefix)
        elif kind == "let_expression":
            for child in _named(node):
                self._walk(child, prefix if child == node.child_by_field_name("body") else None)
        elif kind in ("function_expression", "with_expression", "assert_expression"):
            body = node.child_by_field_name("body")
            for child in _named(node):
                self._walk(child, prefix if child == body else None)
        elif kind == "parenthesized_expression":
            for child in _named(node):
                self._walk(child, prefix)
        elif kind == "apply_expression":
            transparent = prefix is not None and apply_head(node, self.source) in _TRANSPARENT
            arg = node.child_by_field_name("argument")
            for child in _named(node):
                self._walk(child, prefix if transparent and child == arg else None)
        elif kind == "list_expression" and prefix is not None and _is_merge_list(node, self):
            for child in _named(node):
                self._walk(child, prefix)
        else:
            for child in _named(node):
                self._walk(child, None)

    def _walk_attrset(self, node: Node, prefix: tuple[str, ...] | None) -> None:
        if prefix == ():
            self.roots.append(node)
        for binding in _bindings_of(node):
            if binding.type != "binding":
                for child in _named(binding):
                    self._walk(child, None)
                continue
            attrpath = binding.child_by_field_name("attrpath")
            expr = binding.child_by_field_name("expression")
            if attrpath is None or expr is None:
                continue
            own = attr_names(attrpath, self.source)
            full = _module_path(prefix, own)
            if full:  # `config = …` itself (path ()) is the root, not a setting
                value, wrappers = unwrap(expr, self.source)
                self.bindings.append(Binding(full, own, binding, value, wrappers))
            if own[-1] in _MODULE_LISTS:
                self._walk_module_list(expr)
            else:
                self._walk(expr, full)

    def _walk_module_list(self, expr: Node) -> None:
        value, _ = unwrap(expr, self.source)
        if value.type != "list_expression":
            self._walk(expr, None)
            return
        for element in _named(value):
            self._walk(element, ())


def _module_path(prefix: tuple[str, ...] | None, own: tuple[str, ...]) -> tuple[str, ...] | None:
    if prefix is None:
        return None
    # `config.x = …` or `config = { x = …; }` in a module root sets the option x: a module
    # that has `config` keeps its settings there (nixpkgs lib/modules.nix).
    return own[1:] if prefix == () and own[0] == "config" else prefix + own


def _is_merge_list(node: Node, nix: NixFile) -> bool:
    parent = node.parent
    while parent is not None and parent.type == "parenthesized_expression":
        parent = parent.parent
    return parent is not None and apply_head(parent, nix.source) == "mkMerge"


def _named(node: Node) -> Iterator[Node]:
    for child in node.named_children:
        if child.type != "comment":
            yield child


def _bindings_of(attrset: Node) -> list[Node]:
    for child in attrset.named_children:
        if child.type == "binding_set":
            return [b for b in child.named_children if b.type != "comment"]
    return []


def descendants(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.named_children))


def first_syntax_error(node: Node) -> Node | None:
    """The first ERROR or MISSING node, or None when the tree is clean."""
    if not node.has_error:
        return None
    stack = [node]  # all children: a MISSING token (say a `]`) is not a named node
    while stack:
        current = stack.pop()
        if current.type == "ERROR" or (current.is_missing and not _trailing_formal(current)):
            return current
        stack.extend(reversed([c for c in current.children if c.has_error or c.is_missing]))
    return None


def _trailing_formal(node: Node) -> bool:
    """The name tree-sitter-nix 0.1.0 finds missing after a trailing comma, as in `{ a, b, }:`.

    Nix accepts that comma (nix-instantiate --parse does; nixfmt writes it), the grammar does
    not and recovers with an empty last formal: that is not an error here.
    """
    formal = node.parent
    if node.type != "identifier" or formal is None or formal.type != "formal":
        return False
    before, after = formal.prev_sibling, formal.next_sibling
    return before is not None and before.type == "," and after is not None and after.type == "}"


def is_empty_formal(formal: Node) -> bool:
    """The empty formal of a trailing comma (see `_trailing_formal`)."""
    name = formal.child_by_field_name("name")
    return formal.type == "formal" and (name is None or name.is_missing)


def attr_names(attrpath: Node, source: bytes) -> tuple[str, ...]:
    """`a."b".${c}` → ("a", "b", DYNAMIC)."""
    names: list[str] = []
    for attr in attrpath.named_children:
        if attr.type == "identifier":
            names.append(source[attr.start_byte : attr.end_byte].decode())
        else:
            literal = string_value(attr, source)
            names.append(DYNAMIC if literal is None else literal)
    return tuple(names)


def apply_head(node: Node, source: bytes) -> str | None:
    """The name called by an application: `lib.mkIf c x` → "mkIf", `f a b` → "f"."""
    while node.type == "apply_expression":
        function = node.child_by_field_name("function")
        if function is None:
            return None
        node = function
    if node.type == "variable_expression":
        return source[node.start_byte : node.end_byte].decode()
    if node.type == "select_expression":
        attrpath = node.child_by_field_name("attrpath")
        return attr_names(attrpath, source)[-1] if attrpath is not None else None
    return None


def unwrap(node: Node, source: bytes) -> tuple[Node, tuple[str, ...]]:
    """The value under parentheses and mk* wrappers, and the wrapper names met on the way."""
    wrappers: list[str] = []
    while True:
        if node.type == "parenthesized_expression" and node.named_child_count:
            node = node.named_children[0]
            continue
        head = apply_head(node, source) if node.type == "apply_expression" else None
        argument = node.child_by_field_name("argument") if head else None
        if head in _TRANSPARENT and head != "mkMerge" and argument is not None:
            wrappers.append(head)
            node = argument
            continue
        return node, tuple(wrappers)


# Escapes of "…" strings and ''…'' strings (Nix manual, "String literals").
_DQ_ESCAPES: Final = {"n": "\n", "r": "\r", "t": "\t"}


def string_value(node: Node, source: bytes) -> str | None:
    """The value of a string literal without interpolation, else None."""
    if node.type not in ("string_expression", "indented_string_expression"):
        return None
    indented = node.type == "indented_string_expression"
    parts: list[str] = []
    for part in node.named_children:
        raw = source[part.start_byte : part.end_byte].decode(errors="surrogateescape")
        if part.type == "string_fragment":
            parts.append(raw)
        elif part.type == "dollar_escape":
            pass  # the `''` of `''$` or the `\` of `\$`: the `$` follows as a fragment
        elif part.type == "escape_sequence":
            parts.append(_unescape(raw, indented))
        else:  # an interpolation, or an unknown part
            return None
    text = "".join(parts)
    return _strip_indent(text) if indented else text


def _unescape(raw: str, indented: bool) -> str:
    """`\\x` in "…"; `'''` (two quotes) and `''\\x` in ''…''."""
    if indented:
        if raw == "'''":
            return "''"
        raw = raw[2:]
    return _DQ_ESCAPES.get(raw[1:], raw[1:])


def _strip_indent(text: str) -> str:
    # A ''…'' string loses its common indentation and a first line that is only blanks.
    lines = text.split("\n")
    if len(lines) > 1 and not lines[0].strip():
        lines = lines[1:]
    widths = [len(ln) - len(ln.lstrip(" ")) for ln in lines if ln.strip()]
    cut = min(widths, default=0)
    return "\n".join(ln[cut:] for ln in lines)


def list_strings(node: Node, source: bytes) -> list[tuple[str, Node]] | None:
    """(value, node) for each string literal of a list literal; None if `node` is not a list."""
    if node.type != "list_expression":
        return None
    found: list[tuple[str, Node]] = []
    for element in _named(node):
        value = string_value(element, source)
        if value is not None:
            found.append((value, element))
    return found


def list_elements(node: Node) -> list[Node]:
    return list(_named(node)) if node.type == "list_expression" else []


def nix_string(value: str) -> str:
    """`value` as a double-quoted Nix string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


def nix_attrpath(path: Iterable[str]) -> str:
    """Attribute names joined with dots, quoting those that are not plain identifiers."""
    return ".".join(name if _is_identifier(name) else nix_string(name) for name in path)


def _is_identifier(name: str) -> bool:
    head_ok = bool(name) and (name[0].isalpha() or name[0] == "_")
    return head_ok and all(c.isalnum() or c in "_'-" for c in name) and name.isascii()


# -- edits: each returns the splices; `apply_edits` performs them -------------------------------


def _line_bounds(source: bytes, start: int, end: int) -> tuple[int, int]:
    line_start = source.rfind(b"\n", 0, start) + 1
    line_end = source.find(b"\n", end)
    return line_start, len(source) if line_end < 0 else line_end


def _rest_is_blank(text: bytes) -> bool:
    stripped = text.strip()
    return not stripped or stripped.startswith(b"#")


def remove_range(source: bytes, start: int, end: int) -> Edit:
    """Remove [start, end): the whole line when nothing else is on it (a trailing comment goes
    with it), else the range and, where blanks precede it, the blanks after it."""
    line_start, line_end = _line_bounds(source, start, end)
    if not source[line_start:start].strip() and _rest_is_blank(source[end:line_end]):
        return Edit(line_start, min(line_end + 1, len(source)))
    # Drop the blanks after the range only where the range had blanks before it too, so
    # `[ a b c ]` loses `b ` but `{ self, attic }` loses exactly `, attic`.
    after = end
    while after < len(source) and source[after : after + 1] in (b" ", b"\t"):
        after += 1
    blank_before = start > line_start and source[start - 1 : start] in (b" ", b"\t")
    return Edit(start, after if blank_before or start == line_start else end)


def remove_node(nix: NixFile, node: Node) -> Edit:
    """Remove a binding or a list element."""
    return remove_range(nix.source, node.start_byte, node.end_byte)


def remove_formal(nix: NixFile, formal: Node) -> Edit:
    """Remove `name` from `{ a, name, b }:` with the comma that goes with it."""
    prev, nxt = formal.prev_sibling, formal.next_sibling
    if prev is not None and prev.type == "," and prev.start_point.row == formal.start_point.row:
        return remove_range(nix.source, prev.start_byte, formal.end_byte)
    if nxt is not None and nxt.type == ",":
        return remove_range(nix.source, formal.start_byte, nxt.end_byte)
    if prev is not None and prev.type == ",":
        return remove_range(nix.source, prev.start_byte, formal.end_byte)
    return remove_range(nix.source, formal.start_byte, formal.end_byte)


def replace_node(node: Node, text: str) -> Edit:
    return Edit(node.start_byte, node.end_byte, text.encode())


def _indent_of(source: bytes, node: Node) -> bytes | None:
    """The blanks before `node` if it is the first thing on its line, else None."""
    line_start = source.rfind(b"\n", 0, node.start_byte) + 1
    lead = source[line_start : node.start_byte]
    return lead if not lead.strip() else None


def _insert_after_line(source: bytes, node: Node, indent: bytes, text: bytes) -> Edit:
    _, line_end = _line_bounds(source, node.start_byte, node.end_byte)
    at = line_end if _rest_is_blank(source[node.end_byte : line_end]) else node.end_byte
    return Edit(at, at, b"\n" + indent + text)


def insert_in_list(nix: NixFile, lst: Node, element: str, *, first: bool = False) -> Edit:
    """Add `element` (Nix source) to a list literal, on its own line if the list has one per line."""
    source, text = nix.source, element.encode()
    elements = list_elements(lst)
    if not elements:
        return Edit(lst.start_byte, lst.end_byte, b"[ " + text + b" ]")
    anchor = elements[0] if first else elements[-1]
    indent = _indent_of(source, anchor)
    if indent is not None and lst.start_point.row != lst.end_point.row:
        if first:
            line_start = anchor.start_byte - len(indent)
            return Edit(line_start, line_start, indent + text + b"\n")
        return _insert_after_line(source, anchor, indent, text)
    if first:
        return Edit(anchor.start_byte, anchor.start_byte, text + b" ")
    return Edit(anchor.end_byte, anchor.end_byte, b" " + text)


def insert_binding(nix: NixFile, attrset: Node, binding: str) -> Edit:
    """Add `binding` (Nix source such as `a.b = 1;`) as the last binding of an attrset."""
    source, text = nix.source, binding.encode()
    existing = _bindings_of(attrset)
    close = attrset.children[-1]  # the `}`
    if existing:
        last = existing[-1]
        indent = _indent_of(source, last)
        if indent is not None and attrset.start_point.row != attrset.end_point.row:
            return _insert_after_line(source, last, indent, text)
        return Edit(last.end_byte, last.end_byte, b" " + text)
    if attrset.start_point.row == attrset.end_point.row:
        return Edit(attrset.start_byte, attrset.end_byte, b"{ " + text + b" }")
    close_indent = _indent_of(source, close) or b""
    line_start = close.start_byte - len(close_indent)
    return Edit(line_start, line_start, close_indent + b"  " + text + b"\n")


def apply_edits(source: bytes, edits: Sequence[Edit], name: str = "<nix>") -> bytes:
    """Splice `edits` into `source` (ranges must not overlap); the result must parse."""
    ordered = sorted(set(edits), key=lambda e: (e.start, e.end))
    for before, after in pairwise(ordered):
        if after.start < before.end:
            raise ValueError(f"{name}: overlapping edits at bytes {before.start}-{after.end}")
    out = bytearray(source)
    for edit in reversed(ordered):
        out[edit.start : edit.end] = edit.text
    result = bytes(out)
    NixFile(result, f"{name} (after the edit)")  # raises InputError if it no longer parses
    return result
