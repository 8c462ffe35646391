"""Lab stand-in for `reboot` on a lab host: the host's init (its PID 1) kills every process
and boots again with what is on its "disk" (the host tree): new sshd config and host keys.

The handbook's `vm/bootstrap0` ends with `&& reboot` and `vm/bootstrap` with `sudo reboot`
(reference/utm-makefile-keys.md §1). Like the real one, the SSH session that ran it drops.
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:  # noqa: ARG001 - reboot's flags change nothing here
    if os.geteuid() != 0:
        print("Call to Reboot failed: Access denied", file=sys.stderr)
        return 1
    if os.getpid() == 1 or not os.path.exists("/run/runbook-lab/env"):
        print("reboot: not inside a runbook lab host", file=sys.stderr)
        return 1
    os.kill(1, signal.SIGHUP)  # hostinit: reboot after a short grace for this session
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
