"""Probe cost: `tcap run --verify warn` against `--verify off`, same profile and command."""

from __future__ import annotations

import compileall
import os
import sys
import tempfile
from pathlib import Path

from common import interleave, median, timed_run

#: Targets for the median difference, in milliseconds.
TARGETS = {"pass": 3.0, "import numpy": 6.0}


def run(rounds: int) -> str:
    python = sys.executable
    tcap = str(Path(python).parent / "tcap")
    # What pip does at install time: without bytecode (PYTHONDONTWRITEBYTECODE,
    # a read-only checkout) every start would compile probe.py again.
    import tcap as package

    compileall.compile_dir(os.path.dirname(package.__file__), quiet=1)
    programs = {"pass": "pass", "import numpy": "import numpy"}
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(home, "cache"), XDG_CONFIG_HOME=os.path.join(home, "cfg"))
        env.pop("PYTHONPATH", None)
        env.pop("TCAP_DEBUG", None)
        cases = {}
        for label, code in programs.items():
            for mode in ("off", "warn"):
                argv = [tcap, "run", "-p", "kmeans", "--verify", mode, "--", python, "-c", code]
                cases[(label, mode)] = lambda argv=argv: timed_run(argv, env)
        samples = interleave({f"{label} / {mode}": case for (label, mode), case in cases.items()}, rounds)
    lines = [
        "## Probe cost",
        "",
        f"Median wall time of {rounds} interleaved rounds (cases shuffled each round, 3 warm-up rounds) of "
        "`tcap run -p kmeans --verify MODE -- python -c CODE`, with the plan cached "
        "and tcap's bytecode compiled (as `pip install` leaves it). "
        "`warn` puts the probe's "
        "bootstrap on PYTHONPATH, so the child also loads `sitecustomize` and `probe.py` and arms the "
        "import watcher; with `import numpy` the watcher fires and starts the timer thread. The "
        "difference is the warn median minus the off median; its range is that of the per-round differences.",
        "",
        "| command | off: median ms (min–max) | warn: median ms (min–max) | difference ms (min–max) | target ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in programs:
        off, warn = samples[f"{label} / off"], samples[f"{label} / warn"]
        diff = (median(warn) - median(off)) * 1000
        paired = [(w - o) * 1000 for w, o in zip(warn, off)]  # same round
        low, high = min(paired), max(paired)
        verdict = "met" if diff <= TARGETS[label] else "MISSED"
        lines.append(
            f"| `python -c \"{programs[label]}\"` "
            f"| {median(off) * 1000:.2f} ({min(off) * 1000:.2f}–{max(off) * 1000:.2f}) "
            f"| {median(warn) * 1000:.2f} ({min(warn) * 1000:.2f}–{max(warn) * 1000:.2f}) "
            f"| {diff:+.2f} ({low:+.2f}…{high:+.2f}) | ≤ {TARGETS[label]:.0f} ({verdict}) |"
        )
    lines += [
        "",
        "The probe imports only the standard library at start (no numpy, no threadpoolctl: those load "
        "at the first check, 0.25 s after the first numeric import, on the timer thread), so what it "
        "adds to a start is one more module found on PYTHONPATH, `probe.py` loaded by path and a "
        "meta-path entry; a program that exits before the first check never pays for threadpoolctl.",
        "",
    ]
    return "\n".join(lines)
