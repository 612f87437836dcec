"""CPU cost of `tcap run --report`'s sampler on a 64-process tree, with each
process-facts backend: /proc (Linux) and psutil (elsewhere); each on an idle
tree (sleeps) and on a busy one (every process spinning on a few threads),
with the per-thread sampling of supervised runs (busy threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tcap.supervise import (
    INTERVAL,
    PSUTIL_INTERVAL,
    PSUTIL_RESCAN,
    PSUTIL_THREAD_READS,
    RESCAN,
    THREAD_READS,
    Sampler,
)

#: Target: the sampler's CPU time as a share of one core, in percent.
TARGET = 2.0
#: Idle tree shape: the root, BRANCHES shells under it, LEAVES sleeps under each.
BRANCHES, LEAVES = 7, 8
SIZE = 1 + BRANCHES + BRANCHES * LEAVES
#: Threaded tree: SIZE Python processes (a root and its forks), each with
#: SLEEPERS threads besides its main thread.
SLEEPERS = 3


def _idle_tree() -> subprocess.Popen[bytes]:
    branch = " ".join(["sleep 300 &"] * LEAVES) + " wait"
    root = " ".join([f"sh -c '{branch}' &"] * BRANCHES) + " wait"
    return subprocess.Popen(["sh", "-c", root], start_new_session=True)


THREADED = f"""
import os, threading, time
for _ in range({SIZE - 1}):
    if os.fork() == 0:
        break
for _ in range({SLEEPERS}):
    threading.Thread(target=time.sleep, args=(300,), daemon=True).start()
time.sleep(300)
"""


def _threaded_tree() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", THREADED], start_new_session=True)


def _sampler(root: int, backend: str) -> Sampler:
    """tcap's sampler of supervised runs (busy threads) with one process-facts backend (tcap.procfacts)."""
    from tcap.procfacts import ProcBackend, PsutilBackend

    sampler = Sampler(root, observe=True)
    sampler.facts = ProcBackend() if backend == "proc" else PsutilBackend()
    sampler.interval = INTERVAL if backend == "proc" else PSUTIL_INTERVAL
    sampler.rescan = RESCAN if backend == "proc" else PSUTIL_RESCAN
    sampler.reads = THREAD_READS if backend == "proc" else PSUTIL_THREAD_READS
    sampler.waits = backend == "proc"
    return sampler


