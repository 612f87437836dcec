"""Shape 2: a multiprocessing.pool.ThreadPool(cpus) of Python threads calling BLAS."""

import os
from multiprocessing.pool import ThreadPool

import numpy as np

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
TASKS = max(2, round(16 * SCALE))


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((300, 300))
    for _ in range(30):
        a = a @ a
        a /= np.abs(a).max()
    return float(a.sum())


with ThreadPool(os.cpu_count() or 1) as pool:
    print(round(sum(pool.map(work, range(TASKS))), 3))
