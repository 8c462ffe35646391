"""Context.run_parallel: steps really overlap, output stays per step and in order, every
failure is named, plan/check/apply semantics are those of Context.run."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from runbook.core.params import load
from runbook.core.secrets import SecretStore
from runbook.engine.steps import DONE, TODO, Check, Context, Mode, Outcome, Step, StepFailed
from runbook.sections.common import run_make
from runbook.transport import local
from tests.run_rig import PARAMS


def _ctx(tmp_path: Path, mode: Mode = Mode.DEPLOY, confirm: bool = False) -> Context:
    ctx = Context("08-verify", load(PARAMS / "cache.yaml"), mode, confirm, SecretStore(tmp_path))
    ctx.sink = lambda _record: None
    return ctx


def _chatty(name: str, delay: float, barrier: threading.Barrier | None = None) -> Step:
    def probe() -> Check:
        print(f"probing {name}")
        return TODO

    def apply() -> str:
        if barrier is not None:
            barrier.wait(timeout=5)  # every step is in its action at once, or this times out
        for i in range(3):
            print(f"{name} line {i}")
            time.sleep(delay)
        return f"{name} applied"

    return Step(f"step {name}", f"host-{name}", [f"echo {name}"], probe=probe, action=apply)


def test_steps_overlap_and_print_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = _ctx(tmp_path)
    barrier = threading.Barrier(3)
    steps = [_chatty(n, d, barrier) for n, d in (("a", 0.03), ("b", 0.01), ("c", 0.0))]
    assert ctx.run_parallel(steps) == [Outcome.DONE] * 3
    out = capsys.readouterr().out
    blocks = out.split("\n── ")[1:]
    assert [b.splitlines()[0] for b in blocks] == [f"step {n}  @ host-{n}" for n in "abc"]
    for name, block in zip("abc", blocks, strict=True):
        assert block.splitlines()[1:] == [
            f"    $ echo {name}",
            f"probing {name}",
            *(f"{name} line {i}" for i in range(3)),
            f"  [done: {name} applied] step {name}",
        ]
    assert sys.stdout is not None and type(sys.stdout).__name__ != "_Router"
    assert [r["step"] for r in ctx.records] == ["step a", "step b", "step c"]
    assert ctx.changed == {"step a", "step b", "step c"}


def test_subprocess_lines_stay_with_their_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run_make's lines arrive on local.run's reader threads: still under their own step."""
    if local.which("make") is None:
        pytest.skip("make is not installed")
    (tmp_path / "Makefile").write_text(
        "say:\n\t@for i in 1 2 3; do echo $(WHO)-$$i; sleep 0.05; done\n"
    )

    def maker(who: str) -> Step:
        argv = ["make", "-C", str(tmp_path), "say", f"WHO={who}"]
        return Step(f"make {who}", who, probe=lambda: TODO, action=lambda: run_make(argv, None))

    ctx = _ctx(tmp_path)
    ctx.run_parallel([maker("x"), maker("y")])
    blocks = capsys.readouterr().out.split("\n── ")[1:]
    for who, block in zip("xy", blocks, strict=True):
        said = [ln.strip() for ln in block.splitlines() if ln.strip().startswith(f"{who}-")]
        assert said == [f"{who}-1", f"{who}-2", f"{who}-3"]
        assert ("x-" in block) != ("y-" in block)


def test_every_failure_named_and_the_rest_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finished: list[str] = []

    def boom(name: str) -> Step:
        def apply() -> str:
            time.sleep(0.05)
            raise RuntimeError(f"{name} broke")

        return Step(f"step {name}", f"vm-{name}", probe=lambda: TODO, action=apply)

    def ok() -> str:
        time.sleep(0.1)
        finished.append("ok")
        return "fine"

    steps = [boom("a"), Step("step ok", "vm-ok", probe=lambda: TODO, action=ok), boom("b")]
    ctx = _ctx(tmp_path)
    with pytest.raises(StepFailed) as caught:
        ctx.run_parallel(steps)
    assert finished == ["ok"]  # not stopped by the failures
    assert caught.value.step == "step a" and caught.value.host == "vm-a"
    assert "RuntimeError: a broke" in str(caught.value)
    assert "also failed: 'step b' on vm-b" in str(caught.value)
    out = capsys.readouterr().out
    assert "[failed: RuntimeError: a broke] step a" in out
    assert "[failed: RuntimeError: b broke] step b" in out
    assert [r["outcome"] for r in ctx.records] == ["failed", "done", "failed"]


def test_check_and_confirm_semantics_kept(tmp_path: Path) -> None:
    applied: list[str] = []
    steps = [
        Step("done already", "vm-1", probe=lambda: DONE, action=lambda: applied.append("1") or ""),
        Step("by hand", "vm-2", probe=lambda: TODO, plan_only="no helper"),
        Step("wipe", "vm-3", probe=lambda: TODO, action=lambda: "wiped", dangerous=True),
    ]
    with pytest.raises(StepFailed, match="dangerous"):
        _ctx(tmp_path).run_parallel(steps)
    assert applied == []
    ctx = _ctx(tmp_path, confirm=True)
    assert ctx.run_parallel(steps) == [Outcome.ALREADY, Outcome.SKIPPED, Outcome.DONE]


def test_plan_mode_and_empty_lists_are_run_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = _ctx(tmp_path, mode=Mode.PLAN)
    steps = [Step(f"s{i}", f"vm{i}", ["true"], probe=lambda: TODO, remote=True) for i in range(3)]
    assert ctx.run_parallel(steps) == [Outcome.UNCHECKED] * 3
    assert ctx.run_parallel([], none="substitute: no worker VMs") == []
    assert "[skipped: substitute: no worker VMs] substitute" in capsys.readouterr().out
