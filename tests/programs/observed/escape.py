"""An escape: argv[1] names a workload (workloads.py) run for argv[3]
seconds with 2 threads the library was asked for by the program itself, in
argv[2]: "main" (this process), "spawn" or "fork" (a one-worker
multiprocessing Pool of that start method), "process-spawn" /
"process-fork" (a multiprocessing.Process), or "pool2-fork" (a fork Pool(2)
running it in both workers at once).  argv[4] "os_exit" leaves
through os._exit(0) (no exit handlers).  Prints one JSON line: the
workload's own measurement of its busy threads, its pid and this one's."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

import workloads


def work(kind: str, seconds: float, threads: int) -> dict:
    result = getattr(workloads, kind)(seconds, threads)
    result["pid"] = os.getpid()
    return result


def in_process(queue, kind: str, seconds: float, threads: int) -> None:  # type: ignore[no-untyped-def]
    queue.put(work(kind, seconds, threads))


if __name__ == "__main__":
    kind, where, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    leave = sys.argv[4] if len(sys.argv) > 4 else "return"
    if where == "main":
        result = work(kind, seconds, 2)
    elif where.startswith("process-"):
        context = multiprocessing.get_context(where.split("-", 1)[1])
        queue = context.Queue()
        process = context.Process(target=in_process, args=(queue, kind, seconds, 2))
        process.start()
        result = queue.get(timeout=120)
        process.join()
    elif where == "pool2-fork":  # two workers at once, each with 2 threads
        with multiprocessing.get_context("fork").Pool(2) as pool:
            result = {"workers": pool.starmap(work, [(kind, seconds, 2)] * 2, chunksize=1)}
    else:
        with multiprocessing.get_context(where).Pool(1) as pool:
            result = pool.apply(work, (kind, seconds, 2))
    result["main"] = os.getpid()
    print(json.dumps(result), flush=True)
    if leave == "os_exit":
        os._exit(0)
