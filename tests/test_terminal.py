"""The terminal: outcome tags in colour on a TTY only (never piped, with NO_COLOR or
--no-color, never in the record), a totals line at the end of a run, every params problem
listed, --debug anywhere on the line, and hints that are commands the CLI accepts."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runbook import cli
from runbook.core import terminal
from runbook.core.params import load
from runbook.core.secrets import SecretStore
from runbook.engine.steps import Context, Mode
from runbook.notebook.runner import totals
from tests.run_rig import PARAMS, REPO, guard_env, runbook

ESC = "\033["
TAGS = "  [done] a\n  [already done: x] b\n  [plan] c  (why)\n  [unchecked: no] d\n"
TAGS += "  [skipped: later] e\n  [failed: boom [x]] f\n✓ [1/2] 00 completed\n✗ [2/2] 01 failed\n"


def test_colour_tags_on_and_off() -> None:
    plain = terminal.colour_tags(TAGS, on=False)
    assert plain == TAGS
    coloured = terminal.colour_tags(TAGS, on=True)
    for word, colour in [
        ("[done]", "\033[32m"),
        ("[already done: x]", "\033[2;32m"),
        ("[plan]", "\033[36m"),
        ("[unchecked: no]", "\033[33m"),
        ("[skipped: later]", "\033[35m"),
        ("✗ [2/2] 01 failed", "\033[1;31m"),
        ("✓ [1/2] 00 completed", "\033[32m"),
    ]:
        assert f"{colour}{word}\033[0m" in coloured, word
    assert "\033[1;31m[failed: boom [x]]\033[0m f" in coloured
    # the colour codes are all it adds: the text itself is unchanged
    assert re.sub(r"\033\[[0-9;]*m", "", coloured) == TAGS
    # a step named like a tag, mid-line, is not painted
    assert terminal.colour_tags("── [done] is a name\n", on=True) == "── [done] is a name\n"


def test_colour_only_on_a_tty_and_no_color_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    main, side = pty.openpty()
    try:
        with os.fdopen(side, "w", closefd=False) as tty, open(os.devnull, "w") as pipe:
            monkeypatch.delenv("NO_COLOR", raising=False)
            assert terminal.wants_colour(tty) is True
            assert terminal.wants_colour(pipe) is False
            assert terminal.wants_colour(tty, no_color_flag=True) is False
            monkeypatch.setenv("NO_COLOR", "")  # no-color.org: only a non-empty value counts
            assert terminal.wants_colour(tty) is True
            for value in ("1", "0", "false"):
                monkeypatch.setenv("NO_COLOR", value)
                assert terminal.wants_colour(tty) is False, value
    finally:
        os.close(main)
        os.close(side)


def _on_a_pty(argv: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    """Run `runbook ARGV` with a pty as its stdout and stderr (a terminal); its output."""
    main, side = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from runbook.cli import main; main()", *argv],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=side,
        stderr=side,
    )
    os.close(side)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: the child closed the pty
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture
def plan_env(tmp_path: Path) -> dict[str, str]:
    env = guard_env(tmp_path)
    env.pop("NO_COLOR", None)
    env["RUNBOOK_SECRETS"] = str(tmp_path / "secrets")
    return env


def _record(root: Path) -> Path:
    (record,) = [p for p in root.iterdir() if (p / "manifest.json").is_file()]
    return record


@pytest.mark.slow
def test_a_plan_on_a_terminal_is_coloured_its_record_is_not(
    tmp_path: Path, plan_env: dict[str, str]
) -> None:
    records = tmp_path / "records"
    argv = ["plan", str(PARAMS / "cache.yaml"), "--only", "05", "--records", str(records)]
    code, out = _on_a_pty(argv, plan_env)
    assert code == 0, out[-2000:]
    assert "\033[36m[plan]\033[0m generate the token secret locally" in out
    assert "\033[33m[unchecked: plan mode does not connect to" in out
    record = _record(records)
    for path in record.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".ipynb", ".json"):
            assert ESC not in path.read_text(), f"{path.name} holds a colour code"
    # the totals line, counted from the manifest
    m = json.loads((record / "manifest.json").read_text())
    line = totals(m)
    assert line == "5 steps: 1 planned, 4 unchecked"
    assert line in out and line in (record / "run.log").read_text()

    # the same on a terminal with NO_COLOR, and with --no-color (after the subcommand): plain
    for extra, env in (([], {**plan_env, "NO_COLOR": "1"}), (["--no-color"], plan_env)):
        code, out = _on_a_pty([*argv, *extra], env)
        assert code == 0, out[-2000:]
        assert "[plan] generate the token secret locally" in out
        assert ESC not in out, extra


@pytest.mark.slow
def test_piped_output_is_plain(tmp_path: Path, plan_env: dict[str, str]) -> None:
    records = tmp_path / "records"
    r = runbook("plan", str(PARAMS / "cache.yaml"), "--only", "05", "--records", str(records),
                env=plan_env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "[plan] generate the token secret locally" in r.stdout and ESC not in r.stdout
    assert r.stdout.rstrip().splitlines()[-2] == "5 steps: 1 planned, 4 unchecked"


def test_totals_counts_every_notebook_of_the_manifest() -> None:
    def nb(*outcomes: str) -> dict[str, object]:
        steps = [{"step": "s", "host": "h", "outcome": o, "reason": "", "duration": 0.0}
                 for o in outcomes]  # fmt: skip
        return {"notebook": "00-x", "status": "completed", "steps": steps}

    m = {"notebooks": [nb("plan", "unchecked", "unchecked"), nb("done", "failed"), nb()]}
    assert totals(m) == "5 steps: 1 planned, 1 done, 2 unchecked, 1 failed"  # type: ignore[arg-type]
    assert totals({"notebooks": [nb("skipped")]}) == "1 step: 1 skipped"  # type: ignore[typeddict-item]


def _bad_params(tmp_path: Path) -> Path:
    text = (PARAMS / "cache.yaml").read_text()
    text = text.replace("  port: 8080", "  port: nope").replace("  push_jobs: 4", "  push_jobs: x")
    text = text.replace("deployment: cache", "deployment: cache\nbogus: 1\nalso_bogus: 2")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    return bad


def test_every_params_problem_is_listed_a_line_each(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Before: one line ending "(and 3 more problems)"."""
    bad = _bad_params(tmp_path)
    assert cli.execute(["plan", str(bad), "--records", str(tmp_path / "r")]) == 2
    out, err = capfd.readouterr()
    lines = err.splitlines()
    assert out == "" and "more problem" not in err
    assert len(lines) == 4, err
    for key in ("cache.port", "cache.push_jobs", "bogus", "also_bogus"):
        assert sum(f"{bad}: key {key}:" in line for line in lines) == 1, key
    assert all(line.startswith("error: ") and len(line) <= 300 for line in lines)
    assert not (tmp_path / "r").exists()


