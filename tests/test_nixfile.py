"""runbook.nix.nixfile: full attribute paths, literal values and splices, checked against real Nix."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from runbook.core.errors import InputError
from runbook.nix.nixfile import (
    Edit,
    NixFile,
    apply_edits,
    insert_binding,
    insert_in_list,
    list_elements,
    nix_attrpath,
    nix_string,
    remove_formal,
    remove_node,
)
from tests.conftest import need

SUBS = ("nix", "settings", "substituters")


def nix_eval(expr: str) -> Any:
    """Evaluate with the real Nix (skips outside CI when Nix is missing)."""
    need(
        shutil.which("nix-instantiate") is not None,
        "nix-instantiate (Debian nix-bin) not installed",
    )
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def nix_parses(source: bytes) -> bool:
    need(
        shutil.which("nix-instantiate") is not None,
        "nix-instantiate (Debian nix-bin) not installed",
    )
    proc = subprocess.run(
        ["nix-instantiate", "--parse", "-"], input=source, capture_output=True, check=False
    )
    return proc.returncode == 0


@pytest.mark.parametrize(
    "source",
    [
        '{ nix.settings.substituters = [ "a" ]; }',
        '{ nix = { settings = { substituters = [ "a" ]; }; }; }',
        '{ nix = { settings.substituters = [ "a" ]; }; }',
        '{ config, lib, ... }: { config.nix.settings.substituters = lib.mkForce [ "a" ]; }',
        '{ lib, ... }: { config = lib.mkIf true { nix.settings = { substituters = [ "a" ]; }; }; }',
        '{ lib, ... }: let x = 1; in { nix = lib.mkMerge [ { settings.substituters = [ "a" ]; } ]; }',
        '{ pkgs, ... }: with pkgs; { nix.settings = (lib.mkDefault { substituters = [ "a" ]; }); }',
        '{ "nix"."settings".substituters = [ "a" ]; }',
    ],
)
def test_a_setting_is_found_however_it_is_written(source):
    nix = NixFile(source.encode())
    assert nix.strings(SUBS) == ["a"]
    assert [b.path for b in nix.find(SUBS)] == [SUBS]


def test_let_bindings_function_arguments_and_module_lists_are_not_settings():
    nix = NixFile(b"""{ inputs }: let nix.settings.substituters = [ "no" ]; in
      inputs.nixpkgs.lib.nixosSystem {
        modules = [ { nix.settings.substituters = [ "yes" ]; } ./other.nix ];
      }""")
    assert nix.strings(SUBS) == ["yes"]  # the module in `modules` is a root; the let is not


def test_wrappers_are_recorded():
    nix = NixFile(b'{ lib, ... }: { a = lib.mkOverride 10 (lib.mkForce "x"); }')
    (binding,) = nix.find(("a",))
    assert binding.wrappers == ("mkOverride", "mkForce")
    assert nix.string(("a",)) == "x"


@pytest.mark.parametrize(
    "literal",
    [
        r'"plain"',
        r'"q\"uote \\ back\n\t"',
        r'"a$${b}\$c"',
        "''\n    two\n      lines ''${x}\n  ''",
        "''it'''s''\\n''",
        r'"ünï"',
    ],
)
def test_string_values_match_nix(literal):
    nix = NixFile(f"{{ s = {literal}; }}".encode())
    assert nix.string(("s",)) == nix_eval(f"{{ s = {literal}; }}.s")


def test_interpolated_strings_and_names_have_no_literal_value():
    nix = NixFile(b'{ s = "a${b}"; ${n} = "v"; }')
    assert nix.string(("s",)) is None
    assert [b.path for b in nix.bindings] == [("s",), ("${…}",)]


@pytest.mark.parametrize("value", ['a"b', "x${y}", "back\\slash", "new\nline", "\ttab"])
def test_nix_string_round_trips_through_nix(value):
    assert nix_eval(nix_string(value)) == value


def test_nix_attrpath_quotes_what_is_not_an_identifier():
    assert (
        nix_attrpath(["nix", "settings", "trusted-public-keys"])
        == "nix.settings.trusted-public-keys"
    )
    assert nix_attrpath(["a", "b.c", "1x"]) == 'a."b.c"."1x"'


def test_a_syntax_error_is_input_error_with_line_and_column():
    with pytest.raises(InputError, match=r"^f\.nix:2:\d+: not valid Nix"):
        NixFile(b"{\n  a = [ 1 ;\n}\n", "f.nix")


# -- splices -----------------------------------------------------------------------------------

FLAKE = b"""{
  inputs = {
    nixpkgs.url = "github:nixos/nixpkgs"; # pinned
    attic.url = "github:zhaofengli/attic"; # the cache
    # keep me
    other = { url = "path:/x"; };
  };
  outputs = { self, nixpkgs, attic, ... }: { };
}
"""


def test_removing_a_binding_takes_its_line_and_keeps_other_comments():
    nix = NixFile(FLAKE)
    (binding,) = nix.find(("inputs", "attic", "url"))
    out = apply_edits(FLAKE, [remove_node(nix, binding.node)])
    assert b"attic.url" not in out
    assert b"# pinned" in out and b"# keep me" in out
    assert out.count(b"\n") == FLAKE.count(b"\n") - 1
    assert nix_parses(out)


@pytest.mark.parametrize(
    ("formals", "name", "expected"),
    [
        ("{ self, nixpkgs, attic, ... }", "attic", "{ self, nixpkgs, ... }"),
        ("{ attic, self }", "attic", "{ self }"),
        ("{ self, attic }", "attic", "{ self }"),
        ("{ self\n, attic\n, ...\n}", "attic", "{ self\n, ...\n}"),
        ("{\n  self,\n  attic,\n  ...\n}", "attic", "{\n  self,\n  ...\n}"),
    ],
)
def test_removing_a_formal_takes_its_comma(formals, name, expected):
    source = f"{formals}: 1".encode()
    nix = NixFile(source)
    formal = next(
        n for n in _walk(nix.tree.root_node) if n.type == "formal" and nix.text(n) == name
    )
    out = apply_edits(source, [remove_formal(nix, formal)])
    assert out.decode() == f"{expected}: 1"
    assert nix_parses(out)


@pytest.mark.parametrize(
    ("source", "first", "expected"),
    [
        ("{ l = [ ]; }", False, '{ l = [ "n" ]; }'),
        ('{ l = [ "a" "b" ]; }', False, '{ l = [ "a" "b" "n" ]; }'),
        ('{ l = [ "a" "b" ]; }', True, '{ l = [ "n" "a" "b" ]; }'),
        ('{ l = [\n    "a" # c\n  ];\n}', False, '{ l = [\n    "a" # c\n    "n"\n  ];\n}'),
        ('{ l = [\n    "a" # c\n  ];\n}', True, '{ l = [\n    "n"\n    "a" # c\n  ];\n}'),
    ],
)
def test_inserting_into_a_list_follows_its_layout(source, first, expected):
    nix = NixFile(source.encode())
    (binding,) = nix.find(("l",))
    out = apply_edits(nix.source, [insert_in_list(nix, binding.value, '"n"', first=first)])
    assert out.decode() == expected
    assert nix_eval(f"({out.decode()}).l")[0 if first else -1] == "n"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{ }", "{ b = 2; }"),
        ("{ a = 1; }", "{ a = 1; b = 2; }"),
        ("{\n  a = 1; # one\n}", "{\n  a = 1; # one\n  b = 2;\n}"),
        ("{\n}", "{\n  b = 2;\n}"),
    ],
)
def test_inserting_a_binding_follows_the_layout(source, expected):
    nix = NixFile(source.encode())
    out = apply_edits(nix.source, [insert_binding(nix, nix.roots[0], "b = 2;")])
    assert out.decode() == expected
    assert nix_eval(f"({out.decode()}).b") == 2


def test_removing_a_list_element_inline_and_on_its_own_line():
    source = b'{ a = [ "x" "y" "z" ]; b = [\n  "p"\n  "q" # why\n];\n}'
    nix = NixFile(source)
    a = list_elements(nix.find(("a",))[0].value)
    b = list_elements(nix.find(("b",))[0].value)
    out = apply_edits(source, [remove_node(nix, a[1]), remove_node(nix, b[1])])
    assert out == b'{ a = [ "x" "z" ]; b = [\n  "p"\n];\n}'
    assert nix_eval(f"({out.decode()})") == {"a": ["x", "z"], "b": ["p"]}


def test_edits_that_overlap_or_break_the_syntax_are_refused():
    with pytest.raises(ValueError, match="overlapping"):
        apply_edits(b"{ a = 1; }", [Edit(2, 8), Edit(4, 6, b"x")])
    with pytest.raises(InputError, match="after the edit"):
        apply_edits(b"{ a = 1; }", [Edit(7, 8)], "f.nix")


def test_a_real_module_evaluates_the_same_after_an_edit(tmp_path: Path):
    module = tmp_path / "m.nix"
    module.write_text(
        "{ lib ? null, ... }: {\n  nix.settings = {\n    substituters = [\n"
        '      "https://b" # second\n    ];\n  };\n}\n'
    )
    nix = NixFile.read(module)
    lst = nix.find(SUBS)[0].value
    module.write_bytes(
        apply_edits(nix.source, [insert_in_list(nix, lst, '"http://a"', first=True)])
    )
    assert nix_eval(f"(import {module} {{}}).nix.settings.substituters") == [
        "http://a",
        "https://b",
    ]


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)


@pytest.mark.parametrize(
    "source",
    [b"{ a, b, }: a", b"{\n  system,\n  user,\n  darwin ? false,\n}:\nsystem", b"{ a, ... }@x: a"],
)
def test_a_trailing_comma_in_formals_is_valid_nix(source: bytes):
    # tree-sitter-nix 0.1.0 reports a missing name there; Nix (and nixfmt) accept the comma
    NixFile(source)
    assert nix_parses(source)


def test_an_empty_formal_between_commas_is_still_an_error():
    with pytest.raises(InputError, match=r"1:4: not valid Nix"):
        NixFile(b"{ a, , b }: a")
    assert not nix_parses(b"{ a, , b }: a")
