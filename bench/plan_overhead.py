"""Wall time of `runbook plan params/cache.yaml` vs the papermill floor, in one run.

The floor is what papermill costs by itself: the same number of empty notebooks (one
`parameters` cell, one empty cell) through `papermill.execute_notebook` in one Python
process, each with papermill's default kernel handling (a kernel per notebook). Both are
timed as fresh processes so interpreter start-up counts on both sides.

For reference it also prints the floor with one kernel shared as the runner does
(`floor_shared_kernel_s`), the least any papermill-based plan could cost.

Last line: `ratio_plan_vs_floor=<float>` (goal <= 1.3; the plan itself under 15 s).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FLOOR = """
import sys, papermill, nbformat
from pathlib import Path
n, out, shared = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "shared"
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell("")]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
src = out / "empty.ipynb"
nbformat.write(nb, src)
if shared:
    from runbook.notebook.runner import KernelThread, NotebookRun, Stream
    import io
    kt = KernelThread(out)
    kt.start()
    stream = Stream(io.StringIO(), io.StringIO())
    for i in range(n):
        kt.submit(NotebookRun(src, out / f"s{i}.ipynb", {"x": 2}), stream)
        kt.wait(120)
    kt.stop()
else:
    for i in range(n):
        papermill.execute_notebook(str(src), str(out / f"{i}.ipynb"), parameters={"x": 2}, progress_bar=False)
"""


def timed(argv: list[str]) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(argv[:4])}\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    n = len(sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb")))
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        t = Path(tmp)
        (t / "floor").mkdir()
        (t / "shared").mkdir()
        py = sys.executable
        floor = timed([py, "-c", FLOOR, str(n), str(t / "floor"), "fresh"])
        shared = timed([py, "-c", FLOOR, str(n), str(t / "shared"), "shared"])
        plan = timed(
            [
                py,
                "-c",
                "from runbook.cli import main; main()",
                "plan",
                "params/cache.yaml",
                "--records",
                str(t / "records"),
                "--secrets",
                str(t / "secrets"),
            ]
        )
    print(f"notebooks={n}")
    print(
        f"floor_papermill_s={floor:.2f}  ({n} empty notebooks, papermill's default kernel per notebook)"
    )
    print(f"floor_shared_kernel_s={shared:.2f}  ({n} empty notebooks on one shared kernel)")
    print(f"plan_s={plan:.2f}  (runbook plan params/cache.yaml, HTML exports included)")
    print(f"ratio_plan_vs_shared_floor={plan / shared:.2f}")
    print(f"ratio_plan_vs_floor={plan / floor:.2f}")


if __name__ == "__main__":
    main()
