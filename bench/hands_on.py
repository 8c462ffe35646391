# ruff: noqa: RUF001 - the handbook's Chinese punctuation is quoted verbatim
"""Hands-on actions from an empty Mac to a worker substituting from the cache (issue 15).

Lists every action a user takes by hand, for the handbook (`UTM + Attic 缓存部署手册`,
reference/handbook.zh.md: one cache VM and one worker, each step cited by its section and by
the handbook text that asks for it) and for the runbook (`runbook init`, `runbook deploy
--yes`, and the one consent macOS shows when a program first automates UTM), prints both
tables and the counts.

An action is one thing done by hand: a command typed, a file edited, a round of clicks in UTM
or on a console, or a value read off a screen and carried to the next command. Fixes the
handbook gives only for when something has gone wrong (lesson 3's console recovery, lesson
7's switch as the user) are not counted; its prevention (the local build) is. What both need
first is listed apart and counted in neither: UTM installed, the nixos-config checked out with
your SSH key authorized, and (for the runbook) the runbook installed.

The handbook's rows are checked against the handbook when it is found (RUNBOOK_HANDBOOK, else
../shared/reference/handbook.zh.md beside the checkout): each quoted text must be in the
section cited. The runbook's rows are checked against the CLI: `init` and `deploy --yes`
exist and take what the rows say. Run: .venv/bin/python bench/hands_on.py [--json]
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Action:
    what: str
    section: str  # the handbook heading it comes from (or, for the runbook, where it is said)
    quote: str  # text of that section that asks for it


PREREQUISITES = (
    "install UTM (https://mac.getutm.app)",
    "clone your nixos-config (the handbook's Makefile flake) with your SSH key authorized",
    "install the runbook (pip install -e . / conda env create), runbook only",
)

S_ARCH = "## 架构"
S_L1 = "### 1. Attic Flake vs nixpkgs 内置模块"
S_L2 = "### 2. atticd 的 Token 密钥格式"
S_L3 = "### 3. SSH Host Keys 丢失"
S_L6 = "### 6. openssl 不在 PATH 中"
S_L8 = "### 8. VM IP 地址"
S_INIT = "### 初始化"
S_INFO = "### 当前缓存信息"
S_WORKER = "### Worker VM 配置"
S_FLOW = "## 部署流程速查"


def _vm_install(vm: str) -> list[Action]:
    """部署流程速查 1-5 for one VM, with lesson 8's address look-ups."""
    return [
        Action(f"{vm}: create it in UTM (bridged network), attach the ISO, start it", S_FLOW,
               "在 UTM 中创建 VM（桥接模式），从 ISO 启动"),
        Action(f"{vm}: on its console, set root's password (sudo su; passwd)", S_FLOW,
               "控制台设置 root 密码"),
        Action(f"{vm}: on its console, read its IP address", S_FLOW, "获取 IP"),
        Action(f"{vm}: make vm/bootstrap0 NIXADDR=<IP> NIXNAME={vm}", S_FLOW,
               "make vm/bootstrap0 NIXADDR=<IP>"),
        Action(f"{vm}: in UTM, remove the ISO and boot from the disk", S_FLOW,
               "UTM 中移除 ISO，从磁盘启动"),
        Action(f"{vm}: find its address again (DHCP gave it a new one on reboot)", S_L8,
               "每次重启可能变化"),
        Action(f"{vm}: make vm/bootstrap NIXADDR=<IP> NIXNAME={vm}", S_FLOW,
               "make vm/bootstrap NIXADDR=<IP>"),
    ]  # fmt: skip


