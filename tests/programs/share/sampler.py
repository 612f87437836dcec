"""Shared by the sharing test programs: keep BLAS busy for a while and
record the size of OpenBLAS's pool (threadpoolctl's ``threadpool_info``)
after every matrix product, as a run-length timeline.

A timeline is ``[[first, last, size], ...]``: CLOCK_MONOTONIC seconds (the
same clock in every process of the machine) of the first and last sample
that saw ``size`` threads in a row.
"""

from __future__ import annotations

import json
import os
import sys
import time


def blas_threads():
    """The size of OpenBLAS's pool in this process, or None when it is not loaded."""
    from threadpoolctl import threadpool_info

    sizes = [pool["num_threads"] for pool in threadpool_info() if pool["internal_api"] == "openblas"]
    return max(sizes) if sizes else None


def busy(seconds, size=160, save=None):
    """Matrix products for ``seconds``; this process's facts and timeline
    (``save``: also written to that directory as <pid>.json every ~0.1 s,
    for a process that may be killed)."""
    import numpy

    a = numpy.ones((size, size))
    timeline = []
    start = time.monotonic()
    end = start + seconds
    saved = start
    gap = [0.0, start]  # the longest time between two samples, and when it ended
    while True:
        if save and time.monotonic() - saved > 0.1:
            write(save, facts(start, timeline))
            saved = time.monotonic()
        a @ a
        now = time.monotonic()
        threads = blas_threads()
        previous = timeline[-1][1] if timeline else start
        if now - previous > gap[0]:
            gap = [round(now - previous, 4), round(now, 4)]
        if timeline and timeline[-1][2] == threads:
            timeline[-1][1] = round(now, 4)
        else:
            timeline.append([round(now, 4), round(now, 4), threads])
        if now >= end:
            break
    result = dict(facts(start, timeline), gap=gap)
    if save:
        write(save, result)
    return result


def facts(start, timeline):
    import threading

    return {"pid": os.getpid(), "ppid": os.getppid(), "thread": threading.current_thread().name,
            "start": round(start, 4), "end": round(time.monotonic(), 4), "timeline": timeline,
            "env": {name: os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}}


def write(directory, result):
    """``result`` as ``directory``/<pid>.json, replaced atomically."""
    path = os.path.join(directory, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def task(seconds):
    """A pool task (picklable by reference: this module is on PYTHONPATH)."""
    return busy(seconds)


def emit(results, **extra):
    """The program's result: one JSON line on stdout."""
    print(json.dumps({"results": results, "root": os.getpid(), "now": time.monotonic(), **extra}), flush=True)


def share_dir():
    """The directory of the launch's share table, from TCAP_SHARE_LAUNCH."""
    return os.environ.get("TCAP_SHARE_LAUNCH", ":").partition(":")[2] or None


def tables():
    directory = share_dir()
    try:
        return sorted(os.listdir(directory)) if directory else []
    except OSError:
        return []


if __name__ == "__main__":
    emit([busy(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)])
