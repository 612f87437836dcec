"""`tcap report` on many launches' reports: time and peak memory for 64, 512
and 4096 reports of 4096 budget samples each, all on one node (the worst
case: one merged budget over every sample); and 4096 reports as tcap wrote
them before the samples were packed (rows of numbers).

The reports are written as `tcap run --report-json` writes them (the samples
through tcap.supervise.pack_samples, the file through report_text), with the
samples of a real launch: every 0.5 s and a few milliseconds late, busy and
idle phases of a 2-thread pool, each launch starting at its own moment. The
measured run is the real command (`tcap report FILE...`, output to
/dev/null), its peak RSS from wait4.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import median

from tcap.reports import CHANGES, WINDOW
from tcap.supervise import Budget, pack_samples, report_text

#: Reports per run, and the rounds of each (the largest once: it takes the longest).
SIZES = ((64, 3), (512, 3), (4096, 3))
#: Reports as an earlier tcap wrote them, and the rounds.
EARLIER = (4096, 1)
SAMPLES = Budget.KEPT
#: Targets: the largest merge within this many seconds, and linear (the CPU
#: time per sample of the largest merge at most LINEAR times that of the smallest).
SECONDS = 10.0
LINEAR = 1.5
#: Before this release: from issue 17 (the merge was quadratic in reports per
#: node), then with the merge linear and the samples rows of numbers.
BEFORE = {64: "3.3 s, 0.49 s", 512: "186 s, 3.3 s", 4096: "hours, 34 s"}


def _samples(rng: random.Random, late: list[int]) -> list[list[int]]:
    """One launch's Budget.samples: [wall-clock ms, pool threads, busy processes]."""
    start = 1_800_000_000_000 + rng.randrange(10_000)
    shift = rng.randrange(SAMPLES)
    rows = []
    busy = False
    ends = iter(sorted(rng.sample(range(SAMPLES), SAMPLES // 20)))  # a phase ends there
    end = next(ends)
    for step in range(SAMPLES):
        if step == end:
            busy = not busy
            end = next(ends, SAMPLES)
        rows.append([start + step * 500 + late[(step + shift) % SAMPLES], 2 * busy, 1 * busy])
    return rows


def _report(index: int, samples: Any) -> dict[str, Any]:
    pid = 10000 + index
    process = {"pid": pid, "ppid": 1, "command": "python solve.py", "argv": ["python", "solve.py"],
               "status": "ok", "pools": [{"name": "openblas", "user_api": "blas", "threads": 2, "cap": 2,
                                          "filepath": "/usr/lib/libopenblas.so"}],
               "violations": [], "enforced": [], "peak_os_threads": 3, "unexplained_threads": 0,
               "hazards": [], "cpu_seconds": 120.5}
    budget = {"cpus": 2, "peak_pool_threads": 2, "processes_at_peak": 1, "longest_over_seconds": 0.0,
              "grace_seconds": 2.0, "violated": False}
    return {
        "processes": [process], "verdict": "all pools within caps (1 process, 1 verified, 0 unverified)",
        "violations": [], "budget": budget, "hazards": [],
        "totals": {"processes": 1, "verified": 1, "unverified": 0, "violations": 0, "peak_os_threads": 3},
        "child_exit_code": 0, "exit_code": 0,
        "launch": {"host": "node01", "rank": f"rank {index}/{SIZES[-1][0]} on node01", "launcher": "Slurm",
                   "local_rank": index, "local_size": SIZES[-1][0], "cpus": 2, "node_cpus": 64,
                   "budget_samples": samples},
    }


def _earlier_text(data: dict[str, Any]) -> str:
    """A report as tcap wrote it before the samples were packed: indented,
    the rows [wall time in seconds, pool threads, busy processes] one a line."""
    rows = data["launch"]["budget_samples"]
    marker = '"(the budget samples)"'
    short = json.dumps({**data, "launch": {**data["launch"], "budget_samples": marker[1:-1]}}, indent=2)
    head, _, tail = short.partition(marker)
    return f"{head}[\n      " + json.dumps(rows)[1:-1].replace("], [", "],\n      [") + f"\n    ]{tail}\n"


def _measure(tcap: str, directory: Path, names: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS in bytes) of one ``tcap report``."""
    start = time.perf_counter()
    child = subprocess.Popen([tcap, "report", *names], cwd=directory, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    assert child.stderr is not None
    error = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 1):  # 1: over the node's budget, a verdict
        raise RuntimeError(f"tcap report failed ({child.returncode}): {error.decode()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def run() -> str:
    tcap = str(Path(sys.executable).parent / "tcap")
    directory = Path(tempfile.mkdtemp(prefix="tcap-bench-report-"))
    try:
        rng = random.Random(17)
        late = [rng.randrange(20) for _ in range(SAMPLES)]  # a sampler's delays, shared to save time
        largest = SIZES[-1][0]
        names = [f"r-{index:04d}.json" for index in range(largest)]
        earlier = [f"e-{index:04d}.json" for index in range(EARLIER[0])]
        written = {"packed": 0, "rows": 0}
        for index, name in enumerate(names):
            samples = _samples(rng, late)
            text = report_text(_report(index, pack_samples(samples)))
            written["packed"] += len(text)
            (directory / name).write_text(text)
            if index < EARLIER[0]:
                rows = [[when / 1000, threads, processes] for when, threads, processes in samples]
                text = _earlier_text(_report(index, rows))
                written["rows"] += len(text)
                (directory / earlier[index]).write_text(text)
        results = {}
        for count, rounds in SIZES:
            results[count] = [_measure(tcap, directory, names[:count]) for _ in range(rounds)]
        old = [_measure(tcap, directory, earlier) for _ in range(EARLIER[1])]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    lines = [
        "## tcap report on many reports",
        "",
        f"`tcap report` merging N reports of {SAMPLES} budget samples each (the most a launch keeps), all "
        "from one node, so that one launch budget is computed over every sample of every report (the worst "
        "case). The reports are written as `tcap run --report-json` writes them (the samples packed: columns "
        "of little-endian integers, zlib, base64: the time of each sample in ms; the pool threads and busy "
        "processes only where they change, with the index of the sample; "
        f"{written['packed'] / largest / 1024:.0f} KiB each), with samples every 0.5 s, busy and idle phases, "
        "each launch starting at its own moment. tcap report checks the packed samples on their bytes and on "
        "integers of thousands of digits (C code, no Python object per sample); only the points where a "
        "launch's threads or busy processes change (here 5 % of the samples) are Python objects: the merge sorts "
        f"and sums those in time order, in windows of {CHANGES} (itertools), and looks sample times up "
        f"only where a launch or a stretch over the CPUs ends, in sorted windows of {WINDOW}, so its "
        "time and memory grow linearly. The last row: reports as tcap wrote them before the "
        f"samples were packed (rows of numbers, one a line, {written['rows'] / EARLIER[0] / 1024:.0f} KiB each), "
        "which it still reads, parsing and checking every number. Wall and CPU time of the real command "
        "(median of the rounds), CPU time per sample, peak RSS from wait4 (the sample times are held as "
        f"arrays, 8 bytes each). Target: {largest} reports within {SECONDS:g} s, and linear: the CPU time "
        f"per sample of the largest merge at most {LINEAR:g}x that of the smallest. Before: the figures "
        "issue 17 measured (the merge was quadratic in reports per node), then with the merge linear and the "
        "samples rows of numbers.",
        "",
        "| reports | samples as | samples | rounds | wall s: median (min–max) | CPU s | CPU µs per sample "
        "| peak RSS MiB | before | target |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_sample = {count: median([cpu for _, cpu, _ in results[count]]) / (count * SAMPLES) for count, _ in SIZES}
    smallest = SIZES[0][0]
    rows = [(count, "packed", rounds, results[count]) for count, rounds in SIZES]
    rows.append((EARLIER[0], "rows (earlier tcap)", EARLIER[1], old))
    for count, form, rounds, measured in rows:
        walls = [wall for wall, _, _ in measured]
        cpu = median([cpu for _, cpu, _ in measured])
        rss = max(rss for _, _, rss in measured) / (1 << 20)
        target = ""
        before = BEFORE.get(count, "") if form == "packed" else ""
        if count == largest and form == "packed":
            ratio = per_sample[count] / per_sample[smallest]
            met = median(walls) <= SECONDS and ratio <= LINEAR
            target = (f"≤ {SECONDS:g} s; {ratio:.2f}x of {smallest}'s per sample, ≤ {LINEAR:g}x "
                      f"({'met' if met else 'MISSED'})")
        lines.append(f"| {count} | {form} | {count * SAMPLES} | {rounds} | {median(walls):.2f} ({min(walls):.2f}–"
                     f"{max(walls):.2f}) | {cpu:.2f} | {cpu / (count * SAMPLES) * 1e6:.2f} | {rss:.0f} "
                     f"| {before} | {target} |")
    lines.append("")
    return "\n".join(lines)
