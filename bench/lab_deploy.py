"""Wall time of a full lab deploy (`runbook deploy PARAMS --yes`, every notebook) with 1 worker
and with 4 workers (notebook 07 switches them in parallel). Root, 2 cores.

Uses its own state dir, subnet and bridge, so a running lab/lab.yaml lab is untouched.
Each run starts from a fresh lab (down, up) and an empty secret store and records root.
Prints `lab_deploy_1_worker_s=`, `lab_deploy_4_workers_s=`, then `ratio_4_workers_vs_1=` last.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runbook import lab
from runbook.lab import deployment

STATE = Path("/var/lib/runbook-lab-bench-deploy")
SUBNET, BRIDGE = "10.231.11.0/24", "rblabb"


def deploy_seconds(workers: int, tmp: Path) -> float:
    lab_file = deployment.write(
        tmp / f"lab-{workers}.yaml", state_dir=STATE, subnet=SUBNET, bridge=BRIDGE,
        workers=workers, name=f"bench{workers}",
    )  # fmt: skip
    lab.down(lab_file)
    lab.up(lab_file, secrets_dir=tmp / f"secrets-{workers}")
    params = lab.params_path(lab_file)  # the deployment's params lab up wrote
    try:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "runbook", "deploy", str(params), "--yes",
             "--secrets", str(tmp / f"secrets-{workers}"), "--records", str(tmp / "records")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - start
    finally:
        lab.down(lab_file)
    if proc.returncode != 0:
        sys.exit(f"deploy with {workers} worker(s) failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="runbook-bench-") as tmp:
        one = deploy_seconds(1, Path(tmp))
        four = deploy_seconds(4, Path(tmp))
    print(f"lab_deploy_1_worker_s={one:.1f}")
    print(f"lab_deploy_4_workers_s={four:.1f}")
    print(f"ratio_4_workers_vs_1={four / one:.3f}")


if __name__ == "__main__":
    main()
