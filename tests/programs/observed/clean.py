"""A clean program: argv[1] names a workload of workloads.py run for
argv[2] seconds with the library's default threads (what tcap's caps give
it) or the argv[3] threads the program asks for (within the cap), or one
of the shapes below that must not look like an escape either:

- executor: a ThreadPoolExecutor(2) of Python threads each calling numpy
  matrix products (a capped BLAS runs on its caller's thread);
- idle: a big numpy product on every BLAS thread and a moment of ONNX
  Runtime on its default pool (sized from the cores, beyond a cap of 1),
  then 3 s asleep: idle pool threads exist, none is busy;
- io: a ThreadPool(4) reading files and sleeping;
- startup: many short-lived OpenMP regions (small scikit-learn KMeans fits),
  each waking its team.

Prints one JSON line: the program's own measurement of its busy threads."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import workloads
from _busy import Busy


def executor(seconds: float, threads: None) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.random.default_rng(0).random((300, 300))

    def multiply(_: int) -> int:
        for _ in workloads._until(seconds):
            a @ a
        return 0

    with Busy(over=3) as busy, ThreadPoolExecutor(2) as pool:
        list(pool.map(multiply, range(2)))
    return busy.result()


def idle(seconds: float, threads: None) -> dict:
    import numpy as np

    a = np.random.default_rng(0).random((1500, 1500))
    with Busy() as busy:
        a @ a
        workloads.onnxruntime(0.05, None)  # its default pool's threads stay, idle
        time.sleep(3)
    return busy.result()


def io(seconds: float, threads: None) -> dict:
    from multiprocessing.pool import ThreadPool

    import numpy  # noqa: F401

    with tempfile.TemporaryDirectory() as directory:
        names = []
        for i in range(4):
            names.append(os.path.join(directory, f"f{i}"))
            with open(names[-1], "wb") as f:
                f.write(os.urandom(1 << 20))

        def read(name: str) -> int:
            total = 0
            for _ in workloads._until(seconds):
                with open(name, "rb") as f:
                    total += len(f.read())
                time.sleep(0.05)
            return total

        with Busy() as busy, ThreadPool(4) as pool:
            pool.map(read, names)
    return busy.result()


def startup(seconds: float, threads: None) -> dict:
    from sklearn.cluster import KMeans

    x, _ = workloads._regression(2_000, 4)
    with Busy() as busy:
        for _ in workloads._until(seconds):
            KMeans(n_clusters=4, n_init=1, max_iter=5, random_state=0).fit(x)
    return busy.result()


if __name__ == "__main__":
    kind, seconds = sys.argv[1], float(sys.argv[2])
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else None  # asked for explicitly, within the cap
    run = globals()[kind] if kind in ("executor", "idle", "io", "startup") else getattr(workloads, kind)
    result = run(seconds, threads)
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
