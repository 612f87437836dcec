"""Two forked processes of BLAS work, argv[1] seconds each, their timelines
saved to argv[4]/<pid>.json as they go; after argv[2] seconds the parent
kills the second with SIGKILL and, with argv[3] "reap", reaps it at once
("zombie": leaves it a zombie until the end).  Prints sampler.emit's line
with the kill's time."""

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


if __name__ == "__main__":
    seconds, after, reap, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=work, args=(seconds, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(after)
    killed = time.monotonic()
    os.kill(workers[1].pid, signal.SIGKILL)
    if reap == "reap":
        workers[1].join(timeout=10)
    workers[0].join(timeout=60)
    workers[1].join(timeout=10)
    results = []
    for worker in workers:
        with open(os.path.join(out, f"{worker.pid}.json")) as f:
            results.append(json.load(f))
    sampler.emit(results, killed=killed, survivor=workers[0].pid, victim=workers[1].pid)