def test_a_container_error_implied_by_its_item_is_not_listed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    text = (PARAMS / "cache.yaml").read_text()
    bad = tmp_path / "v6.yaml"
    bad.write_text(text.replace("address: nixos-utm-cache.local ", "address: 'fe80::1'", 1))
    assert cli.execute(["doctor", str(bad)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "vms[0].address" in err, err


def test_debug_and_no_color_anywhere_on_the_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Before: `runbook records --debug` was "unrecognized arguments: --debug" (exit 2)."""
    root = str(tmp_path / "none")
    for argv in (
        ["--debug", "records", "--records", root],
        ["records", "--debug", "--records", root],
        ["records", "--records", root, "--debug", "--no-color"],
        ["--no-color", "records", "--records", root],
    ):
        assert cli.execute(argv) == 0, argv
        out, err = capfd.readouterr()
        assert "no records in" in out and "unrecognized" not in err, argv
    # --debug after the subcommand shows the traceback of an error, as before it
    assert cli.execute(["doctor", str(tmp_path / "missing.yaml"), "--debug"]) == 2
    assert "debug: runbook.cli: traceback" in capfd.readouterr().err


# -- hints are commands the CLI accepts --------------------------------------------------------

_HINT = re.compile(r"`(runbook [^`]+)`")


def _parses(command: str) -> None:
    words = shlex.split(command)[1:]
    words = [w for w in words if w not in ("…", "...")]
    try:
        cli.get_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"the hint `{command}` is not a command the CLI accepts (exit {exc.code})")


def _ctx(tmp_path: Path, mode: Mode = Mode.PLAN) -> Context:
    store = SecretStore(tmp_path / "secrets")
    return Context("03-bootstrap0", load(PARAMS / "cache.yaml"), mode, False, store)


def test_the_sections_hints_parse(tmp_path: Path) -> None:
    from runbook.core.params import DiskInterface
    from runbook.sections import s00_preflight, s03_bootstrap0

    ctx = _ctx(tmp_path)
    vm = ctx.dep.vms[0]
    other = vm.model_copy(update={"disk_interface": DiskInterface.NVME})
    step = s03_bootstrap0.bootstrap0(ctx, other)
    hints = [h for line in step.plan() for h in _HINT.findall(line)]
    assert any(h.startswith("runbook doctor") for h in hints), step.plan()
    hints.append(s00_preflight._go_on(ctx).split("`")[1])
    for hint in hints:
        _parses(hint)


def test_a_failed_plan_hints_a_plan_from_its_notebook(
    tmp_path: Path, plan_env: dict[str, str]
) -> None:
    """Before: a failed plan said "continue with `runbook deploy ... --resume RECORD`"."""
    from runbook.sections.s05_token_secret import GENERATE

    env = {**plan_env, "RUNBOOK_FAIL_STEP": f"05:{GENERATE}"}
    records = tmp_path / "records"
    r = runbook("plan", str(PARAMS / "cache.yaml"), "--from", "05", "--records", str(records),
                env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr
    (hint,) = _HINT.findall(r.stderr.splitlines()[-1])
    assert hint == f"runbook plan {PARAMS / 'cache.yaml'} --from 05", r.stderr
    assert "deploy" not in r.stderr.splitlines()[-1].split("then")[-1]
    _parses(hint)


def test_every_runbook_command_the_code_prints_parses() -> None:
    """Each `runbook ...` hint a message builds with the run's own values (an f-string's
    fields, filled here with a path) is a command line the CLI accepts: the ones a user
    copies. Prose naming a command or an option (`runbook deploy`) is left out."""
    found = []
    for folder in ("sections", "doctor", "notebook", "engine", "commands"):
        for path in sorted((REPO / "runbook" / folder).rglob("*.py")):
            for hint in _HINT.findall(path.read_text()):
                if "{" not in hint or any(c in hint for c in "[]|<>") or "..." in hint:
                    continue
                filled = hint
                while "{" in filled:  # innermost fields first (a nested f-string's)
                    filled = re.sub(r"\{[^{}]*\}", "x.yaml", filled)
                for word, value in (("PARAMS", "p.yaml"), ("RECORD", "r"), ("NN", "05")):
                    filled = filled.replace(word, value)
                found.append((path.name, filled))
    assert len(found) >= 5, found
    for name, command in found:
        try:
            _parses(command)
        except BaseException as exc:
            raise AssertionError(f"{name}: {command}") from exc
