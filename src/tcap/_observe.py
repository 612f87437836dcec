"""Observed parallelism: how many of a process's native threads are busy at
once, judged against what its caps allow.

No registry names every pool (LightGBM passes its own team size to each
OpenMP region, ONNX Runtime sizes its pool from the cores, a C extension may
start threads of its own), but the OS sees every thread.  The probe samples
its own process's threads (``/proc/self/task``) every TICK seconds while it
works and keeps, per sample, the busy threads: those that ran, or waited to
run, for at least BUSY of the interval.  The rule (docs/verification.md,
"Observed parallelism"):

    allowed = (the largest thread cap) x max(1, busy Python threads) + the
              sizes of loaded pools no cap applies to

Each Python thread that calls a capped pool adds at most its cap of busy
threads, itself included (OpenMP and OpenBLAS make the caller one of them); a
pool whose caller waits (Polars, numexpr) runs at most its cap while the
caller is idle.  A process whose busy threads exceed ``allowed`` in every
sample for longer than GRACE seconds is over: an escape whatever its pool.

Loaded by path by the probe (standard library only, any Python >= 3.8):
nothing runs at import.  Linux only (its per-thread CPU clocks and
schedstat); elsewhere ``Observer.available`` is False.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

#: A thread is busy over an interval when it ran (or waited to run) for at
#: least this share of it.
BUSY = 0.5
#: A thread that ran less than this share of an interval is not busy,
#: however long it waited to run (an event loop waking every few ms behind
#: busy threads waits most of the time, and wants a CPU only for moments).
RAN = 0.2
#: Seconds between samples while the process works, and while it is idle.
TICK = 0.25
QUIET = 1.0
#: A process using less than this share of one CPU is idle (sampled at QUIET).
IDLE = 0.05
#: Over for longer than this many seconds is a violation (a pool starting
#: up, or an idle pool's threads spinning down after a call, take less).
GRACE = 0.5
#: The most threads read per sample, and OS thread names kept.
MOST_THREADS = 4096
MOST_NAMES = 8
_TASKS = "/proc/self/task"


def thread_clock(tid: int) -> int:
    """The clockid of thread ``tid``'s CPU clock (Linux's per-thread
    CPUCLOCK_SCHED clock: readable for any thread of this process)."""
    return ((~tid) << 3) | 6


def _run_seconds(tid: int) -> float | None:
    try:
        return time.clock_gettime(thread_clock(tid))
    except (OSError, OverflowError):
        return None  # the thread ended


def _wanted_seconds(tid: int) -> float | None:
    """Seconds ``tid`` has run or waited to run (schedstat), or None."""
    try:
        fd = os.open(f"{_TASKS}/{tid}/schedstat", os.O_RDONLY)
    except OSError:
        return None
    try:
        fields = os.read(fd, 128).split()
        return (int(fields[0]) + int(fields[1])) / 1e9
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def thread_name(tid: int) -> str:
    """The OS name of thread ``tid`` (``/proc/self/task/TID/comm``), printable, or ""."""
    try:
        fd = os.open(f"{_TASKS}/{tid}/comm", os.O_RDONLY)
    except OSError:
        return ""
    try:
        raw = os.read(fd, 64)
    except OSError:
        return ""
    finally:
        os.close(fd)
    text = raw.decode("utf-8", "replace").strip()
    return "".join(c if c.isprintable() else "?" for c in text)[:16]


class Observer:
    """One process's samples of its own threads."""

    def __init__(self) -> None:
        self.available = os.path.isdir(_TASKS) and _run_seconds(_gettid()) is not None
        #: tid -> (run seconds, wanted seconds or None) at the previous sample.
        self.threads: dict[int, tuple[float, float | None]] = {}
        self.last: tuple[float, float] | None = None  # (monotonic, process CPU seconds)
        self.samples = 0
        self.total = 0
        self.peak = 0
        self.peak_other = 0
        self.python_peak = 0
        self.allowed_at_peak: int | None = None
        self.idle = False
        #: The episode over the allowance in progress: (since, most busy, allowed, names).
        self.over: tuple[float, int, int, list[str]] | None = None
        self.names: dict[int, str] = {}

    def interval(self) -> float:
        return QUIET if self.idle else TICK

    def sample(self, python: set[int], skip: Iterable[int], allowed: Callable[[int], int | None],
               ) -> dict[str, Any] | None:
        """Sample every thread but ``skip``; ``python``: the native ids of the
        program's Python threads; ``allowed(busy Python threads)``: what the
        caps allow (None: nothing to judge).  Returns a finding once an
        episode over the allowance lasts longer than GRACE (then again each
        time it grows), else None."""
        now = time.monotonic()
        cpu = time.process_time()
        last = self.last
        self.last = (now, cpu)
        if last is not None and now - last[0] < 0.05:
            self.last = last
            return None  # too soon to measure
        try:
            tids = [int(name) for name in os.listdir(_TASKS)[:MOST_THREADS]]
        except (OSError, ValueError):
            return None
        ignored = set(skip)
        before = self.threads
        threads: dict[int, tuple[float, float | None]] = {}
        self.threads = threads
        elapsed = now - last[0] if last is not None else 0.0
        busy_python = busy_other = 0
        other: list[int] = []
        clock = time.clock_gettime  # the loop below runs for every thread: names bound once
        wanted_of = _wanted_seconds
        for tid in tids:
            if tid in ignored:
                continue
            try:
                run = clock(((~tid) << 3) | 6)  # thread_clock(tid)
            except (OSError, OverflowError):
                continue  # the thread ended
            previous = before.get(tid)
            if previous is None or elapsed <= 0:
                threads[tid] = (run, wanted_of(tid))
                continue  # a thread's first sample: no baseline (a pool starting up is not judged)
            share = (run - previous[0]) / elapsed
            if share < RAN:
                threads[tid] = (run, None)
                continue
            # Run and wait times (schedstat) for a thread that ran at all: a
            # loaded machine may be keeping a busy thread waiting for a CPU.
            wanted = wanted_of(tid)
            threads[tid] = (run, wanted)
            if share < BUSY and (previous[1] is None or wanted is None or (wanted - previous[1]) / elapsed < BUSY):
                continue
            if tid in python:
                busy_python += 1
            else:
                busy_other += 1
                other.append(tid)
        if last is None:
            return None
        self.idle = (cpu - last[1]) / elapsed < IDLE
        count = busy_python + busy_other
        self.samples += 1
        self.total += count
        self.peak_other = max(self.peak_other, busy_other)
        self.python_peak = max(self.python_peak, busy_python)
        limit = allowed(busy_python)
        if count > self.peak:
            self.peak, self.allowed_at_peak = count, limit
        if limit is None or count <= limit:
            self.over = None
            return None
        names = [self._name(tid) for tid in other]
        if self.over is None:
            self.over = (last[0], count, limit, names)
        elif count > self.over[1]:
            self.over = (self.over[0], count, limit, names)
        since, most, limit, names = self.over
        seconds = now - since
        if seconds <= GRACE:
            return None
        return {"threads": most, "cap": limit, "seconds": round(seconds, 2), "python": busy_python,
                "names": sorted(set(name for name in names if name))[:MOST_NAMES]}

    def _name(self, tid: int) -> str:
        name = self.names.get(tid)
        if name is None:
            if len(self.names) > MOST_THREADS:
                self.names.clear()
            name = self.names[tid] = thread_name(tid)
        return name

    def record(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        return {"interval": TICK, "samples": self.samples, "peak": self.peak,
                "mean": round(self.total / self.samples, 2), "peak_other": self.peak_other,
                "python_peak": self.python_peak, "allowed": self.allowed_at_peak}


def _gettid() -> int:
    import threading

    return threading.get_native_id()
