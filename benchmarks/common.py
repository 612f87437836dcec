"""Shared helpers for tcap's benchmarks: interleaved timing and summaries."""

from __future__ import annotations

import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence


def timed_run(argv: Sequence[str], env: Mapping[str, str] | None = None, *, cwd: str | os.PathLike[str] | None = None,
              timeout: float | None = None, with_stdout: bool = False, tail: int = 500) -> float:
    """Wall time of one run of ``argv`` (seconds); a failure is an error that
    quotes the last ``tail`` characters of its stderr (``with_stdout``: of
    its stdout and stderr together, for a program that reports on stdout)."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=None if env is None else dict(env),
                          stdout=subprocess.PIPE if with_stdout else subprocess.DEVNULL,
                          stderr=subprocess.STDOUT if with_stdout else subprocess.PIPE, check=False, timeout=timeout)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        said = done.stdout if with_stdout else done.stderr
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {said.decode()[-tail:]}")
    return elapsed


def interleave(
    cases: Mapping[str, Callable[[], float]], rounds: int, warmup: int = 3, seed: int = 0
) -> dict[str, list[float]]:
    """Run every case once per round, in a shuffled order each round."""
    rng = random.Random(seed)
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            samples[name].append(cases[name]())
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio_row(
    label: str, values: Sequence[float], base: Sequence[float], digits: int, target: float | None,
    ratio_digits: int = 2,
) -> str:
    """A markdown row: median (min–max) in ms, the per-round difference from
    ``base`` (same round), the ratio of medians, and the target verdict."""

    def ms(x: float) -> str:
        return f"{x * 1000:.{digits}f}"

    row = f"| {label} | {ms(median(values))} ({ms(min(values))}–{ms(max(values))}) "
    if values is base:
        return row + "| | 1.00 | |"
    paired = [(a - b) * 1000 for a, b in zip(values, base)]
    ratio = median(values) / median(base)
    verdict = "" if target is None else f"≤ {target:g} ({'met' if ratio <= target else 'MISSED'})"
    return (
        row + f"| {median(paired):+.{digits}f} ({min(paired):+.{digits}f}…{max(paired):+.{digits}f}) "
        f"| {ratio:.{ratio_digits}f} | {verdict} |"
    )


def machine_description() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0))
    return f"{model}, {cpus} usable CPUs, Linux {platform.release()}, Python {platform.python_version()}"