def _wait_for_tree(root: int, threads: int, deadline: float) -> None:
    from tcap.procfacts import ProcBackend

    facts = ProcBackend()
    while time.monotonic() < deadline:
        tree = facts.tree(root)
        if len(tree) >= SIZE and all(count >= threads for _, count, _, _ in tree.values()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the benchmark tree did not reach {SIZE} processes")


def _measure(samplers: dict[str, Sampler], seconds: float, forced: bool) -> dict[str, list[float]]:
    """CPU seconds of each sample, each sampler at its own interval (taking
    turns on a common clock of INTERVAL ticks); ``forced``: every process
    taken for one that used CPU since the previous sample (its threads read)."""
    costs: dict[str, list[float]] = {name: [] for name in samplers}
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        for name, sampler in samplers.items():
            if tick % round(sampler.interval / INTERVAL) == 0:
                if forced:
                    sampler.previous = {pid: (cpu - 1, when) for pid, (cpu, when) in sampler.previous.items()}
                last, before = sampler.sampled, time.process_time()
                sampler.sample()
                if sampler.sampled != last:  # not skipped as too soon after the last (this process was kept waiting)
                    costs[name].append(time.process_time() - before)
        tick += 1
        time.sleep(max(0.0, start + tick * INTERVAL - time.monotonic()))
    return costs


BACKENDS = {"proc": "/proc backend (Linux)", "psutil": "psutil backend (macOS, BSDs, Windows)"}


def _one_tree(kind: str, seconds: float) -> tuple[list[str], int]:
    """The table rows of both backends on one tree (the threaded one with
    every process taken for busy); the machine's process count."""
    root = _idle_tree() if kind == "idle" else _threaded_tree()
    try:
        _wait_for_tree(root.pid, 1 if kind == "idle" else SLEEPERS + 1, time.monotonic() + 60)
        system_processes = sum(1 for name in os.listdir("/proc") if name.isdigit())
        samplers = {backend: _sampler(root.pid, backend) for backend in BACKENDS}
        for sampler in samplers.values():  # the tree's first sight (command lines, the threads' baselines)
            sampler.sample()
            sampler.facts.thread_reads = 0
        time.sleep(INTERVAL)
        costs = _measure(samplers, seconds, forced=kind != "idle")
        rows = _rows(kind, samplers, costs)
    finally:
        os.killpg(root.pid, 9)
        root.wait()
    return rows, system_processes


def _rows(kind: str, samplers: dict[str, Sampler], costs: dict[str, list[float]]) -> list[str]:
    seen = {backend: len(sampler.processes) for backend, sampler in samplers.items()}
    reads = {backend: sampler.facts.thread_reads for backend, sampler in samplers.items()}
    rows = []
    for backend, values in costs.items():
        values.sort()
        middle = values[len(values) // 2]
        interval = samplers[backend].interval
        share = 100 * (sum(values) / len(values)) / interval  # CPU per unit of time: the mean, not the median
        target = f"≤ {TARGET:.0f} % ({'met' if share <= TARGET else 'MISSED'})"
        rows.append(
            f"| {BACKENDS[backend]} | {kind} | {seen[backend]} | {interval:g} s | {len(values)} | "
            f"{reads[backend] / len(values):.0f} | {middle * 1000:.2f} "
            f"({values[0] * 1000:.2f}–{values[-1] * 1000:.2f}) | {share:.2f} % | {target} |"
        )
    return rows


def run(seconds: float) -> str:
    idle, system_processes = _one_tree("idle", seconds)
    busy, _ = _one_tree("busy (worst case)", seconds)
    lines = [
        "## Report sampler cost",
        "",
        f"`tcap run --report` (and `--report-json`, `--plot`, `strict`) samples the child's process tree every "
        f"{INTERVAL:g} s with the /proc backend, every {PSUTIL_INTERVAL:g} s with psutil's (whose reads cost "
        f"about three times as much), and at each sample counts the busy threads of every process that used "
        f"CPU since the previous one (an idle process costs no per-thread read). Here a tree of {SIZE} "
        f"processes was sampled for {seconds:.0f} s per tree, in-process, with about {system_processes} "
        "processes on the machine. **Idle**: a shell, "
        f"{BRANCHES} shells under it and {LEAVES} sleeps under each. **Busy (worst case)**: {SIZE} Python "
        f"processes (a root and its forks) of {SLEEPERS + 1} threads each, every process taken for one that "
        "used CPU since the previous sample at every sample, so that its threads are read: a tree of 64 "
        "processes really busy on a machine of few CPUs gives each a few percent of one, so its CPU clock "
        "(in 10 ms ticks) moves at some samples only and fewer are read, and it would starve the measuring "
        f"process; here every sample reads the most it may, {THREAD_READS} threads ({PSUTIL_THREAD_READS} "
        f"with psutil) of the {SIZE * (SLEEPERS + 1)}, the busy processes taking turns, those read longest "
        "ago first (the others hold their last count). Finding the tree's members means reading every "
        f"process's parent, so the machine's process count matters too: that look-up runs every {RESCAN:g} s "
        f"(psutil's: {PSUTIL_RESCAN:g} s), and in between the members found are read again (so the samples "
        "come in two sizes and only the mean says what it costs per second). The share of one core "
        "is the mean CPU time of a sample divided by the backend's interval. tcap's sampler goes through one "
        "of two process-facts backends (tcap.procfacts): on Linux it reads `/proc/PID/stat` per process "
        "and `/proc/PID/task/TID/schedstat` per thread; where there is no /proc, psutil (`children("
        "recursive=True)`, CPU times and thread counts per process, `threads()` per busy process). Both are "
        "measured on the same tree, in the same run, taking turns; each has the target.",
        "",
        "| sampler | tree | processes seen | interval | samples | threads read per sample "
        "| CPU per sample: median ms (min–max) | share of one core (mean) | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *idle,
        *busy,
        "",
    ]
    return "\n".join(lines)
