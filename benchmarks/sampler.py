"""CPU cost of `tcap run --report`'s sampler on a 64-process tree, with each
process-facts backend: /proc (Linux) and psutil (elsewhere)."""

from __future__ import annotations

import os
import subprocess
import time

from tcap.supervise import INTERVAL, Sampler

#: Target: the sampler's CPU time as a share of one core, in percent.
TARGET = 2.0
#: Tree shape: the root, BRANCHES shells under it, LEAVES sleeps under each.
BRANCHES, LEAVES = 7, 8
SIZE = 1 + BRANCHES + BRANCHES * LEAVES


def _tree() -> subprocess.Popen[bytes]:
    branch = " ".join(["sleep 300 &"] * LEAVES) + " wait"
    root = " ".join([f"sh -c '{branch}' &"] * BRANCHES) + " wait"
    return subprocess.Popen(["sh", "-c", root], start_new_session=True)


def _sampler(root: int, backend: str) -> Sampler:
    """tcap's sampler with one process-facts backend (tcap.procfacts)."""
    from tcap.procfacts import ProcBackend, PsutilBackend

    sampler = Sampler(root)
    sampler.facts = ProcBackend() if backend == "proc" else PsutilBackend()
    return sampler


def _wait_for_tree(sampler: Sampler, deadline: float) -> None:
    while time.monotonic() < deadline:
        sampler.sample()
        if len(sampler.processes) >= SIZE:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the benchmark tree did not reach {SIZE} processes")


def _measure(samplers: dict[str, Sampler], seconds: float) -> dict[str, list[float]]:
    """CPU seconds of each sample, the samplers taking turns every INTERVAL."""
    costs: dict[str, list[float]] = {name: [] for name in samplers}
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for name, sampler in samplers.items():
            before = time.process_time()
            sampler.sample()
            costs[name].append(time.process_time() - before)
        time.sleep(INTERVAL)
    return costs


def run(seconds: float) -> str:
    root = _tree()
    try:
        _wait_for_tree(Sampler(root.pid), time.monotonic() + 30)
        system_processes = sum(1 for name in os.listdir("/proc") if name.isdigit())
        samplers = {"/proc backend (Linux)": _sampler(root.pid, "proc"),
                    "psutil backend (macOS, BSDs, Windows)": _sampler(root.pid, "psutil")}
        costs = _measure(samplers, seconds)
        seen = {name: len(sampler.processes) for name, sampler in samplers.items()}
    finally:
        os.killpg(root.pid, 9)
        root.wait()
    lines = [
        "## Report sampler cost",
        "",
        f"`tcap run --report` samples the child's process tree every {INTERVAL} s. Here a tree of "
        f"{SIZE} processes (a shell, {BRANCHES} shells under it, {LEAVES} sleeps under each) was sampled "
        f"for {seconds:.0f} s, in-process, with {system_processes} processes on the machine (finding a "
        "tree's members means reading every process's parent, so the machine's process count matters "
        "too). The share of one core is the mean CPU time of a sample divided by the interval "
        "between samples (the psutil backend looks the tree's members up at every other sample, so its "
        "samples come in two sizes and only the mean says what it costs per second). "
        "tcap's sampler goes through one of two process-facts backends "
        "(tcap.procfacts): on Linux it reads `/proc/PID/stat` once per process; where there is no /proc, "
        "psutil (`children(recursive=True)`, then threads and CPU times per process). Both are measured "
        "here on the same tree, in the same run, taking turns; each has the target.",
        "",
        "| sampler | processes seen | samples | CPU per sample: median ms (min–max) | share of one core (mean) "
        "| target |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in costs.items():
        values.sort()
        middle = values[len(values) // 2]
        share = 100 * (sum(values) / len(values)) / INTERVAL  # CPU per unit of time: the mean, not the median
        target = f"≤ {TARGET:.0f} % ({'met' if share <= TARGET else 'MISSED'})"
        lines.append(
            f"| {name} | {seen[name]} | {len(values)} | {middle * 1000:.2f} "
            f"({values[0] * 1000:.2f}–{values[-1] * 1000:.2f}) | {share:.2f} % | {target} |"
        )
    lines.append("")
    return "\n".join(lines)
