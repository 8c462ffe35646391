"""Wall time of a full lab deploy (`runbook deploy PARAMS --yes`, every notebook) of one params
file holding the cache VM and its workers, with 1 worker and with 3 (the VMs' 01-04 and the
workers' 07 run in parallel). Root, 2 cores.

Uses its own state dir, subnet and bridge (`--subnet`), so a running lab/lab.yaml lab is
untouched. Each run starts from a fresh lab (down, up) and an empty secret store and records
root. Prints `lab_deploy_1_worker_s=`, `lab_deploy_3_workers_s=`, each notebook's seconds
(`nb_07_3_workers_s=`), what each worker's warm push sent (`warm_push_<vm>=paths,bytes`), then
`ratio_3_workers_vs_1=` last.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runbook import lab
from runbook.lab import deployment

STATE = Path("/var/lib/runbook-lab-bench-deploy")
SUBNET, BRIDGE = "10.231.11.0/24", "rblabb"
SENT_RE = re.compile(r"sent (\d+) paths, (\d+) bytes of NAR")


def deploy(workers: int, tmp: Path, subnet: str) -> tuple[float, Path]:
    lab_file = deployment.write(
        tmp / f"lab-{workers}.yaml", state_dir=STATE, subnet=subnet, bridge=BRIDGE,
        workers=workers, name=f"bench{workers}",
    )  # fmt: skip
    lab.down(lab_file)
    lab.up(lab_file, secrets_dir=tmp / f"secrets-{workers}")
    params = lab.params_path(lab_file)  # the deployment's params lab up wrote
    records = tmp / f"records-{workers}"
    try:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "runbook", "deploy", str(params), "--yes",
             "--secrets", str(tmp / f"secrets-{workers}"), "--records", str(records)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - start
    finally:
        lab.down(lab_file)
    if proc.returncode != 0:
        sys.exit(f"deploy with {workers} worker(s) failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    (record,) = [p for p in records.iterdir() if p.is_dir()]
    return seconds, record


def report(workers: int, record: Path) -> None:
    manifest = json.loads((record / "manifest.json").read_text())
    label = f"{workers}_worker{'s' if workers > 1 else ''}"
    for nb in manifest["notebooks"]:
        print(f"nb_{nb['notebook'][:2]}_{label}_s={nb['duration'] or 0:.1f}")
        for step in nb["steps"]:
            m = SENT_RE.search(step.get("reason") or "")
            if "system closure" in step["step"] and m:
                vm = step["step"].split()[1].removesuffix("'s")
                print(f"warm_push_{vm}={m.group(1)},{m.group(2)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subnet", default=SUBNET, help="the bench lab's subnet")
    parser.add_argument("--workers", type=int, default=3, help="the larger lab (1..4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runbook-bench-") as tmp:
        one, one_record = deploy(1, Path(tmp), args.subnet)
        many, many_record = deploy(args.workers, Path(tmp), args.subnet)
        print(f"lab_deploy_1_worker_s={one:.1f}")
        print(f"lab_deploy_{args.workers}_workers_s={many:.1f}")
        report(1, one_record)
        report(args.workers, many_record)
    print(f"ratio_{args.workers}_workers_vs_1={many / one:.3f}")


if __name__ == "__main__":
    main()