HANDBOOK: tuple[Action, ...] = (
    Action("download the NixOS installer ISO", S_FLOW, "从 ISO 启动"),
    Action("flake.nix: delete the attic flake input", S_L1, '删除 `attic.url = "github:zhaofengli/attic";`'),
    Action("lib/mksystem.nix: delete the attic flake's module", S_L1, "删除 `inputs.attic.nixosModules.atticd`"),
    Action("nix flake lock", S_L1, "运行 `nix flake lock`"),
    Action("build the cache's toplevel on the Mac before any switch", S_L3, "nix build --print-out-paths"),
    *_vm_install("vm-aarch64-utm-cache"),
    Action("find openssl's store path on the cache VM", S_L6, "OPENSSL=$(nix-store -qR /run/current-system"),
    Action("write the RSA token secret to /var/lib/atticd/env, restart atticd", S_INIT,
           "echo ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64"),
    Action("make the admin token, attic login, cache create main, configure --public", S_INIT,
           "attic cache create main"),
    Action("push the cache VM's store paths", S_INIT, "nix path-info --all | xargs attic push main"),
    Action("read the cache's public key and check nix-cache-info", S_INFO, "curl -sf http://nixos-utm-cache.local:8080/main/nix-cache-info"),
    Action("machines/vm-shared.nix: add the substituter and the cache's key", S_WORKER,
           '"http://nixos-utm-cache.local:8080/main"'),
    *_vm_install("vm-aarch64-utm"),
    Action("on the worker, build something and see it come from the cache", S_ARCH,
           "Worker VM 在 `nix.settings.substituters` 中配置"),
)  # fmt: skip

RUNBOOK: tuple[Action, ...] = (
    Action("runbook init ~/nixos-config", "README: From an empty Mac", "runbook init"),
    Action("runbook deploy runbook.yaml --yes", "README: From an empty Mac", "runbook deploy"),
    Action(
        "click OK when macOS asks to let it control UTM (Automation, once)",
        "README: Consoles and addresses",
        "needs only Automation consent for UTM",
    ),
)


def handbook_text() -> str | None:
    env = os.environ.get("RUNBOOK_HANDBOOK")
    for candidate in (
        Path(env) if env else None,
        ROOT.parent / "shared" / "reference" / "handbook.zh.md",
    ):
        if candidate is not None and candidate.is_file():
            return candidate.read_text()
    return None


def section_of(text: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level (a `#`
    inside a fenced code block is a shell comment, not a heading)."""
    lines = text.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading)
    fenced = False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            fenced = not fenced
            continue
        stripped = lines[i].lstrip("#")
        hashes = len(lines[i]) - len(stripped)
        if not fenced and hashes and hashes <= level and stripped.startswith(" "):
            return "\n".join(lines[start:i])
    return "\n".join(lines[start:])


def check_handbook(text: str) -> None:
    for action in HANDBOOK:
        if action.quote not in section_of(text, action.section):
            raise SystemExit(f"handbook: {action.quote!r} is not in section {action.section!r}")


def check_runbook() -> None:
    """The runbook's rows are commands the CLI has, taking what the rows give them."""
    from runbook.cli import get_parser

    parser = get_parser()
    init = parser.parse_args(["init", "/tmp/nixos-config"])
    deploy = parser.parse_args(["deploy", "runbook.yaml", "--yes"])
    assert init.func.__name__ == "run_init" and init.out is None  # default ./runbook.yaml
    assert deploy.yes is True
    readme = (ROOT / "README.md").read_text()
    for action in RUNBOOK:
        assert action.quote in readme, action


def table(title: str, actions: tuple[Action, ...]) -> str:
    width = max(len(a.what) for a in actions)
    rows = [f"{title} ({len(actions)} actions)"]
    rows += [
        f"{i:>3}. {a.what:<{width}}  [{a.section.lstrip('# ')}]" for i, a in enumerate(actions, 1)
    ]
    return "\n".join(rows)


def main() -> None:
    text = handbook_text()
    if text is not None:
        check_handbook(text)
    check_runbook()
    figures = {
        "handbook_actions": len(HANDBOOK),
        "runbook_actions": len(RUNBOOK),
        "runbook_commands": sum(1 for a in RUNBOOK if a.what.startswith("runbook ")),
        "runbook_consents": sum(1 for a in RUNBOOK if not a.what.startswith("runbook ")),
        "handbook_checked": text is not None,
    }
    if "--json" in sys.argv[1:]:
        print(json.dumps(figures))
        return
    print("Both first need (counted in neither): " + "; ".join(PREREQUISITES))
    print()
    print(table("By hand, the handbook (one cache VM, one worker)", HANDBOOK))
    print()
    print(table("The runbook", RUNBOOK))
    print()
    checked = (
        "quotes checked against handbook.zh.md" if text else "handbook not found: quotes unchecked"
    )
    print(
        f"handbook_actions={figures['handbook_actions']} runbook_actions={figures['runbook_actions']} "
        f"(runbook: {figures['runbook_commands']} commands + {figures['runbook_consents']} consent; "
        f"{checked})"
    )


if __name__ == "__main__":
    main()
