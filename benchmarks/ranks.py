"""Ranks sharing a node: a 2-rank `mpirun --bind-to none` of matrix products,
without tcap, under `tcap run` (each rank plans for its share) and under
`tcap run --cpus rank` (each rank pinned to its own block)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from common import interleave, median, timed_run
from workloads import HERE, _env

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", "2"]
CASES = {
    "no tcap": [],
    "tcap run": ["run", "--"],
    "tcap run --cpus rank": ["run", "--cpus", "rank", "--"],
}


def run(rounds: int) -> str:
    import tempfile

    lines = ["## Ranks sharing a node", ""]
    if shutil.which("mpirun") is None:
        return "\n".join(lines + ["Not measured: Open MPI's mpirun is not installed (make engines).", ""])
    python = sys.executable
    tcap = str(Path(python).parent / "tcap")
    script = str(HERE / "rank_matmul.py")
    with tempfile.TemporaryDirectory() as home:
        env = _env(home)
        cases = {
            name: (lambda flags=flags: timed_run([*MPIRUN, *([tcap, *flags] if flags else []), python, script], env))
            for name, flags in CASES.items()
        }
        samples = interleave(cases, rounds, warmup=1)
    plain = median(samples["no tcap"])
    lines += [
        f"`{' '.join(MPIRUN)} [tcap run [--cpus rank] --] python rank_matmul.py` (each rank: 400 products of "
        f"300x300 matrices), wall time of the whole job in seconds, {rounds} interleaved rounds after a warm-up. "
        "Unbound, each rank's OpenBLAS starts one thread per CPU: 2 ranks x 2 threads on 2 CPUs. The ratio is "
        "no tcap over the case (above 1: faster than no tcap).",
        "",
        "| case | median s (min–max) | ratio |",
        "|---|---:|---:|",
    ]
    for name in CASES:
        values = samples[name]
        lines.append(f"| {name} | {median(values):.2f} ({min(values):.2f}–{max(values):.2f}) "
                     f"| {plain / median(values):.2f}x |")
    return "\n".join(lines + [""])
