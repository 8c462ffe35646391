# ruff: noqa: RUF001 - the handbook's Chinese punctuation is kept verbatim
"""The runbook's outline: each notebook's cells, declared once.

A section is its module (`runbook.sections.<module>`, holding the steps), the handbook's title
text, and its step cells: a markdown heading and the code that calls the steps, with what runs
in parallel (`ctx.run_parallel`) said there. From this one declaration come both the notebooks
(`runbook.notebook.build`; `notebooks/*.ipynb` in a checkout is its rendering, checked by
`make lint`) and each section's step list (`section_steps`, the JupyterLab panel's rows), so
the two cannot differ. To change the runbook, edit this file and the section modules.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

from runbook.engine.steps import Context, Step, StepRecorder
from runbook.notebook.build import SectionSource


@dataclass(frozen=True)
class Section:
    """One notebook: its section module, its title text and its (heading, code) step cells."""

    module: str
    title: str
    cells: tuple[tuple[str, str], ...]

    def load(self) -> ModuleType:
        return importlib.import_module(f"runbook.sections.{self.module}")

    @property
    def notebook(self) -> str:
        name: str = self.load().NOTEBOOK
        return name


# (module, title markdown, [(step heading markdown, step code), ...])
_TABLE: Final[tuple[tuple[str, str, list[tuple[str, str]]], ...]] = (
    (
        "s00_preflight",
        """# 00 · 架构 — architecture and preflight

> **架构** · macOS Host ├── vm-aarch64-utm-cache (缓存服务器，运行 atticd) ├── vm-aarch64-utm (worker VM，消费缓存)
>
> **关键经验 1. Attic Flake vs nixpkgs 内置模块**

The handbook's deployment: VMs in UTM on a Mac; one runs **atticd** and is announced over mDNS as
`nixos-utm-cache.local`; workers list `http://nixos-utm-cache.local:8080/main` as a substituter.

This notebook checks this machine and the nixos-config checkout before anything touches a VM.
Lesson 1: the `github:zhaofengli/attic` flake's client does not build against current Nix; use
nixpkgs' `attic-server`/`attic-client` and `services.atticd`, remove the flake input and module,
and run `nix flake lock`. Lesson 3's prevention: build each VM's toplevel locally first.
On a machine without the checkout or UTM (a Linux box), those checks say *unchecked*.""",
        [
            ("## The deployment", "ctx.run(s.architecture(ctx))"),
            ("## Files and host tools", "ctx.run(s.paths(ctx))\nctx.run(s.host_tools(ctx))"),
            (
                (
                    "## The nixos-config, read with a real Nix parser\n\n"
                    "A check that fails stops a deploy here, before anything is touched; "
                    "`runbook deploy --force-checks` (force_checks=True) goes on anyway."
                ),
                "ctx.run(s.doctor_report(ctx, force_checks))",
            ),
            ("## Lesson 1: nixpkgs' attic, not the attic flake", "ctx.run(s.attic_flake(ctx))"),
            (
                "## Lesson 3: build every toplevel here before any switch",
                "ctx.run_parallel([s.toplevel_build(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
        ],
    ),
    (
        "s01_create_vm",
        """# 01 · 在 UTM 中创建 VM — create the VMs in UTM

> **部署流程速查 1.** 在 UTM 中创建 VM（桥接模式），从 ISO 启动

Create each VM in UTM with a **bridged** network and the NixOS ISO attached, then start it.
UTM is scripted through AppleScript (`make new virtual machine`) and `utmctl`; a VM created by
AppleScript has no display unless one is given, and the console typing of notebook 02 needs it.
The programs are the params' (`utm.utmctl`, `utm.osascript`); with `console.serial_port`, VM i
gets a TCP serial console on 127.0.0.1 at serial_port + i, which 02 reads back.""",
        [
            ("## Create", "ctx.run_parallel([s.create(ctx, vm) for vm in ctx.dep.owned_vms])"),
            (
                "## Start from the ISO",
                "ctx.run_parallel([s.start(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
        ],
    ),
    (
        "s02_console",
        """# 02 · 控制台设置 root 密码，获取 IP — console: root password, find the IP

> **部署流程速查 2.** 控制台设置 root 密码，获取 IP
>
> **关键经验 4. VM 控制台交互（Hammerspoon + SPICE）** · **关键经验 8. VM IP 地址**

