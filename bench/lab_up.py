"""Wall time of `lab up` + `lab down` for 3 hosts (goal: under 10 s together). Needs root.

Uses its own state dir, subnet and bridge, so a running `lab/lab.yaml` lab is untouched.
Run: sudo .venv/bin/python bench/lab_up.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runbook import lab

PARAMS = {
    "state_dir": "/var/lib/runbook-lab-bench",
    "subnet": "10.231.9.0/24",
    "bridge": "rblabb",
    "hosts": [
        {"name": "rbb-cache", "nixname": "vm-aarch64-utm-cache"},
        {"name": "rbb-worker1"},
        {"name": "rbb-worker2"},
    ],
}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    lab.down(PARAMS)
    ups, downs = [], []
    for _ in range(rounds):
        t0 = time.monotonic()
        hosts = lab.up(PARAMS)
        t1 = time.monotonic()
        assert all(h.running for h in hosts)
        lab.down(PARAMS)
        t2 = time.monotonic()
        ups.append(t1 - t0)
        downs.append(t2 - t1)
        print(f"lab up {t1 - t0:.2f} s  lab down {t2 - t1:.2f} s  total {t2 - t0:.2f} s")
    total = statistics.median(u + d for u, d in zip(ups, downs, strict=True))
    print(
        f"3 hosts, {rounds} rounds: median up {statistics.median(ups):.2f} s, "
        f"down {statistics.median(downs):.2f} s, up+down {total:.2f} s (goal < 10 s)"
    )


if __name__ == "__main__":
    main()
