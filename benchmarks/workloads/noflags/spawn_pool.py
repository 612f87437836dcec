"""Shape 3: a spawn multiprocessing.Pool(cpus) of matrix products."""

import multiprocessing
import os

import numpy as np

SCALE = float(os.environ.get("NOFLAGS_SCALE", "1"))
TASKS = max(2, round(8 * SCALE))


def work(seed: int) -> float:
    a = np.random.default_rng(seed).random((250, 250))
    for _ in range(max(1, round(40 * min(SCALE, 1.0)))):
        a = a @ a
        a /= np.abs(a).max()
    return float(a.sum())


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        print(round(sum(pool.map(work, range(TASKS))), 3))