The live ISO has no root password, so `make vm/bootstrap0` cannot log in until one is set on the
graphical console (`sudo su`, `passwd`). The SPICE window only takes raw key events (lesson 4):
the runbook types with the params' console backend, waits for each prompt where the serial
console can be read, and proves a fresh root login over SSH. The password is the runbook's own:
the secret store's (read by name, shown masked), else a random one made and stored 0600 before
anything is typed; you never choose or type it. The address is looked up on every run, never remembered (lesson 8):
mDNS, ARP by the VM's MAC, `utmctl ip-address`, or the console.""",
        [
            ("## The live root password, in the secret store", "ctx.run(s.password_stored(ctx))"),
            (
                "## Type it on each console (lesson 4)",
                "ctx.run_parallel([s.set_root_password(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
            (
                "## Find each address (lesson 8)",
                "ctx.run_parallel([s.find_address(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
        ],
    ),
    (
        "s03_bootstrap0",
        """# 03 · bootstrap0：分区 + 安装基础系统 — partition and install (wipes the disk)

> **部署流程速查 3-4.** `make vm/bootstrap0 NIXADDR=<IP> NIXNAME=vm-aarch64-utm`；UTM 中移除 ISO，从磁盘启动

`vm/bootstrap0` logs in as root with the live password, partitions the disk, installs a base
NixOS and reboots. **It wipes the disk**: in a deploy this step needs `--yes` (`confirm=True`);
without it the step fails and says how to confirm. The Makefile partitions `/dev/sda`, while UTM's
VirtIO disk is `/dev/vda` (`runbook doctor` reports it). The reinstalled system has new SSH host
keys: this is the one step that declares the change expected, and it logs the old and the new
fingerprints; from here root logs in with the Makefile's password (`initialPassword = "root"`),
not the live one (lesson 7). Then the runbook stops the VM, removes the ISO in UTM (its removable
drive that holds an image), starts it from disk and waits for an SSH login.""",
        [
            (
                "## bootstrap0 (dangerous)",
                "ctx.run_parallel([s.bootstrap0(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
            (
                "## Remove the ISO, boot from disk",
                "ctx.run_parallel([s.remove_iso(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
        ],
    ),
    (
        "s04_bootstrap",
        """# 04 · bootstrap：复制配置 + switch — copy the config and switch

> **部署流程速查 5.** `make vm/bootstrap NIXADDR=<IP> NIXNAME=vm-aarch64-utm`
>
> **关键经验 3. SSH Host Keys 丢失** · **关键经验 5. Fish Shell 兼容性** · **关键经验 7. SSH 认证变化**

`vm/bootstrap` copies the nixos-config to `/nix-config` and switches, as root. Lesson 3: build
locally first, and keep a root session open across the switch so a lost host key can be repaired
(`ssh-keygen -A`). Lesson 5: every remote command is bash fed on stdin, so the user's fish login
shell never parses it. Lesson 7: after the switch root cannot log in; from now on the user and
their key are used, with passwordless sudo. On the cache VM the first switch may exit 4 because
atticd has no environment file yet (notebook 05 installs it): only that case is accepted, and the
step says so.""",
        [
            (
                "## Lesson 3: build first",
                "ctx.run_parallel([s.s00_preflight.toplevel_build(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
            (
                "## vm/copy as root",
                "ctx.run_parallel([s.copy(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
            (
                "## vm/switch as root, a session kept open",
                "ctx.run_parallel([s.switch(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
            (
                "## Lesson 7: the user logs in now",
                "ctx.run_parallel([s.user_login(ctx, vm) for vm in ctx.dep.owned_vms])",
            ),
        ],
    ),
    (
        "s05_token_secret",
        """# 05 · atticd 的 Token 密钥 — the atticd token secret

> **关键经验 2. atticd 的 Token 密钥格式** · **关键经验 6. openssl 不在 PATH 中** · **Attic 缓存管理 / 初始化 1**

`ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64` is not random base64: it is the base64 of an RSA private
key's PEM (random bytes make atticd panic with `RS256 cannot be decoded: Utf8Error`). The key is
made here with `cryptography` (nothing needs openssl on the VM: lesson 6), checked the way atticd
decodes it, kept in the secret store, and installed as `/var/lib/atticd/env` with mode 0600
from the first byte. A valid secret is kept (rotating it invalidates every token; only
`cache.rotate_token_secret: true` rotates), and atticd is restarted only after the secret
passed atticd's decode chain here.""",
        [
            (
                "## Generate locally (lessons 2, 6)",
                'ctx.run_each([s.generate(ctx) for _ in ctx.dep.owned_cache], none="the cache VM is a reference: another deployment installs its atticd")',
            ),
            (
                "## Install /var/lib/atticd/env (0600)",
                "ctx.run_each([s.install_env(ctx, vm) for vm in ctx.dep.owned_cache])",
            ),
            (
                "## The attic client in the cache's configuration (notebook 06 runs `attic`)",
                "ctx.run_each([s.attic_client(ctx, vm) for vm in ctx.dep.owned_cache])",
            ),
            (
                "## The cache VM runs `services.atticd` and has `attic` (switched as the user)",
                "ctx.run_each([s.atticd_system(ctx, vm) for vm in ctx.dep.owned_cache])",
            ),
            (
                "## Validate the secret as atticd will, restart atticd, `GET /` 200",
                "ctx.run_each([s.restart(ctx, vm) for vm in ctx.dep.owned_cache])",
            ),
        ],
    ),
    (
        "s06_cache",
        """# 06 · 创建 admin token 和 cache，推送 — token, login, cache, push

> **Attic 缓存管理 / 初始化 2-3**

On the cache VM, as root: make an admin token with `atticd-atticadm make-token`, log root's
attic client in (its `~/.config/attic/config.toml` written 0600 as `attic login` writes it, so
the token is in no process argument; proven with a call only an authorized token passes, and
redone after a token rotation), `attic cache create main`, `attic cache configure main --public`, then push every store path
(`nix path-info --all | attic push main --stdin -j N`). The token goes to the secret store and is
masked in every output. The cache's public key, read from `attic cache info` (on stderr), is kept
for the workers (07). attic skips paths signed by cache.nixos.org unless `cache.upstream_filter`
is false: the push reports its counts, and a push that uploads nothing fails.""",
        [
            (
                "## A cache this deployment only references (workers): read it, change nothing",
                "ctx.run_each([s.read_cache(ctx, vm) for vm in ctx.dep.referenced_cache])",
            ),
            (
                "## Admin token",
                "ctx.run_each([s.make_token(ctx, vm) for vm in ctx.dep.owned_cache])",
            ),
            (
                "## A push-only token for the workers (07's warm push)",
                "ctx.run_each([s.make_worker_token(ctx, vm) for vm in ctx.dep.owned_cache])",
            ),
            ("## attic login", "ctx.run_each([s.login(ctx, vm) for vm in ctx.dep.owned_cache])"),
            (
                "## Create the cache",
                "ctx.run_each([s.create(ctx, vm) for vm in ctx.dep.owned_cache])",
            ),
            (
                "## Make it public (and record its key)",
                "ctx.run_each([s.make_public(ctx, vm) for vm in ctx.dep.owned_cache])",
            ),
            ("## Push the store", "ctx.run_each([s.push(ctx, vm) for vm in ctx.dep.owned_cache])"),
        ],
    ),
    (
        "s07_workers",
        """# 07 · Worker VM 配置 — point the workers at the cache

> **Worker VM 配置** · `machines/vm-shared.nix` 中已配置 `nix.settings.substituters` / `trusted-public-keys`

Add `http://nixos-utm-cache.local:8080/main` to `nix.settings.substituters` and the cache's public
key to `trusted-public-keys` in `machines/vm-shared.nix` (an edit at the parser's byte ranges:
formatting and comments survive), then `vm/copy` + `vm/switch` each worker as the user, all at
once. The cache VM imports the same module, so it is switched with them, and its new system is
pushed to the cache. Then a warm cache: each worker's root client logs in with the workers'
push-only token (06 mints it; the config file is put 0600, the token in no argv) and pushes the
worker's own system closure; `attic push` sends only what the cache lacks, and the record says
how many paths and bytes each push sent.""",
        [
            (
                "## Trust the cache in the shared module",
                'ctx.run_each([s.configure(ctx)] if ctx.dep.workers else [], none="no worker VMs in this deployment")',
            ),
            (
                "## Copy and switch the workers, in parallel",
                'ctx.run_parallel([s.deploy_worker(ctx, vm) for vm in s.switched_vms(ctx)], none="no worker VMs to switch")',
            ),
            (
                "## The cache VM's new system goes to the cache too",
                'ctx.run_each([s.push_new_system(ctx) for _ in ctx.dep.owned_cache if ctx.dep.workers], none="the cache VM is a reference: not switched here" if ctx.dep.workers else "no worker VMs")',
            ),
            (
                "## A warm cache: each worker's root logs in with the push token (0600 config)",
                'ctx.run_parallel([s.worker_login(ctx, vm) for vm in s.warm_vms(ctx)], none="no worker VMs switched here")',
            ),
            (
                "## Each worker pushes its system closure (only what the cache lacks)",
                'ctx.run_parallel([s.warm_push(ctx, vm) for vm in s.warm_vms(ctx)], none="no worker VMs switched here")',
            ),
        ],
    ),
    (
        "s08_verify",
        """# 08 · 验证缓存 — verify the cache

> **当前缓存信息** · 验证: `curl -sf http://nixos-utm-cache.local:8080/main/nix-cache-info`

Check the cache the way Nix does: `nix-cache-info`, then narinfo signatures against the key the
live cache signs with; then what each worker's running Nix trusts (`nix show-config --json`): the
cache among its substituters and that key among its trusted-public-keys (a regenerated keypair
fails here, naming both keys); and have each worker really substitute a path from it. With two
workers or more, the second substitutes the first worker's system, which only the warm cache
(07's pushes) can give it.""",
        [
            ("## The cache answers and signs", "ctx.run(s.verify(ctx))"),
            (
                "## Each worker's Nix trusts the key the cache signs with now",
                'ctx.run_parallel([s.trust(ctx, w) for w in ctx.dep.workers], none="no worker VMs to check")',
            ),
            (
                "## A real substitution on each worker",
                'ctx.run_parallel([s.substitute(ctx, w) for w in ctx.dep.workers], none="no worker VMs to substitute on")',
            ),
            (
                "## A second worker substitutes the first worker's system (the warm cache)",
                'ctx.run_each([s.substitute_peer(ctx, a, b) for a, b in s.peers(ctx)], none="one worker: no second one to substitute its system")',
            ),
        ],
    ),
    (
        "s09_update",
        """# 09 · 后续更新 — routine updates

> **部署流程速查 6.** `NIXUSER=jqwang NIXADDR=<IP> make vm/copy` · `NIXUSER=jqwang NIXADDR=<IP> NIXNAME=vm-aarch64-utm make vm/switch`

After the first switch root cannot log in (lesson 7): updates copy and switch as the user.
Each VM's toplevel is built here first (lesson 3). A VM that already runs this checkout
(its /nix-config matches and its last switch was from it) is left alone.""",
        [
            (
                "## Build, copy, switch",
                (
                    "ctx.run_parallel([s.s00_preflight.toplevel_build(ctx, vm) for vm in ctx.dep.owned_vms])\n"
                    "ctx.run_parallel([s.update(ctx, vm) for vm in ctx.dep.owned_vms])"
                ),
            ),
        ],
    ),
    (
        "s90_recover",
        """# 90 · SSH Host Keys 丢失 — recover sshd's host keys through the console

> **关键经验 3.** `sshd: no hostkeys available -- exiting` · 通过 VM 控制台登录，手动生成 host keys：`ssh-keygen -A` / `systemctl restart sshd`

A last resort when a half-finished switch left sshd without host keys: log in on the console and
regenerate them. Each step first tries a fresh SSH login; only when that fails is the console used.""",
        [
            (
                "## Recover, every VM at once",
                "ctx.run_parallel([s.recover(ctx, vm) for vm in ctx.dep.owned_vms])",
            )
        ],
    ),
)

SECTIONS: Final = tuple(Section(m, title, tuple(cells)) for m, title, cells in _TABLE)


def section(name: str) -> Section:
    """The section of module `runbook.sections.<name>` (a name like "s02_console")."""
    for sec in SECTIONS:
        if sec.module == name:
            return sec
    raise KeyError(name)


def section_steps(module: ModuleType | str) -> Callable[[Context], list[Step]]:
    """`steps(ctx)`: the steps the section's notebook cells call, in their order, found by
    running those same cells against a `StepRecorder` (which keeps each step instead of running
    it). Plan-mode defaults stand for the notebook's other parameters."""
    sec = section(module if isinstance(module, str) else module.__name__.rsplit(".", 1)[-1])
    code = [compile(c, f"<{sec.module}: {h.splitlines()[0]}>", "exec") for h, c in sec.cells]

    def steps(ctx: Context) -> list[Step]:
        recorder = StepRecorder(ctx)
        namespace = {"s": sec.load(), "ctx": recorder, "force_checks": False}
        for cell in code:
            exec(cell, namespace)  # noqa: S102 - the package's own cell code, as the notebook runs it
        return recorder.steps

    return steps


def sources() -> list[SectionSource]:
    """What `runbook.notebook.build` makes the section notebooks from."""
    return [SectionSource(s.notebook, s.module, s.title, s.cells) for s in SECTIONS]


def main(argv: list[str]) -> int:
    """`python -m runbook.sections.outline write|check DIR`: write the notebooks into DIR, or
    say (exit 1) which notebooks in DIR are not what the outline builds (`make lint`)."""
    from runbook.notebook import build

    if len(argv) != 2 or argv[0] not in ("write", "check"):
        print("usage: python -m runbook.sections.outline write|check DIR", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if argv[0] == "write":
        build.write(sources(), folder)
        return 0
    problems = build.differences(sources(), folder)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(
            "the notebooks are built from runbook/sections/outline.py: edit it (and the section "
            f"modules), then `make notebooks`; {len(problems)} notebook(s) differ",
            file=sys.stderr,
        )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
