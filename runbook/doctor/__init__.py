"""`runbook doctor`: name every handbook pitfall before a deployment starts.

Each check is an independent function with a stable id and the handbook lesson it guards
(`reference/handbook.zh.md`); it looks at the user's nixos-config checkout (read with the
tree-sitter reader in `runbook.nix.nixfile` / `runbook.nix.nixcfg`, never with regular expressions
over Nix text), the params and the Mac, and returns a status (`ok`, `warn`, `fail`, or
`unchecked` with the reason), the finding (file:line where there is one) and the fix.

`run_checks(deployment, nixos_config)` runs them all; `as_dataframe(findings)` is the table
notebook 00 shows; `plan_fixes(context)` plans the safe edits `runbook doctor --fix` makes.

The modules: `context` (what the checks read), `model` (findings and their rendering),
`flake_checks`, `cache_checks`, `worker_checks` (with `live`, the live cache key),
`makefile_checks`, `system_checks`, `host_checks` (the checks by what they look at), `run`
(all of them in order) and `fixes` (--fix / --diff).
"""

from runbook.doctor.context import DoctorContext
from runbook.doctor.fixes import plan_fixes, planned_changes
from runbook.doctor.live import resolve_without_network
from runbook.doctor.model import (
    Finding,
    Status,
    as_dataframe,
    failed,
    render_json,
    render_text,
)
from runbook.doctor.run import CHECKS, run_checks, run_context

__all__ = [
    "CHECKS",
    "DoctorContext",
    "Finding",
    "Status",
    "as_dataframe",
    "failed",
    "plan_fixes",
    "planned_changes",
    "render_json",
    "render_text",
    "resolve_without_network",
    "run_checks",
    "run_context",
]
