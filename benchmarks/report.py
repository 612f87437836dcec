"""`tcap report` on many launches' reports: time and peak memory for 64, 512
and 4096 reports of 4096 budget samples each, all on one node (the worst
case: one merged budget over every sample).

The reports are written as `tcap run --report-json` writes them
(tcap.supervise.report_text), with the samples of a real launch: every 0.5 s
and a few milliseconds late, busy and idle phases of a 2-thread pool, each
launch starting at its own moment. The measured run is the real command
(`tcap report FILE...`, output to /dev/null), its peak RSS from wait4.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median

from tcap.supervise import Budget, report_text

#: Reports per run, and the rounds of each (the largest once: it takes the longest).
SIZES = ((64, 3), (512, 3), (4096, 1))
SAMPLES = Budget.KEPT
#: Target: linear, that is the CPU time per sample of the largest merge at
#: most this many times that of the smallest.
TARGET = 1.5
#: Before this release, from issue 17 (the merge was quadratic in reports per node).
BEFORE = {64: "3.3 s", 512: "186 s", 4096: "hours"}


def _report(rng: random.Random, index: int, late: list[float]) -> str:
    start = 1.8e9 + rng.uniform(0, 10)
    shift = rng.randrange(SAMPLES)
    rows = []
    busy = False
    ends = iter(sorted(rng.sample(range(SAMPLES), SAMPLES // 20)))  # a phase ends there
    end = next(ends)
    for step in range(SAMPLES):
        if step == end:
            busy = not busy
            end = next(ends, SAMPLES)
        rows.append([round(start + step * 0.5 + late[(step + shift) % SAMPLES], 3), 2 * busy, 1 * busy])
    pid = 10000 + index
    process = {"pid": pid, "ppid": 1, "command": "python solve.py", "argv": ["python", "solve.py"],
               "status": "ok", "pools": [{"name": "openblas", "user_api": "blas", "threads": 2, "cap": 2,
                                          "filepath": "/usr/lib/libopenblas.so"}],
               "violations": [], "enforced": [], "peak_os_threads": 3, "unexplained_threads": 0,
               "hazards": [], "cpu_seconds": 120.5}
    budget = {"cpus": 2, "peak_pool_threads": 2, "processes_at_peak": 1, "longest_over_seconds": 0.0,
              "grace_seconds": 2.0, "violated": False}
    return report_text({
        "processes": [process], "verdict": "all pools within caps (1 process, 1 verified, 0 unverified)",
        "violations": [], "budget": budget, "hazards": [],
        "totals": {"processes": 1, "verified": 1, "unverified": 0, "violations": 0, "peak_os_threads": 3},
        "child_exit_code": 0, "exit_code": 0,
        "launch": {"host": "node01", "rank": f"rank {index}/{SIZES[-1][0]} on node01", "launcher": "Slurm",
                   "local_rank": index, "local_size": SIZES[-1][0], "cpus": 2, "node_cpus": 64,
                   "budget_samples": rows},
    })


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
        late = [rng.uniform(0, 0.02) for _ in range(SAMPLES)]  # a sampler's delays, shared to save time
        largest = SIZES[-1][0]
        names = [f"r-{index:04d}.json" for index in range(largest)]
        written = 0
        for index, name in enumerate(names):
            text = _report(rng, index, late)
            written += len(text)
            (directory / name).write_text(text)
        results = {}
        for count, rounds in SIZES:
            results[count] = [_measure(tcap, directory, names[:count]) for _ in range(rounds)]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    lines = [
        "## tcap report on many reports",
        "",
        f"`tcap report` merging N reports of {SAMPLES} budget samples each (the most a launch keeps), all "
        "from one node, so that one launch budget is computed over every sample of every report (the worst "
        "case). The reports are written as `tcap run --report-json` writes them (one sample a line, "
        f"{written / largest / 1024:.0f} KiB each), with samples every 0.5 s, busy and idle phases, each "
        "launch starting at its own moment. The merge goes through the samples once in time order, in "
        f"windows of {Budget.WINDOW} samples (only the points where a launch's threads or busy processes change "
        "are sorted and gone through one by one), so its time and memory grow linearly; reading and checking "
        "the JSON is most of the time (parsing alone, about 0.75 µs a sample). Wall and CPU time of the real "
        "command (median of the rounds), CPU time per sample, peak RSS from wait4 (the samples are held as "
        "arrays, 16 bytes each). Target: linear, the CPU time per sample of the largest merge at most "
        f"{TARGET:g}x that of the smallest. Before: the figures issue 17 measured (the merge was quadratic "
        "in reports per node).",
        "",
        "| reports | samples | rounds | wall s: median (min–max) | CPU s | CPU µs per sample | peak RSS MiB "
        "| before | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_sample = {count: median([cpu for _, cpu, _ in results[count]]) / (count * SAMPLES) for count, _ in SIZES}
    smallest = SIZES[0][0]
    for count, rounds in SIZES:
        walls = [wall for wall, _, _ in results[count]]
        cpu = median([cpu for _, cpu, _ in results[count]])
        rss = max(rss for _, _, rss in results[count]) / (1 << 20)
        target = ""
        if count == largest:
            ratio = per_sample[count] / per_sample[smallest]
            target = f"{ratio:.2f}x of {smallest}'s, ≤ {TARGET:g}x ({'met' if ratio <= TARGET else 'MISSED'})"
        lines.append(f"| {count} | {count * SAMPLES} | {rounds} | {median(walls):.2f} ({min(walls):.2f}–"
                     f"{max(walls):.2f}) | {cpu:.2f} | {per_sample[count] * 1e6:.2f} | {rss:.0f} "
                     f"| {BEFORE[count]} | {target} |")
    lines.append("")
    return "\n".join(lines)
