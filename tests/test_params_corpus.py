"""The hostile-params corpus (issue 13 item 6): every file in tests/corpus/params/ is refused.

For each file, `runbook plan FILE --records DIR`, `runbook deploy FILE --yes --records DIR`
and `runbook doctor FILE` exit 2 with exactly one line on stderr (at most 300 characters,
no traceback), start no kernel, and write nothing outside the records root: HOME is an
empty directory that stays empty, and the nixos-config tree the file names (made here, with
symlinks that point out of it) is unchanged byte for byte. The CLI runs in-process (as
tests/test_records.py does) so the whole corpus takes seconds; one pass runs real
`runbook` processes in parallel to prove the exit code and stderr at the process level.

Each file names in its first line what it tries. The few that would be huge in git
(a 5 MB value, a 5 MB key) are written at test time by `_generated`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from runbook import cli
from runbook.core import params

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus" / "params"
BASE = REPO / "tests" / "corpus" / "base.yaml"
MAX_LINE = 300
# values a file carries that no message may echo
NEVER_ECHOED = ("hunter2-never-echo",)


def _generated() -> dict[str, bytes]:
    """Corpus entries too big for git, written at test time."""
    base = BASE.read_text()
    big = "x" * (5 * 1024 * 1024)
    return {
        "value-5mb.yaml": base.replace("deployment: corpus", f"deployment: {big}", 1).encode(),
        "key-5mb.yaml": (base + f"{big}: 1\n").encode(),
        "value-300kb.yaml": base.replace(
            "deployment: corpus", f"deployment: {big[:300_000]}", 1
        ).encode(),
    }


def corpus_names() -> list[str]:
    return sorted(p.name for p in CORPUS.iterdir() if p.is_file()) + sorted(_generated())


def _write(name: str, dest: Path) -> Path:
    path = dest / name
    generated = _generated()
    if name in generated:
        path.write_bytes(generated[name])
    else:
        shutil.copyfile(CORPUS / name, path)
    return path


@dataclass
class Workdir:
    """A deployment's surroundings: its nixos-config (with escaping symlinks), key, HOME."""

    root: Path
    work: Path
    config: Path
    outside: Path
    home: Path
    tmp: Path
    records: Path

    def snapshot(self) -> dict[str, str]:
        """Every path under root except the records root, with its content's digest."""
        out = {}
        for p in sorted(self.root.rglob("*")):
            if p == self.records or self.records in p.parents:
                continue
            rel = str(p.relative_to(self.root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
        return out


def make_workdir(root: Path) -> Workdir:
    work, config, outside = root / "work", root / "work" / "nixos-config", root / "outside"
    home, tmp, records = root / "home", root / "tmp", root / "records"
    for d in (work, config / "machines", outside, home, tmp):
        d.mkdir(parents=True)
    (config / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    (config / "flake.lock").write_text("{}\n")
    (config / "machines" / "vm-shared.nix").write_text("{ config, pkgs, ... }: { }\n")
    (outside / "evil.nix").write_text("{ }\n")
    (config / "machines" / "escape.nix").symlink_to(outside / "evil.nix")
    (config / "linkdir").symlink_to(outside)
    (work / "id_ed25519").write_text("not a key\n")
    (work / "pwned").mkdir()  # a `touch pwned` in any shell would show up as a change
    return Workdir(root, work, config, outside, home, tmp, records)


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The notebooks a run executes, built once for the module (building them costs ~0.5 s
    per command, more than refusing the params)."""
    from runbook.commands import deploy

    out = tmp_path_factory.mktemp("notebooks")
    with deploy.built_notebooks() as built:
        for nb in built.iterdir():
            shutil.copyfile(nb, out / nb.name)
    assert any(out.glob("0*.ipynb"))
    return out


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notebooks: Path) -> Iterator[Workdir]:
    wd = make_workdir(tmp_path)
    from runbook.commands import deploy

    @contextlib.contextmanager
    def prebuilt() -> Iterator[Path]:
        yield notebooks

    # the same notebooks, built once; a file that got past the params would still reach
    # the runner, and NoKernel below
    monkeypatch.setattr(deploy, "built_notebooks", prebuilt)
    monkeypatch.setattr(deploy, "_note_edited_checkout", lambda: None, raising=False)
    for var in list(os.environ):
        if var.startswith(("XDG_", "RUNBOOK_", "JUPYTER", "IPYTHON")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(wd.home))
    monkeypatch.setenv("TMPDIR", str(wd.tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.chdir(wd.work)

    class NoKernel:
        def __init__(self, *_a: object, **_k: object) -> None:
            raise AssertionError("a kernel was started for a hostile params file")

    from runbook.notebook import runner

    monkeypatch.setattr(runner, "KernelThread", NoKernel)
    yield wd


def _check_refused(name: str, argv: list[str], code: int, out: str, err: str) -> None:
    what = f"{name}: runbook {' '.join(argv[:1])}"
    assert code == 2, f"{what}: exit {code}, stderr {err[:400]!r}"
    assert "Traceback" not in err, f"{what}: traceback"
    # one line per problem (issue 14: every params problem listed), each a short one
    assert err.endswith("\n"), f"{what}: not whole lines: {err[:400]!r}"
    for line in err.splitlines():
        assert len(line) <= MAX_LINE, f"{what}: {len(line)} characters: {line[:400]!r}"
        assert line.startswith("error: "), f"{what}: {line!r}"
    assert out == "", f"{what}: stdout {out[:200]!r}"
    for value in NEVER_ECHOED:
        assert value not in err, f"{what}: echoed a value"


def _argvs(path: Path, records: Path) -> list[list[str]]:
    return [
        ["plan", str(path), "--records", str(records)],
        ["deploy", str(path), "--yes", "--records", str(records)],
        ["doctor", str(path)],
    ]


@pytest.mark.parametrize("name", corpus_names())
def test_hostile_params_exit_2_in_one_line(
    name: str, workdir: Workdir, capfd: pytest.CaptureFixture[str]
) -> None:
    path = _write(name, workdir.work)
    before = workdir.snapshot()
    for argv in _argvs(path, workdir.records):
        code = cli.execute(argv)
        out, err = capfd.readouterr()
        _check_refused(name, argv, code, out, err)
    after = workdir.snapshot()
    assert after == before, f"{name}: wrote outside the records root: {set(after) ^ set(before)}"
    assert list(workdir.home.iterdir()) == []
    assert not [p for p in workdir.tmp.iterdir() if p.name.startswith("runbook-kernel-")]
    assert not workdir.records.exists() or not [
        p for p in workdir.records.rglob("*") if p.is_file() and not p.name.endswith(".lock")
    ], f"{name}: a record was made"


def test_the_base_of_the_corpus_is_valid(workdir: Workdir) -> None:
    """Each corpus file breaks one thing: the file they all start from loads (so the
    refusals above are for what each file tries, not for the surroundings)."""
    path = workdir.work / "base.yaml"
    shutil.copyfile(BASE, path)
    dep = params.load(path).deployment
    params.require_paths(dep, path)
    assert dep.worker_config == "machines/vm-shared.nix"


def test_corpus_is_big_enough() -> None:
    on_disk = [p for p in CORPUS.iterdir() if p.is_file()]
    assert len(on_disk) >= 40
    for p in on_disk:  # each says what it tries, in its first line, or is bytes by design
        first = p.read_bytes().split(b"\n", 1)[0]
        assert first.startswith(b"# Hostile params") or p.name in {
            "empty-file.yaml",
            "binary-junk.yaml",
            "utf16.yaml",
        }, p.name


# some of the issue's own cases, each as a real `runbook` process (a process imports the
# notebook engine: ~3 s of CPU each; the whole corpus runs in-process above)
PROCESS_SAMPLE = (
    "worker-config-symlink-escape.yaml",
    "nested-20000.yaml",
    "value-5mb.yaml",
    "nul-byte.yaml",
    "dollar-paren-bootstrap-user.yaml",
)


def test_real_processes_exit_2_with_one_line(tmp_path: Path) -> None:
    """The issue's cases through real `runbook plan` (and two `runbook deploy`) processes:
    the process's exit code and its whole stderr, as a user's shell sees them."""
    wd = make_workdir(tmp_path)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("XDG_", "RUNBOOK_", "JUPYTER", "IPYTHON"))
    }
    env.update(HOME=str(wd.home), TMPDIR=str(wd.tmp), PYTHONPATH=str(REPO))
    paths = [_write(n, wd.work) for n in PROCESS_SAMPLE]
    before = wd.snapshot()
    runs = [(p, _argvs(p, wd.records)[i % 2]) for i, p in enumerate(paths)]  # plan, deploy

    def run(
        item: tuple[Path, list[str]],
    ) -> tuple[str, list[str], subprocess.CompletedProcess[str]]:
        path, argv = item
        proc = subprocess.run(
            [sys.executable, "-c", "from runbook.cli import main; main()", *argv],
            cwd=wd.work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return path.name, argv, proc

    with ThreadPoolExecutor(4) as pool:
        for name, argv, proc in pool.map(run, runs):
            _check_refused(name, argv, proc.returncode, proc.stdout, proc.stderr)
    assert wd.snapshot() == before
    assert list(wd.home.iterdir()) == []
    assert not [p for p in wd.tmp.iterdir() if p.name.startswith("runbook-kernel-")]


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("vm-aarch64-utm-cache", "is vms[0].name"),  # the case: utmctl's output masked
        ("utm-cache", "is part of"),
        ("jqwang", "is user"),
        ("q" * (5 * 1024 * 1024), "5,242,880 characters"),
    ],
)
def test_a_stored_secret_that_would_mask_names_is_exit_2(
    value: str,
    where: str,
    workdir: Workdir,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A secret in the store equal to (part of) a name the runbook prints, or of 5 MB: plan
    and deploy refuse it before any record or kernel, naming the secret, never its value."""
    from runbook.core import masking

    for attr, fresh in (("_registered", {}), ("_protected", {}), ("_pattern", None)):
        monkeypatch.setattr(masking, attr, fresh)
    store = workdir.root / "secrets"
    store.mkdir(mode=0o700)
    (store / "live-root-password").write_text(value)
    path = workdir.work / "base.yaml"
    shutil.copyfile(BASE, path)
    before = workdir.snapshot()
    for argv in _argvs(path, workdir.records)[:2]:
        code = cli.execute([*argv, "--secrets", str(store)])
        out, err = capfd.readouterr()
        _check_refused("base.yaml", argv, code, out, err)
        assert "'live-root-password'" in err and where in err
        assert value == "jqwang" or value not in err.replace(str(path), "")
    assert workdir.snapshot() == before
    assert not workdir.records.exists() or not list(workdir.records.rglob("*-corpus"))
