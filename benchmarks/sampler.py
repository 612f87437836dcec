"""CPU cost of `tcap run --report`'s psutil sampler on a 64-process tree."""

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


class PsutilSampler(Sampler):
    """The same sampling done with psutil (tcap's first version), for comparison."""

    def sample(self) -> None:
        import psutil

        try:
            top = psutil.Process(self.root)
            tree = [top, *top.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for process in tree:
            try:
                with process.oneshot():
                    threads = process.num_threads()
                    times = process.cpu_times()
                    seen = self.processes.get(process.pid)
                    argv = seen["argv"] if seen else process.cmdline()
            except psutil.Error:
                continue
            total += threads
            cpu = round(times.user + times.system, 2)
            if seen is None:
                self.processes[process.pid] = {"argv": argv, "peak_os_threads": threads, "cpu_seconds": cpu}
            else:
                seen["peak_os_threads"] = max(seen["peak_os_threads"], threads)
                seen["cpu_seconds"] = max(seen["cpu_seconds"], cpu)
        self.peak_total = max(self.peak_total, total)


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
        samplers = {"tcap (/proc)": Sampler(root.pid), "psutil, for comparison": PsutilSampler(root.pid)}
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
        "too). The share of one core is the median CPU time of a sample divided by the interval "
        "between samples. tcap's sampler reads `/proc/PID/stat` once per process; the psutil row does "
        "the same sampling through psutil (`children(recursive=True)`, then threads and CPU times per "
        "process), measured in the same run, taking turns.",
        "",
        "| sampler | processes seen | samples | CPU per sample: median ms (min–max) | share of one core | target |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in costs.items():
        values.sort()
        middle = values[len(values) // 2]
        share = 100 * middle / INTERVAL
        target = f"≤ {TARGET:.0f} % ({'met' if share <= TARGET else 'MISSED'})" if name.startswith("tcap") else ""
        lines.append(
            f"| {name} | {seen[name]} | {len(values)} | {middle * 1000:.2f} "
            f"({values[0] * 1000:.2f}–{values[-1] * 1000:.2f}) | {share:.2f} % | {target} |"
        )
    lines.append("")
    return "\n".join(lines)
