"""Reliability under faults (issue 13), measured on a real lab deployment. Root, 2 cores.

Runs tests/fault_scenarios.py's scenarios (the ones tests/test_lab_faults.py asserts) on one
lab (cache VM + one worker, 10.231.30.0/24): each fault injected into a `runbook deploy` at a
chosen step, the run's end timed against its bound, its record checked, the fault lifted and
the record resumed. Then `runbook plan` of every file of the hostile-params corpus
(tests/corpus/params/, read now), a sweep of every record file and console log for every
secret value the deployment held (whole, and every 32-character slice of each), and the
argv of every process on both lab hosts, sampled through the first deploy and its resume.

Prints one table, then `reliability_survived=N/M` last; exits 0 only when every fault was
survived and resumed, every corpus file cleanly refused and nothing was found.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import fault_scenarios as fs


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def run_scenarios(lab: fs.FaultLab) -> list[fs.Outcome]:
    outcomes = []
    first: list[fs.Scenario] = [fs.sigterm_during_the_push]
    for i, scenario in enumerate([*first, *fs.SCENARIOS]):
        lab.sample_argv = i == 0  # the first deploy makes and uses every secret
        start = time.monotonic()
        try:
            outcome = scenario(lab)
        except Exception as exc:  # noqa: BLE001 - a scenario that breaks is a failed one
            outcome = fs.Outcome(scenario.__name__, 0.0)
            outcome.notes.append(f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        outcome.notes.append(f"{time.monotonic() - start:.0f} s in all")
        outcomes.append(outcome)
        print(f"  {'ok ' if outcome.ok else 'BAD'} {outcome.why()}", file=sys.stderr)
    lab.sample_argv = False
    return outcomes


def main() -> int:
    if os.geteuid() != 0:
        print("bench/reliability.py needs root (the lab's namespaces)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runbook-bench-reliability-") as tmp:
        corpus = fs.run_corpus(Path(tmp) / "corpus")
        lab = fs.FaultLab.create(Path(tmp) / "lab")
        try:
            outcomes = run_scenarios(lab)
            values = fs.secret_values(lab)
        finally:
            lab.down()
        records = fs.sweep(fs.record_texts(lab.records, lab.logs, corpus_records(tmp)), values)
        lines = set().union(*(s.lines for s in lab.samplers)) if lab.samplers else set()
        argv = fs.sweep({f"argv {i}": line for i, line in enumerate(sorted(lines))}, values)
        samples = sum(s.ps_samples + s.proc_samples for s in lab.samplers)

    width = max(len(o.fault) for o in outcomes)
    print(f"{'fault':<{width}}  bound  ended  in bound  record  resumed")
    for o in outcomes:
        took = "-" if o.took is None else f"{o.took:.1f}s"
        print(
            f"{o.fault:<{width}}  {o.bound:>4.0f}s  {took:>5}  {yes(o.in_bound):<8}  "
            f"{yes(o.record_ok):<6}  {yes(o.resumed)}"
        )
    injected = sum(o.injected for o in outcomes)
    in_bound = sum(o.in_bound for o in outcomes)
    correct = sum(o.record_ok for o in outcomes)
    resumed = sum(o.resumed for o in outcomes)
    print(
        f"faults injected {injected} of {len(outcomes)}; runs ended within their bound "
        f"{in_bound}; correct records {correct}; resumes to success {resumed}"
    )
    print(
        f"hostile params corpus: {corpus.files} files, {corpus.clean} clean rejections "
        f"(exit 2, one line <= {fs.MAX_LINE} chars, no traceback)"
    )
    for bad in corpus.unclean[:5]:
        print(f"  not clean: {bad}")
    print(
        f"secret sweep: {records.texts} record files and logs, {records.values} secret values: "
        f"{len(records.whole)} whole hits, {len(records.sliced)} sliced hits "
        f"(every {fs.SLICE}-char slice)"
    )
    print(
        f"argv samples on {fs.CACHE_HOST} and {fs.WORKER_HOST} (ps -eo args + /proc/*/cmdline): "
        f"{samples} samples, {len(lines)} distinct lines, {len(argv.whole)} whole hits, "
        f"{len(argv.sliced)} sliced hits"
    )
    for hit in (records.sliced + argv.sliced)[:5]:
        print(f"  hit: {hit}")
    survived = sum(o.ok for o in outcomes)
    print(f"reliability_seconds={time.monotonic() - started:.0f}")
    print(f"reliability_survived={survived}/{len(outcomes)}")
    good = (
        survived == len(outcomes)
        and corpus.files > 0
        and corpus.clean == corpus.files
        and not corpus.unclean
        and not records.sliced
        and not argv.sliced
        and samples > 0
    )
    return 0 if good else 1


def corpus_records(tmp: str) -> Path:
    return Path(tmp) / "corpus" / "records"


if __name__ == "__main__":
    sys.exit(main())
