"""runbook.makefile: the variables a nixos-config Makefile gives on a Mac, checked against GNU make."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from runbook.makefile import Makefile
from tests.conftest import need

CLEAN = Path(__file__).parent / "fixtures" / "nixos-config" / "clean" / "Makefile"
DARWIN_DEFAULT = """UNAME := $(shell uname)
ifeq ($(UNAME),Darwin)
NIXNAME ?= macbook-pro-m1
else
NIXNAME ?= vm-aarch64
endif
SSH_OPTIONS=-o PubkeyAuthentication=no -o StrictHostKeyChecking=no

vm/bootstrap0:
\tssh root@x "parted /dev/sda -- mklabel gpt"
"""


def make_value(makefile: Path, name: str, uname: str) -> str:
    """What GNU make itself gives `name` with UNAME forced (as on a Mac, or on Linux)."""
    need(shutil.which("make") is not None, "GNU make not installed")
    out = subprocess.run(
        ["make", "-s", "-f", str(makefile), f"UNAME={uname}",
         "--eval", "print-%: ; @echo '$($*)'", f"print-{name}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.mark.parametrize("text", [DARWIN_DEFAULT, None])
def test_the_mac_value_is_what_make_gives_on_a_mac(tmp_path: Path, text: str | None):
    path = tmp_path / "Makefile"
    path.write_text(text if text is not None else CLEAN.read_text())
    parsed = Makefile.read(path)
    for name in ("NIXNAME", "SSH_OPTIONS"):
        var = parsed.on_mac(name)
        assert var is not None and var.value == make_value(path, name, "Darwin")


def test_recipes_and_lines(tmp_path: Path):
    path = tmp_path / "Makefile"
    path.write_text(DARWIN_DEFAULT)
    parsed = Makefile.read(path)
    assert parsed.recipes["vm/bootstrap0"] == (
        (10, '\tssh root@x "parted /dev/sda -- mklabel gpt"'),
    )
    assert [(v.name, v.line, v.darwin) for v in parsed.variables if v.name == "NIXNAME"] == [
        ("NIXNAME", 3, True),
        ("NIXNAME", 5, False),
    ]
