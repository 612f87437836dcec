"""Two forked processes of BLAS work, argv[1] seconds each, their timelines
saved to argv[4]/<pid>.json as they go; after argv[2] seconds the parent
kills one with SIGKILL.  argv[3]: "reap" (two multiprocessing.Process, the
killed one reaped at once), "zombie" (the same, the killed one left a zombie
until the end) or "pool" (the two workers of a multiprocessing.Pool(2),
which reaps and replaces the killed one itself).  Prints sampler.emit's
line with the kill's time, the survivor's pid and the victim's."""

import json
import multiprocessing
import os
import signal
import sys
import time

import numpy  # noqa: F401
import sampler


def work(seconds, out):
    sampler.busy(seconds, save=out)
    return os.getpid()


def saved(out, count, timeout=30):
    """The pids of the first ``count`` workers to have saved a timeline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = sorted(int(name[:-5]) for name in os.listdir(out) if name.endswith(".json"))
        if len(pids) >= count:
            return pids
        time.sleep(0.02)
    raise SystemExit(f"no {count} workers started within {timeout} s")


def results(out, pids):
    found = []
    for pid in pids:
        with open(os.path.join(out, f"{pid}.json")) as f:
            found.append(json.load(f))
    return found


if __name__ == "__main__":
    seconds, after, how, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    context = multiprocessing.get_context("fork")
    if how == "pool":
        with context.Pool(2) as pool:
            pending = [pool.apply_async(work, (seconds, out)) for _ in range(2)]
            survivor, victim = saved(out, 2)
            time.sleep(after)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + seconds + 10
            while not any(task.ready() for task in pending) and time.monotonic() < deadline:
                time.sleep(0.05)  # the survivor's task; the victim's never ends
            pool.terminate()
    else:
        workers = [context.Process(target=work, args=(seconds, out)) for _ in range(2)]
        for worker in workers:
            worker.start()
        time.sleep(after)
        killed = time.monotonic()
        os.kill(workers[1].pid, signal.SIGKILL)
        if how == "reap":
            workers[1].join(timeout=10)
        workers[0].join(timeout=60)
        workers[1].join(timeout=10)
        survivor, victim = workers[0].pid, workers[1].pid
    sampler.emit(results(out, [survivor, victim]), killed=killed, survivor=survivor, victim=victim)
